"""History: the MongoDB record of recommendations and decisions, through a Kafka outbox.

The gate never writes MongoDB itself (a failed write used to cost it ~5 s per record, so a
MongoDB outage split one cycle's decisions over several apply windows and lost the history): it
produces each record to ``kubefinops.history`` — one produce, as fast as the decision's own — and
goes on.  The history writer consumes that topic and upserts by id (one bulk write per kind and
batch); while MongoDB is away it
retries with capped backoff and does not acknowledge the record, so the topic is the durable queue
and every record is stored exactly once (re-delivery replaces itself) when MongoDB returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from pydantic import BaseModel

from agents.guard import guarded
from agents.runtime import Runtime, park, parse_or_park
from engine.backoff import retry_forever
from engine.core import outbox
from engine.core.model import HistoryKind, HistoryRecord
from engine.core.outbox import history_raw, history_raw_of, is_batch, pack_raw
from engine.errors import InvalidRecord
from engine.metrics import HISTORY_WRITES, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.history")
AGENT = "history"
RETRY_FIRST_SECONDS = 1.0  # then 2, 4 ... up to 30 s while MongoDB is away
BATCH = 500  # outbox records per bulk write
WITHIN = 0.2  # seconds the writer waits to fill a batch


async def record(rt: Runtime, kind: HistoryKind, item: BaseModel, key: str) -> None:
    """Queue one record for the MongoDB history (the outbox); never waits for MongoDB."""
    if rt.services.history is None:
        return
    value = HistoryRecord(kind=kind, record=item.model_dump(mode="json"))
    await rt.topics.history.send(key=key.encode(), value=value.model_dump_json().encode())


async def record_many(rt: Runtime, items: Sequence[tuple[HistoryKind, BaseModel, str]]) -> None:
    """Queue many records (kind, item, key) in as few outbox messages as fit the size bound
    (:func:`engine.core.outbox.pack_history`); never waits for MongoDB."""
    if rt.services.history is None or not items:
        return
    await _send_packed(rt, [history_raw(kind, item) for kind, item, _ in items], items[0][2])


async def record_serialized(rt: Runtime, items: Sequence[tuple[HistoryKind, bytes, str]]) -> None:
    """:func:`record_many` of records already serialized (kind, the model's JSON bytes, key):
    the gate's recommendation and decision as they were sent, not dumped a second time.  Each
    must be the ``model_dump_json()`` of a record with a non-empty string ``id``, as
    :func:`engine.core.outbox.history_raw` requires."""
    if rt.services.history is None or not items:
        return
    await _send_packed(rt, [history_raw_of(kind, raw) for kind, raw, _ in items], items[0][2])


async def _send_packed(rt: Runtime, records: list[bytes], key_text: str) -> None:
    """``records`` in as few outbox messages as fit, each sent under the guard: a message the
    producer refuses is dead-lettered whole (it is at most ``MAX_BATCH_BYTES``, what a dead
    letter carries), never raised into the agent that made the records — the aggregator, whose
    metrics record is already handled by then."""
    key = key_text.encode()  # any key: upserts by id, so partition and order do not matter
    topic = rt.settings.topic("history")
    for value in pack_raw(records):
        await guarded(
            rt,
            partial(rt.topics.history.send, key=key, value=value),
            agent=AGENT,
            topic=topic,
            key=key,
            raw=value,
        )


async def write(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One outbox record -> MongoDB, retried until MongoDB takes it."""
    await write_batch(rt, [(key, raw)])


async def write_batch(rt: Runtime, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Outbox records -> MongoDB in one bulk write per kind, retried (all of it, idempotent
    upserts) until MongoDB takes it; a record that is not a history record is dead-lettered."""
    store = rt.services.history
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for key, raw in records:
        for item in await _records_of(rt, key, raw):
            by_kind.setdefault(item.kind, []).append(item.record)
    if store is None or not by_kind:
        return

    def count_retry(exc: BaseException, delay: float) -> None:
        HISTORY_WRITES.labels("retry").inc()

    async def save_all() -> None:
        save_many = getattr(store, "save_many", None)
        for kind, docs in by_kind.items():
            if save_many is not None:  # one bulk write per kind
                await save_many(kind, list(docs))
            else:
                for doc in docs:
                    await store.save(kind, doc)

    count = sum(len(d) for d in by_kind.values())
    await retry_forever(
        save_all,
        what=f"history: {count} records not stored yet",
        first=RETRY_FIRST_SECONDS,
        cap=30.0,
        on_retry=count_retry,
    )
    HISTORY_WRITES.labels("ok").inc(count)
    RECORDS_PROCESSED.labels(AGENT).inc(count)


async def _records_of(rt: Runtime, key: bytes | None, raw: bytes | None) -> list[HistoryRecord]:
    """The history records of one outbox message (one, or a batch's members); what is not a
    history record is dead-lettered — a bad member of a batch alone, with its reason."""
    topic = rt.settings.topic("history")
    if not is_batch(raw):
        item = await parse_or_park(rt, HistoryRecord, raw, key=key, agent=AGENT, topic=topic)
        return [] if item is None else [item]
    try:
        docs = outbox.members(raw or b"")
    except InvalidRecord as exc:
        await park(rt, topic=topic, key=key, raw=raw, reason=str(exc), agent=AGENT)
        return []
    out = []
    for doc in docs:
        try:
            out.append(outbox.member(doc))
        except InvalidRecord as exc:
            raw_member = outbox.member_raw(doc)
            await park(rt, topic=topic, key=key, raw=raw_member, reason=str(exc), agent=AGENT)
    return out
