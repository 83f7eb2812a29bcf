"""Recommender: on a workload's cycle-end marker, turn its usage state into a recommendation.

Runs inside the aggregator's stream (same partition as the usage state), so the state it reads
includes every batch the collector sent for the cycle.  Also records the spec in the
``workloads`` table for the gate and the web API.
"""

from __future__ import annotations

import logging
import time

from agents.policies import policy_for
from agents.runtime import Runtime
from engine.core.model import (
    RESOURCES,
    CycleEnd,
    UsageSummary,
    WorkloadSpec,
    container_id,
)
from engine.core.recommend import recommend
from engine.metrics import FLEET, RECORDS_PROCESSED
from tables.usage_cache import UsageCache

log = logging.getLogger("kubefinops.recommender")
AGENT = "recommender"


def usage_of(
    rt: Runtime, cache: UsageCache, spec: WorkloadSpec
) -> dict[str, dict[str, UsageSummary]]:
    """Summaries of the spec's containers, from the aggregator's decoded state when current."""
    out: dict[str, dict[str, UsageSummary]] = {}
    for c in spec.containers:
        cid = container_id(spec.namespace, spec.kind, spec.name, c.name)
        usage = cache.load(cid, rt.tables.usage.get(cid))
        out[c.name] = {res: usage.summary(res) for res in RESOURCES}
    return out


async def on_cycle_end(rt: Runtime, marker: CycleEnd, cache: UsageCache) -> None:
    spec = marker.spec
    rt.tables.workloads[spec.workload_id] = spec.model_dump(mode="json")
    usage = usage_of(rt, cache, spec)
    rec = recommend(spec, usage, policy_for(rt, spec), now=time.time(), settings=rt.settings)
    rec = rec.model_copy(update={"cycle": marker.cycle})
    FLEET.observe(rec, time.time())
    await rt.topics.recommendations.send(
        key=spec.workload_id.encode(), value=rec.model_dump_json().encode()
    )
    RECORDS_PROCESSED.labels(AGENT).inc()
