"""Aggregator: metrics batches -> windowed usage sketches in the ``usage`` table.

One message = one container's samples for one collection chunk.  The agent validates the samples
(bad ones are dead-lettered with a reason and counted, the good ones kept), merges them into the
container's windowed state idempotently (the chunk end is a per-key high-water mark, so a batch
re-delivered after a rebalance changes nothing) and writes the value back so the changelog holds
the complete state.  A ``cycle-end`` marker, which the collector sends after a workload's batches
on the same partition, triggers the recommendation for that workload from complete state.
"""

from __future__ import annotations

import logging

from agents import recommender
from agents.runtime import Runtime, park
from engine.core.model import CycleEnd, parse_metrics_record
from engine.core.samples import validate_batch
from engine.core.usage import ContainerUsage
from engine.errors import InvalidRecord
from engine.metrics import RECORDS_PROCESSED, SAMPLES_DUPLICATE, SAMPLES_INGESTED, SAMPLES_LATE

log = logging.getLogger("kubefinops.aggregator")
AGENT = "aggregator"


def key_mismatch(key: bytes | None, expected: str) -> bool:
    return key is None or key != expected.encode()


async def ingest(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One ``kubefinops.metrics`` record: a usage batch into the table, or a cycle-end marker."""
    topic = rt.settings.topic("metrics")
    try:
        record = parse_metrics_record(raw)
    except InvalidRecord as exc:
        await park(rt, topic=topic, key=key, raw=raw, reason=str(exc), agent=AGENT)
        return
    expected = record.spec.workload_id if isinstance(record, CycleEnd) else record.workload_id
    if key_mismatch(key, expected):
        # On another key's partition it would be processed by the wrong owner of the state.
        reason = f"key-mismatch: record key is not its workload id {expected!r}"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return
    if isinstance(record, CycleEnd):
        await recommender.on_cycle_end(rt, record)
        return
    checked = validate_batch(record, now=rt.clock())
    clean = checked.batch
    for reason, count in checked.reasons:
        await park(
            rt, topic=topic, key=key, raw=raw, reason=f"{reason}: {count} samples", agent=AGENT
        )
    cid = clean.container_id
    usage = rt.tables.usage.get(cid) or ContainerUsage()
    result = usage.ingest(
        clean,
        arrays=checked.arrays,
        history_seconds=rt.settings.history_seconds,
        window_seconds=rt.settings.usage_window_seconds,
    )
    if result.duplicates:
        SAMPLES_DUPLICATE.inc(result.duplicates)
    if result.late:
        SAMPLES_LATE.inc(result.late)
    if result.accepted:
        for resource, accepted in result.accepted_by_resource.items():
            SAMPLES_INGESTED.labels(resource).inc(accepted)
        rt.tables.usage[cid] = usage
    RECORDS_PROCESSED.labels(AGENT).inc()
