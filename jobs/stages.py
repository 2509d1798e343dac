"""Every control-plane lifecycle stage, registered with the Celery app (the control worker
loads this module): provision -> await_ready -> verify_gpu -> bootstrap -> supervise_training
-> collect -> terminate."""

from jobs.bootstrap import bootstrap
from jobs.collect import collect
from jobs.provision import await_ready, provision
from jobs.supervise import supervise_training
from jobs.terminate import terminate
from jobs.verify import verify_gpu

__all__ = [
    "await_ready",
    "bootstrap",
    "collect",
    "provision",
    "supervise_training",
    "terminate",
    "verify_gpu",
]
