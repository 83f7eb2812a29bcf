"""The cost model: requested resources x unit prices x replicas x 730 h/month.

Prices default to OpenCost's: $0.031611 per core-hour and $0.004237 per "GB"-hour.  OpenCost
applies its RAM price to ``bytes / 1024**3`` — i.e. per GiB — and so do we (the setting is named
``price_memory_gib_hour``).  Costs follow *requests* (what the scheduler reserves and what a node
is sized for), not usage.  A container with no current request costs 0 now; the recommendation
says so in its reasons.  Savings and increases are kept apart: an increase is the price of
removing a risk (an under-provisioned container), never netted into a "saving".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from engine.core.model import ContainerRecommendation, Savings

GIB = 1024.0**3
HOURS_PER_MONTH = 730.0


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_core_hour: float = Field(0.031611, ge=0)
    memory_gib_hour: float = Field(0.004237, ge=0)
    currency: str = "USD"
    hours_per_month: float = Field(HOURS_PER_MONTH, gt=0)


DEFAULT_PRICES = Prices()


def hourly(cpu_cores: float | None, memory_bytes: float | None, prices: Prices) -> float:
    """Hourly price of one replica's requests; a missing request costs 0."""
    return (cpu_cores or 0.0) * prices.cpu_core_hour + (
        (memory_bytes or 0.0) / GIB
    ) * prices.memory_gib_hour


def monthly(
    cpu_cores: float | None, memory_bytes: float | None, replicas: int, prices: Prices
) -> float:
    return hourly(cpu_cores, memory_bytes, prices) * max(replicas, 0) * prices.hours_per_month


def recommended_requests(rec: ContainerRecommendation) -> tuple[float | None, float | None]:
    """The requests a container would run with: targets where given, else what it has now."""
    cpu = rec.cpu_request if rec.cpu_request is not None else rec.current.requests.cpu
    mem = rec.memory_request if rec.memory_request is not None else rec.current.requests.memory
    return cpu, mem


@dataclass(frozen=True)
class CostLine:
    """Monthly cost of one container resource, now and as recommended (for reports)."""

    container: str
    resource: str
    current_amount: float | None  # cores or bytes per replica
    recommended_amount: float | None
    current_monthly: float
    recommended_monthly: float

    @property
    def delta(self) -> float:
        return self.recommended_monthly - self.current_monthly


def breakdown(
    containers: Iterable[ContainerRecommendation], replicas: int, prices: Prices = DEFAULT_PRICES
) -> list[CostLine]:
    """One line per container and resource, in container order, cpu before memory."""
    lines: list[CostLine] = []
    for rec in containers:
        new_cpu, new_mem = recommended_requests(rec)
        old_cpu, old_mem = rec.current.requests.cpu, rec.current.requests.memory
        lines.append(
            CostLine(
                rec.name,
                "cpu",
                old_cpu,
                new_cpu,
                monthly(old_cpu, None, replicas, prices),
                monthly(new_cpu, None, replicas, prices),
            )
        )
        lines.append(
            CostLine(
                rec.name,
                "memory",
                old_mem,
                new_mem,
                monthly(None, old_mem, replicas, prices),
                monthly(None, new_mem, replicas, prices),
            )
        )
    return lines


def savings(
    containers: Iterable[ContainerRecommendation], replicas: int, prices: Prices = DEFAULT_PRICES
) -> Savings:
    """Current vs recommended monthly cost of a workload.

    ``monthly_savings`` sums the cost of every request that goes down, ``monthly_increase`` of
    every request that goes up (per container and resource), so a workload that frees CPU but
    needs more memory shows both; ``monthly_delta = recommended - current`` nets them.
    """
    lines = breakdown(containers, replicas, prices)
    current_total = sum(line.current_monthly for line in lines)
    recommended_total = sum(line.recommended_monthly for line in lines)
    saved = sum(-line.delta for line in lines if line.delta < 0)
    increased = sum(line.delta for line in lines if line.delta > 0)
    return Savings(
        currency=prices.currency,
        current_monthly=round(current_total, 6),
        recommended_monthly=round(recommended_total, 6),
        monthly_delta=round(recommended_total - current_total, 6),
        monthly_savings=round(saved, 6),
        monthly_increase=round(increased, 6),
    )


def at_target(rec: ContainerRecommendation) -> ContainerRecommendation:
    """The container as if its target were applied instead of the next step."""
    if rec.target is None:
        return rec
    t = rec.target
    return rec.model_copy(
        update={
            "cpu_request": t.cpu_request,
            "cpu_limit": t.cpu_limit,
            "memory_request": t.memory_request,
            "memory_limit": t.memory_limit,
            "target": None,
        }
    )


def target_savings(
    containers: Iterable[ContainerRecommendation], replicas: int, prices: Prices = DEFAULT_PRICES
) -> Savings | None:
    """Savings of the targets, or None when every step already is its target."""
    listed = list(containers)
    if all(c.target is None for c in listed):
        return None
    return savings([at_target(c) for c in listed], replicas, prices)
