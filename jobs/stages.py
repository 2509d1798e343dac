"""Every control-plane lifecycle stage, registered with the Celery app (the control worker
loads this module): provision -> await_ready -> verify_gpu -> bootstrap -> supervise_training
-> collect -> terminate, and a pack member's place in the sweep chord (`follow_pack`)."""

from jobs.bootstrap import bootstrap
from jobs.collect import collect
from jobs.pack_stages import follow_pack
from jobs.provision import await_ready, provision
from jobs.supervise import supervise_training
from jobs.terminate import terminate
from jobs.verify import verify_gpu

__all__ = [
    "await_ready",
    "bootstrap",
    "collect",
    "follow_pack",
    "provision",
    "supervise_training",
    "terminate",
    "verify_gpu",
]
