"""What every agent gets: settings, the app, topics, tables and adapters — passed explicitly."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust

from engine.app import Topics
from engine.core.model import DeadLetter, Wire, parse
from engine.errors import InvalidRecord
from engine.metrics import DEAD_LETTERS
from engine.settings import Settings
from tables import Tables

log = logging.getLogger("kubefinops.agents")

MAX_PARKED_BYTES = 256 * 1024
M = TypeVar("M", bound=Wire)


@dataclass
class Runtime:
    settings: Settings
    app: faust.App
    topics: Topics
    tables: Tables
    services: dict[str, Any] = field(default_factory=dict)

    def service(self, name: str) -> Any:
        return self.services.get(name)


def reason_class(reason: str) -> str:
    """A low-cardinality label for a reason: the text before the first ':'."""
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


async def park(
    rt: Runtime,
    *,
    topic: str,
    key: bytes | str | None,
    raw: bytes | str | None,
    reason: str,
    agent: str,
) -> None:
    """Send a rejected record to the dead-letter topic with the reason, and count it."""
    if isinstance(raw, bytes):
        text = raw[:MAX_PARKED_BYTES].decode("utf-8", errors="replace")
    else:
        text = (raw or "")[:MAX_PARKED_BYTES]
    key_text = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key
    letter = DeadLetter(
        topic=topic, key=key_text, reason=reason, value=text, rejected_at=time.time(), agent=agent
    )
    DEAD_LETTERS.labels(agent, reason_class(reason)).inc()
    log.warning("dead-lettered a record from %s (key=%s): %s", topic, key_text, reason)
    await rt.topics.deadletter.send(
        key=key_text.encode() if key_text else None, value=letter.model_dump_json().encode()
    )


async def parse_or_park(
    rt: Runtime, model: type[M], raw: bytes | None, *, topic: str, key: bytes | None, agent: str
) -> M | None:
    """The record as ``model``, or None once it is parked on the dead-letter topic with why."""
    try:
        return parse(model, raw)
    except InvalidRecord as exc:
        await park(rt, topic=topic, key=key, raw=raw, reason=str(exc), agent=agent)
        return None
