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
from engine.metrics import FLEET, RECORDS_PROCESSED

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


async def on_cycle_end(rt: Runtime, marker: CycleEnd) -> Recommendation:
    """A workload's cycle-end marker -> its recommendation on ``kubefinops.recommendations``."""
    spec = marker.spec
    rt.tables.workloads[spec.workload_id] = spec
    usage = usage_of(rt, spec)
    rec = recommend(spec, usage, policy_for(rt, spec), now=rt.clock(), prices=rt.prices)
    rec = rec.model_copy(update={"collection_cycle": marker.cycle})
    FLEET.observe(rec, rt.clock())
    await rt.topics.recommendations.send(
        key=spec.workload_id.encode(), value=rec.model_dump_json().encode()
    )
    RECORDS_PROCESSED.labels(AGENT).inc()
    return rec
