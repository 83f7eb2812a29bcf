"""What every agent handler gets: settings, output topics, typed tables and services — passed
explicitly, and none of it tied to Faust.

A handler is a plain ``async def handle(rt, key, raw)``: the Faust wiring (:mod:`agents.wiring`)
feeds it a stream's events in a worker; a unit test feeds it bytes, with ``dict`` tables, topics
that record what was sent and in-memory services (``tests/fakes.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar

from engine.core.cost import Prices
from engine.core.model import DeadLetter, Wire, parse
from engine.core.published import PublishedRecommendations
from engine.core.records import reason_class  # the metric's label = the CLI's and API's group
from engine.errors import InvalidRecord
from engine.logs import redact
from engine.metrics import DEAD_LETTERS
from engine.services import Services
from engine.settings import Settings
from tables.state import Tables

log = logging.getLogger("kubefinops.agents")

MAX_PARKED_BYTES = 256 * 1024
M = TypeVar("M", bound=Wire)


class Sink(Protocol):
    """Where a handler sends records: a Faust topic in a worker, a list in a test.

    Awaiting ``send`` hands the record to the producer; awaiting its result waits for the
    broker's acknowledgement.
    """

    async def send(self, *, key: bytes | None = None, value: bytes | None = None) -> Any: ...


@dataclass(frozen=True)
class Sinks:
    """The topics the agents write (same names as :class:`engine.app.Topics`)."""

    metrics: Sink
    workloads: Sink
    policies: Sink
    recommendations: Sink
    decisions: Sink
    executions: Sink
    deadletter: Sink
    ticks: Sink
    cycles: Sink
    history: Sink
    apply_control: Sink
    verifications: Sink
    verification_queue: Sink

    @classmethod
    def of(cls, topics: object) -> Sinks:
        """The sinks of an object with one attribute per topic (``engine.app.Topics``)."""
        return cls(**{f.name: getattr(topics, f.name) for f in fields(cls)})


class Liveness(Protocol):
    """What ``GET /health`` asks: why the worker should be restarted, or None
    (:class:`engine.app.RecoveryWatch` in a worker)."""

    problem: str | None


@dataclass
class Alive:
    problem: str | None = None


@dataclass
class Runtime:
    settings: Settings
    topics: Sinks
    tables: Tables
    services: Services = field(default_factory=Services)
    liveness: Liveness = field(default_factory=Alive)
    clock: Callable[[], float] = time.time
    retry_first_seconds: float = 1.0  # the first backoff step (doubling, capped); tests shrink it
    # what this process last published on kubefinops.recommendations (agents/recommender.py)
    published: PublishedRecommendations = field(init=False)

    def __post_init__(self) -> None:
        self.published = PublishedRecommendations(self.settings.recommendation_refresh_seconds)

    @property
    def prices(self) -> Prices:
        return self.settings.prices


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
    reason = redact(reason)  # an exception's text may quote what it was given
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
