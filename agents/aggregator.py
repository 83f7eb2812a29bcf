"""Aggregator: metrics records -> windowed usage sketches in the ``usage`` table.

A record is one workload's samples for one collection chunk: a columnar :class:`MetricsChunk`
(every container of the workload, what the collector sends) or a :class:`MetricsBatch` (one
container; the format before it, still read so records left in the topic by an upgrade are
ingested exactly as before).  The agent validates the samples once (bad ones are dead-lettered
with per-sample reasons and counted, the good ones kept), merges each container's samples into
that container's windowed state idempotently (the chunk is remembered per container: a record
re-delivered after a rebalance changes nothing) and writes the value back so the changelog holds
the complete state.  A ``cycle-end`` marker, which the collector sends after a workload's records
on the same partition, triggers the recommendation for that workload from complete state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agents import recommender
from agents.runtime import Runtime, park
from engine.core.model import CycleEnd, MetricsBatch, MetricsChunk, parse_metrics_record
from engine.core.samples import FloatArray, validate_batch, validate_chunk
from engine.core.usage import ContainerUsage, IngestResult
from engine.errors import InvalidRecord
from engine.metrics import RECORDS_PROCESSED, SAMPLES_DUPLICATE, SAMPLES_INGESTED, SAMPLES_LATE

log = logging.getLogger("kubefinops.aggregator")
AGENT = "aggregator"


def key_mismatch(key: bytes | None, expected: str) -> bool:
    return key is None or key != expected.encode()


async def ingest(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One ``kubefinops.metrics`` record: usage into the table, or a cycle-end marker."""
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
    if isinstance(record, MetricsChunk):
        await _ingest_chunk(rt, record, key, raw)
    else:
        await _ingest_batch(rt, record, key, raw)
    RECORDS_PROCESSED.labels(AGENT).inc()


async def _park_reasons(
    rt: Runtime, reasons: list[tuple[str, int]], key: bytes | None, raw: bytes | None
) -> None:
    topic = rt.settings.topic("metrics")
    for reason, count in reasons:
        await park(
            rt, topic=topic, key=key, raw=raw, reason=f"{reason}: {count} samples", agent=AGENT
        )


async def _ingest_chunk(
    rt: Runtime, chunk: MetricsChunk, key: bytes | None, raw: bytes | None
) -> None:
    checked = validate_chunk(chunk, now=rt.clock())
    await _park_reasons(rt, checked.reasons, key, raw)
    for container, arrays in checked.arrays.items():
        _store(rt, chunk.container_id(container), chunk.start, chunk.end, arrays)


async def _ingest_batch(
    rt: Runtime, batch: MetricsBatch, key: bytes | None, raw: bytes | None
) -> None:
    checked = validate_batch(batch, now=rt.clock())
    await _park_reasons(rt, checked.reasons, key, raw)
    cid = checked.batch.container_id
    usage = rt.tables.usage.get(cid) or ContainerUsage()
    result = usage.ingest(
        checked.batch,
        arrays=checked.arrays,
        history_seconds=rt.settings.history_seconds,
        window_seconds=rt.settings.usage_window_seconds,
    )
    _account(rt, cid, usage, result)


def _store(
    rt: Runtime,
    cid: str,
    start: float,
    end: float,
    arrays: Mapping[str, tuple[FloatArray, FloatArray]],
) -> None:
    usage = rt.tables.usage.get(cid) or ContainerUsage()
    result = usage.ingest_arrays(
        start,
        end,
        arrays,
        history_seconds=rt.settings.history_seconds,
        window_seconds=rt.settings.usage_window_seconds,
        validated=True,
    )
    _account(rt, cid, usage, result)


def _account(rt: Runtime, cid: str, usage: ContainerUsage, result: IngestResult) -> None:
    if result.duplicates:
        SAMPLES_DUPLICATE.inc(result.duplicates)
    if result.late:
        SAMPLES_LATE.inc(result.late)
    if result.accepted:
        for resource, accepted in result.accepted_by_resource.items():
            SAMPLES_INGESTED.labels(resource).inc(accepted)
        rt.tables.usage[cid] = usage
