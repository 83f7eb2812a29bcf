"""Recommender: on a workload's cycle-end marker, turn its usage state into a recommendation.

Runs inside the aggregator's stream (same partition as the usage state), so the state it reads
includes every batch the collector sent for the cycle.  Also records the spec in the
``workloads`` table for the gate and the web API.
"""

from __future__ import annotations

import logging

from agents.policies import policy_for
from agents.runtime import Runtime
from engine.core.model import (
    RESOURCES,
    CycleEnd,
    Recommendation,
    UsageSummary,
    WorkloadSpec,
    container_id,
)
from engine.core.recommend import recommend
from engine.metrics import (
    MONTHLY_COST_CURRENT,
    MONTHLY_COST_RECOMMENDED,
    RECORDS_PROCESSED,
    REQUEST_CURRENT,
    REQUEST_RECOMMENDED,
    USAGE_P95,
)

log = logging.getLogger("kubefinops.recommender")
AGENT = "recommender"


def usage_of(rt: Runtime, spec: WorkloadSpec) -> dict[str, dict[str, UsageSummary]]:
    """Summaries of the spec's containers, from the aggregator's decoded state when current."""
    out: dict[str, dict[str, UsageSummary]] = {}
    for c in spec.containers:
        usage = rt.tables.usage.get(container_id(spec.namespace, spec.kind, spec.name, c.name))
        out[c.name] = {
            res: usage.summary(res) if usage is not None else UsageSummary() for res in RESOURCES
        }
    return out


def export_gauges(rec: Recommendation) -> None:
    w = (rec.namespace, rec.kind, rec.name)
    MONTHLY_COST_CURRENT.labels(*w).set(rec.savings.current_monthly)
    MONTHLY_COST_RECOMMENDED.labels(*w).set(rec.savings.recommended_monthly)
    for c in rec.containers:
        labels = (*w, c.name)
        for res, cur, new in (
            ("cpu", c.current.requests.cpu, c.cpu_request),
            ("memory", c.current.requests.memory, c.memory_request),
        ):
            if cur is not None:
                REQUEST_CURRENT.labels(*labels, res).set(cur)
            if new is not None:
                REQUEST_RECOMMENDED.labels(*labels, res).set(new)
            p95 = c.usage.get(res, {}).get("p95")
            if p95 is not None:
                USAGE_P95.labels(*labels, res).set(p95)


async def on_cycle_end(rt: Runtime, marker: CycleEnd) -> Recommendation:
    """A workload's cycle-end marker -> its recommendation on ``kubefinops.recommendations``."""
    spec = marker.spec
    rt.tables.workloads[spec.workload_id] = spec
    usage = usage_of(rt, spec)
    rec = recommend(spec, usage, policy_for(rt, spec), now=rt.clock(), prices=rt.prices)
    rec = rec.model_copy(update={"collection_cycle": marker.cycle})
    export_gauges(rec)
    await rt.topics.recommendations.send(
        key=spec.workload_id.encode(), value=rec.model_dump_json().encode()
    )
    RECORDS_PROCESSED.labels(AGENT).inc()
    return rec
