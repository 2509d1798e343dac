"""The built-in price catalog: what `plan` prices a sweep with when no provider can be asked.

Prices go stale. The catalog carries the date its prices were read and where they came from,
and `PriceCatalog.stale_warning` says how old they are; live prices (`LAMBDA_API_KEY` set) always
win over these.

Lambda, as of 2025-10-30, from the seed guide "GPU Provisioning Guide for SAE PII Training"
v1.0 (shared/seeds/002): its price table (1x A100 40GB $1.29/h) and its provisioning listing
(A100 80GB SXM $1.79/h, 8x A100 80GB $14.32/h, and the regions listed for each). Its review
(shared/seeds/000) found other rows of that table wrong, and the guide's type names come from a
CLI listing that does not match the API's; the names below are the API's where a public,
generated listing confirms them (`gpu_1x_a100`, `gpu_8x_a100_80gb_sxm4`), otherwise the guide's.
Lambda offers no spot instances (the guide, and its API has no spot price), so every entry is
on-demand only.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from jobs.providers.base import InstanceType

STALE_AFTER_DAYS = 30


class CatalogEntry(BaseModel):
    """One instance type as the source listed it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(..., description="Instance type name (the API's where known).")
    description: str = Field(..., description="The provider's description, GPU memory in it.")
    gpu_count: int = Field(..., ge=0, description="GPUs per instance.")
    gpu_memory_gb: float = Field(..., ge=0, description="Memory of each GPU.")
    price_per_hour: float = Field(..., ge=0, description="On-demand USD per instance-hour.")
    regions: list[str] = Field(..., description="Regions the source listed (not live capacity).")
    note: str = Field("", description="Where the row came from, when not the catalog's source.")


class PriceCatalog(BaseModel):
    """A dated price list for one provider."""

    model_config = ConfigDict(frozen=True)

    provider: str
    as_of: date = Field(..., description="When the prices were read.")
    source: str = Field(..., description="Where the prices were read.")
    entries: list[CatalogEntry]
    live_hint: str = Field(
        "Set LAMBDA_API_KEY for live prices and capacity.",
        description="What to do for live prices (the stale warning's last sentence).",
    )

    def instance_types(self) -> list[InstanceType]:
        """The entries as InstanceTypes (regions: where listed, not where capacity is now)."""
        return [
            InstanceType(
                name=e.name,
                description=e.description,
                gpu_description=e.description.split(" ", 1)[1],
                gpu_count=e.gpu_count,
                gpu_memory_gb=e.gpu_memory_gb,
                price_per_hour=e.price_per_hour,
                spot_price_per_hour=None,
                regions=e.regions,
            )
            for e in self.entries
        ]

    def age_days(self, today: date | None = None) -> int:
        return ((today or date.today()) - self.as_of).days

    def stale_warning(self, today: date | None = None) -> str:
        """A line for every output that shows catalog prices."""
        age = self.age_days(today)
        warning = (
            f"{self.provider} prices are from the built-in catalog, as of {self.as_of} "
            f"({age} days ago; source: {self.source}); they may be stale"
        )
        if age > STALE_AFTER_DAYS:
            warning += f" (older than {STALE_AFTER_DAYS} days)"
        return f"{warning}. {self.live_hint}"


LAMBDA_CATALOG = PriceCatalog(
    provider="lambda",
    as_of=date(2025, 10, 30),
    source="seed guide 'GPU Provisioning Guide for SAE PII Training' v1.0",
    entries=[
        CatalogEntry(
            name="gpu_1x_a100",
            description="1x A100 (40 GB PCIe)",
            gpu_count=1,
            gpu_memory_gb=40,
            price_per_hour=1.29,
            regions=["us-east-1", "us-south-1", "us-west-1"],
            note="the guide's gpu_1x_a100_pcie",
        ),
        CatalogEntry(
            name="gpu_1x_a100_sxm",
            description="1x A100 (80 GB SXM)",
            gpu_count=1,
            gpu_memory_gb=80,
            price_per_hour=1.79,
            regions=["us-west-1"],
            note="name and price as the guide lists them; not confirmed against the API",
        ),
        CatalogEntry(
            name="gpu_8x_a100_80gb_sxm4",
            description="8x A100 (80 GB SXM4)",
            gpu_count=8,
            gpu_memory_gb=80,
            price_per_hour=14.32,
            regions=["us-east-1"],
            note="the guide's gpu_8x_a100_sxm",
        ),
    ],
)


# AWS, us-east-1 Linux on-demand, recalled from the AWS EC2 On-Demand pricing page after AWS's
# June 2025 cut of P4d and P5 prices (not read live when written: no network here). EC2 has no
# price API short of the separate Pricing service; spot prices are read live (aws_pricing).
_AWS_REGIONS = ["us-east-1", "us-east-2", "us-west-2"]


def _aws(name: str, description: str, gpus: int, memory_gb: float, price: float) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        description=description,
        gpu_count=gpus,
        gpu_memory_gb=memory_gb,
        price_per_hour=price,
        regions=_AWS_REGIONS,
    )


AWS_CATALOG = PriceCatalog(
    provider="aws",
    as_of=date(2025, 6, 5),
    source="AWS EC2 On-Demand pricing, us-east-1 Linux (recalled, not read live)",
    live_hint="Spot prices are live when AWS credentials work; on-demand ones are this catalog's.",
    entries=[
        _aws("g6.xlarge", "1x L4 (24 GB)", 1, 24, 0.8048),
        _aws("g6.2xlarge", "1x L4 (24 GB)", 1, 24, 0.9776),
        _aws("g6.12xlarge", "4x L4 (24 GB)", 4, 24, 4.6016),
        _aws("g6.48xlarge", "8x L4 (24 GB)", 8, 24, 13.3504),
        _aws("g5.xlarge", "1x A10G (24 GB)", 1, 24, 1.006),
        _aws("g5.2xlarge", "1x A10G (24 GB)", 1, 24, 1.212),
        _aws("g5.12xlarge", "4x A10G (24 GB)", 4, 24, 5.672),
        _aws("g5.48xlarge", "8x A10G (24 GB)", 8, 24, 16.288),
        _aws("g6e.xlarge", "1x L40S (48 GB)", 1, 48, 1.861),
        _aws("g6e.2xlarge", "1x L40S (48 GB)", 1, 48, 2.24208),
        _aws("g6e.12xlarge", "4x L40S (48 GB)", 4, 48, 10.49264),
        _aws("g6e.48xlarge", "8x L40S (48 GB)", 8, 48, 30.13118),
        _aws("p4d.24xlarge", "8x A100 (40 GB SXM4)", 8, 40, 21.96),
        _aws("p5.48xlarge", "8x H100 (80 GB SXM5)", 8, 80, 55.04),
    ],
)

CATALOGS: dict[str, PriceCatalog] = {"lambda": LAMBDA_CATALOG, "aws": AWS_CATALOG}
