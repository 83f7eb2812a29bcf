"""Recommender: on a workload's cycle-end marker, turn its usage state into a recommendation.

Every recommendation is decided and archived; ``kubefinops.recommendations`` carries a
workload's when it changed, and an unchanged one every ``recommendation_refresh_seconds``
(:mod:`engine.core.published`).

Runs inside the aggregator's stream (same partition as the usage state), so the state it reads
includes every batch the collector sent for the cycle.  Also records the spec in the
``workloads`` table for the gate and the web API: when it changed, or when the stored one was
observed :data:`SPEC_REFRESH_SECONDS` or more before (its ``observed_at`` is that stale at
most).  Writing the same spec back every hour was one changelog record per workload and cycle:
leaving it out took a 1,000-workload burst from 4.1 to 3.5-3.6 CPU-s of the worker (single runs;
docs/benchmarks.md, "Fewer records per workload").
"""

from __future__ import annotations

import logging
from typing import NamedTuple

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
from engine.metrics import FLEET, RECOMMENDATIONS_PUBLISHED, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.recommender")
AGENT = "recommender"
# An unchanged spec is written again after this long, so ``observed_at`` (the API's "spec seen
# at") is at most this stale; a changed one is written at once.  6 h: 1 write in 6 hourly
# cycles, and a compacted changelog that still says within hours which workloads are alive.
SPEC_REFRESH_SECONDS = 6 * 3600.0


def usage_of(rt: Runtime, spec: WorkloadSpec) -> dict[str, dict[str, UsageSummary]]:
    """Summaries of the spec's containers, from the aggregator's decoded state when current."""
    out: dict[str, dict[str, UsageSummary]] = {}
    for c in spec.containers:
        usage = rt.tables.usage.get(container_id(spec.namespace, spec.kind, spec.name, c.name))
        out[c.name] = {
            res: usage.summary(res) if usage is not None else UsageSummary() for res in RESOURCES
        }
    return out


class Made(NamedTuple):
    """A recommendation made, with its bytes (which the history archives) and the workload's
    spec as the ``workloads`` table now holds it (what the gate decides with)."""

    rec: Recommendation
    raw: bytes
    spec: WorkloadSpec


async def on_cycle_end(rt: Runtime, marker: CycleEnd) -> Made:
    """A workload's cycle-end marker -> its recommendation, on ``kubefinops.recommendations``
    when it changed (:mod:`engine.core.published`)."""
    spec = marker.spec
    stored = rt.tables.workloads.get(spec.workload_id)
    if spec.supersedes(stored, SPEC_REFRESH_SECONDS):
        rt.tables.workloads[spec.workload_id] = stored = spec
    assert stored is not None  # not superseded: a stored spec
    usage = usage_of(rt, spec)
    now = rt.clock()
    rec = recommend(
        spec, usage, policy_for(rt, spec), now=now, prices=rt.prices, collection_cycle=marker.cycle
    )
    FLEET.observe(rec, now)
    raw = rec.model_dump_json().encode()
    if rt.published.due(rec, now):  # changed, or the last one published is stale
        await rt.topics.recommendations.send(key=spec.workload_id.encode(), value=raw)
        rt.published.published(rec, now)
        RECOMMENDATIONS_PUBLISHED.labels("published").inc()
    else:
        RECOMMENDATIONS_PUBLISHED.labels("unchanged").inc()
    RECORDS_PROCESSED.labels(AGENT).inc()
    return Made(rec, raw, stored)
