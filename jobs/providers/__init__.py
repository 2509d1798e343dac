"""Cloud providers behind one protocol; `get_provider` builds one from a sweep's ProviderSpec."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.providers.base import (
    INSTANCE_NAME_PREFIX,
    Instance,
    InstanceStatus,
    InstanceType,
    LaunchRequest,
    Provider,
    instance_name,
)
from jobs.providers.errors import (
    AuthError,
    CapacityError,
    InvalidRequest,
    NotFound,
    PermanentProviderError,
    ProviderError,
    QuotaError,
    RateLimited,
)
from queue_app.jobspec import ProviderSpec

if TYPE_CHECKING:
    from queue_app.settings import Settings

__all__ = [
    "INSTANCE_NAME_PREFIX",
    "AuthError",
    "CapacityError",
    "Instance",
    "InstanceStatus",
    "InstanceType",
    "InvalidRequest",
    "LaunchRequest",
    "NotFound",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "QuotaError",
    "RateLimited",
    "get_provider",
    "instance_name",
]


def get_provider(spec: ProviderSpec | str, settings: Settings) -> Provider:
    """The provider a sweep asked for, configured from the spec and the environment."""
    if isinstance(spec, str):
        spec = ProviderSpec.model_validate({"name": spec})
    if spec.name == "local":
        from jobs.providers.local import LocalProvider

        return LocalProvider(
            settings.local_instances_dir,
            price_per_hour=spec.price_per_hour or 0.0,
            boot_delay_s=spec.boot_delay_s,
            preempt_rate=spec.preempt_rate or settings.local_preempt_rate,
            notice_s=spec.notice_s,
        )
    if spec.name == "lambda":
        from jobs.providers.lambda_cloud import from_settings

        return from_settings(settings)
    if spec.name == "aws":
        from jobs.providers.aws import AWSProvider

        return AWSProvider.from_spec(spec, metadata_url=settings.aws_metadata_url)
    raise ValueError(f"unknown provider {spec.name!r}")
