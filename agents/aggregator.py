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

The wiring hands records over in batches (:func:`ingest_batch`: up to :data:`BATCH` arriving
within :data:`WITHIN` seconds).  Each record is handled alone under the guard, in order, but a
container's state is written back to the table once per batch, after its last record (and before
any cycle-end marker, so a recommendation always reads the written state): during a backfill or
a catch-up a container's consecutive chunks cost one encoding and one changelog record.  The
write goes to the changelog partition of that container's own records (``scope``), never of
another member of the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial

from agents import recommender
from agents.guard import guarded
from agents.runtime import Runtime, park
from engine.core.model import CycleEnd, MetricsBatch, MetricsChunk, parse_metrics_record
from engine.core.samples import FloatArray, validate_batch, validate_chunk
from engine.core.usage import ContainerUsage, IngestResult
from engine.errors import InvalidRecord
from engine.metrics import RECORDS_PROCESSED, SAMPLES_DUPLICATE, SAMPLES_INGESTED, SAMPLES_LATE

log = logging.getLogger("kubefinops.aggregator")
AGENT = "aggregator"
BATCH = 500  # records per batch at most
WITHIN = 0.05  # seconds: the most a lone record waits for company

# ``scope(i)``: a context in which table writes belong to the i-th record of the batch (its
# changelog partition); the Faust wiring provides it, a plain call needs none.
Scope = Callable[[int], AbstractContextManager[object]]


@dataclass
class _Writes:
    """Container states changed in this batch, written back once (see the module doc)."""

    scope: Scope
    index: int = 0  # the record being handled
    pending: dict[str, tuple[int, ContainerUsage]] = field(default_factory=dict)

    def get(self, rt: Runtime, cid: str) -> ContainerUsage:
        held = self.pending.get(cid)
        if held is not None:
            return held[1]
        return rt.tables.usage.get(cid) or ContainerUsage()

    def put(self, cid: str, usage: ContainerUsage) -> None:
        self.pending[cid] = (self.index, usage)

    def flush(self, rt: Runtime) -> None:
        pending, self.pending = self.pending, {}
        for cid, (index, usage) in pending.items():
            with self.scope(index):
                rt.tables.usage[cid] = usage


def _no_scope(index: int) -> AbstractContextManager[object]:
    return nullcontext()


async def ingest_batch(
    rt: Runtime,
    records: Sequence[tuple[bytes | None, bytes | None]],
    scope: Scope = _no_scope,
) -> None:
    """A batch of ``kubefinops.metrics`` records, in order; each under the guard (a record that
    fails is dead-lettered alone), the changed states written once at the end."""
    topic = rt.settings.topic("metrics")
    writes = _Writes(scope)
    for i, (key, raw) in enumerate(records):
        writes.index = i
        with scope(i):  # what the record writes itself (a cycle-end's spec) is on its partition
            await guarded(
                rt,
                partial(_handle, rt, key, raw, writes),
                agent=AGENT,
                topic=topic,
                key=key,
                raw=raw,
            )
    # each write under the guard too: a state that cannot be written dead-letters the record
    # that last changed it, and the others are still written
    pending, writes.pending = writes.pending, {}
    for cid, (index, usage) in pending.items():
        key, raw = records[index]
        await guarded(
            rt,
            partial(_write, rt, writes.scope, index, cid, usage),
            agent=AGENT,
            topic=topic,
            key=key,
            raw=raw,
        )


async def _write(rt: Runtime, scope: Scope, index: int, cid: str, usage: ContainerUsage) -> None:
    with scope(index):
        rt.tables.usage[cid] = usage


def key_mismatch(key: bytes | None, expected: str) -> bool:
    return key is None or key != expected.encode()


async def ingest(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One ``kubefinops.metrics`` record: usage into the table, or a cycle-end marker."""
    writes = _Writes(_no_scope)
    try:
        await _handle(rt, key, raw, writes)
    finally:
        writes.flush(rt)


async def _handle(rt: Runtime, key: bytes | None, raw: bytes | None, writes: _Writes) -> None:
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
        writes.flush(rt)  # the recommendation reads complete, written state
        await recommender.on_cycle_end(rt, record)
        return
    if isinstance(record, MetricsChunk):
        await _ingest_chunk(rt, record, key, raw, writes)
    else:
        await _ingest_batch(rt, record, key, raw, writes)
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
    rt: Runtime, chunk: MetricsChunk, key: bytes | None, raw: bytes | None, writes: _Writes
) -> None:
    checked = validate_chunk(chunk, now=rt.clock())
    await _park_reasons(rt, checked.reasons, key, raw)
    for container, arrays in checked.arrays.items():
        _store(rt, writes, chunk.container_id(container), chunk.start, chunk.end, arrays)


async def _ingest_batch(
    rt: Runtime, batch: MetricsBatch, key: bytes | None, raw: bytes | None, writes: _Writes
) -> None:
    checked = validate_batch(batch, now=rt.clock())
    await _park_reasons(rt, checked.reasons, key, raw)
    cid = checked.batch.container_id
    usage = writes.get(rt, cid)
    result = usage.ingest(
        checked.batch,
        arrays=checked.arrays,
        history_seconds=rt.settings.history_seconds,
        window_seconds=rt.settings.usage_window_seconds,
    )
    _account(writes, cid, usage, result)


def _store(
    rt: Runtime,
    writes: _Writes,
    cid: str,
    start: float,
    end: float,
    arrays: Mapping[str, tuple[FloatArray, FloatArray]],
) -> None:
    usage = writes.get(rt, cid)
    result = usage.ingest_arrays(
        start,
        end,
        arrays,
        history_seconds=rt.settings.history_seconds,
        window_seconds=rt.settings.usage_window_seconds,
        validated=True,
    )
    _account(writes, cid, usage, result)


def _account(writes: _Writes, cid: str, usage: ContainerUsage, result: IngestResult) -> None:
    if result.duplicates:
        SAMPLES_DUPLICATE.inc(result.duplicates)
    if result.late:
        SAMPLES_LATE.inc(result.late)
    if result.accepted:
        for resource, accepted in result.accepted_by_resource.items():
            SAMPLES_INGESTED.labels(resource).inc(accepted)
        writes.put(cid, usage)
