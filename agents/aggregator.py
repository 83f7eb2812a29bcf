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

The collector sends these records in bundles (:mod:`engine.core.bundles`): many workloads' records
of one partition in one value, to save Faust's per-event work.  Each member is handled as if it
had come alone, under the guard: a bad member or one of another partition is dead-lettered
alone (as its own record, keyed by its workload id) and the rest of the bundle goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from functools import partial

import orjson

from agents import gate, recommender
from agents.guard import guarded
from agents.runtime import Runtime, park
from engine.core.bundles import partition_of
from engine.core.model import (
    CycleEnd,
    MetricsBatch,
    MetricsBundle,
    MetricsChunk,
    MetricsRecord,
    parse_metrics_member,
    parse_metrics_record,
)
from engine.core.samples import FloatArray, validate_batch, validate_chunk
from engine.core.usage import ContainerUsage, IngestResult
from engine.errors import InvalidRecord
from engine.metrics import RECORDS_PROCESSED, SAMPLES_DUPLICATE, SAMPLES_INGESTED, SAMPLES_LATE

log = logging.getLogger("kubefinops.aggregator")
AGENT = "aggregator"


def key_mismatch(key: bytes | None, expected: str) -> bool:
    return key is None or key != expected.encode()


async def ingest(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One ``kubefinops.metrics`` record: usage into the table, a cycle-end marker, or a bundle
    of them."""
    topic = rt.settings.topic("metrics")
    try:
        record = parse_metrics_record(raw)
    except InvalidRecord as exc:
        await park(rt, topic=topic, key=key, raw=raw, reason=str(exc), agent=AGENT)
        return
    decided: list[gate.Decided] = []
    if isinstance(record, MetricsBundle):
        await _ingest_bundle(rt, record, key, decided)
    else:
        await _ingest_record(rt, record, key, raw, decided)
    await gate.archive(rt, decided)


def _workload_of(record: MetricsRecord) -> str:
    return record.spec.workload_id if isinstance(record, CycleEnd) else record.workload_id


async def _ingest_bundle(
    rt: Runtime,
    bundle: MetricsBundle,
    key: bytes | None,
    decided: list[gate.Decided],
) -> None:
    """Each member as if it had come alone, on this partition (the bundle's key's)."""
    topic = rt.settings.topic("metrics")
    partitions = rt.settings.topic_partitions
    home = None if key is None else partition_of(key, partitions)
    lenient = bundle.lenient  # a pydantic private attribute: ~10 us a read
    for doc in bundle.records:
        raw = orjson.dumps(doc)  # what the member's dead letter carries: the record alone
        try:
            record = parse_metrics_member(doc, lenient=lenient)
        except InvalidRecord as exc:
            reason = f"bundle member: {exc}"
            await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
            continue
        wid = _workload_of(record).encode()
        own = partition_of(wid, partitions)
        if home is None or own != home:
            # kept here, its state would be written by the wrong owner (see key_mismatch)
            reason = (
                f"partition-mismatch: bundle member {wid.decode()!r} keys partition "
                f"{own} of {partitions}, the bundle's key {home}"
            )
            await park(rt, topic=topic, key=wid, raw=raw, reason=reason, agent=AGENT)
            continue
        await guarded(
            rt,
            partial(_ingest_record, rt, record, wid, raw, decided),
            agent=AGENT,
            topic=topic,
            key=wid,
            raw=raw,
        )
        await asyncio.sleep(0)  # one bundle is one event: let the web and timers in between


async def _ingest_record(
    rt: Runtime,
    record: MetricsRecord,
    key: bytes | None,
    raw: bytes | None,
    decided: list[gate.Decided],
) -> None:
    topic = rt.settings.topic("metrics")
    expected = _workload_of(record)
    if key_mismatch(key, expected):
        # On another key's partition it would be processed by the wrong owner of the state.
        reason = f"key-mismatch: record key is not its workload id {expected!r}"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return
    if isinstance(record, CycleEnd):
        made = await recommender.on_cycle_end(rt, record)
        await gate.decide_made(rt, made.rec, made.raw, decided, spec=made.spec)
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
