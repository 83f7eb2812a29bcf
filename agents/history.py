"""History: the MongoDB record of recommendations and decisions, through a Kafka outbox.

The gate never writes MongoDB itself (a failed write used to cost it ~5 s per record, so a
MongoDB outage split one cycle's decisions over several apply windows and lost the history): it
produces each record to ``kubefinops.history`` — one produce, as fast as the decision's own — and
goes on.  The history writer consumes that topic and upserts by id; while MongoDB is away it
retries with capped backoff and does not acknowledge the record, so the topic is the durable queue
and every record is stored exactly once (re-delivery replaces itself) when MongoDB returns.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from agents.runtime import Runtime, parse_or_park
from engine.backoff import retry_forever
from engine.core.model import HistoryKind, HistoryRecord
from engine.metrics import HISTORY_WRITES, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.history")
AGENT = "history"
RETRY_FIRST_SECONDS = 1.0  # then 2, 4 ... up to 30 s while MongoDB is away


async def record(rt: Runtime, kind: HistoryKind, item: BaseModel, key: str) -> None:
    """Queue one record for the MongoDB history (the outbox); never waits for MongoDB."""
    if rt.services.history is None:
        return
    value = HistoryRecord(kind=kind, record=item.model_dump(mode="json"))
    await rt.topics.history.send(key=key.encode(), value=value.model_dump_json().encode())


async def write(rt: Runtime, key: bytes | None, raw: bytes | None) -> None:
    """One outbox record -> MongoDB, retried until MongoDB takes it."""
    item = await parse_or_park(
        rt, HistoryRecord, raw, key=key, agent=AGENT, topic=rt.settings.topic("history")
    )
    store = rt.services.history
    if item is None or store is None:
        return

    def count_retry(exc: BaseException, delay: float) -> None:
        HISTORY_WRITES.labels("retry").inc()

    await retry_forever(
        lambda: store.save(item.kind, item.record),
        what=f"history: {item.kind} {item.record.get('id')} not stored yet",
        first=RETRY_FIRST_SECONDS,
        cap=30.0,
        on_retry=count_retry,
    )
    HISTORY_WRITES.labels("ok").inc()
    RECORDS_PROCESSED.labels(AGENT).inc()
