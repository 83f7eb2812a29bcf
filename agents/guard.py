"""The one guard that makes every agent handler total.

A record either produces its handler's output or goes to the dead-letter topic with a reason
naming the exception type and, when known, the field — and the agent goes on with the next
record.  Nothing a record contains, and no refusal of the producer (a ``MessageSizeTooLarge``
output, say), can crash an agent or silently drop a record.  ``asyncio.CancelledError`` (a
shutdown or a rebalance) is never swallowed.

Handlers still dead-letter what they expect themselves (an invalid record, with the model's
reason); the guard is for everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from agents.runtime import Runtime, park
from engine.core.bounds import one_line
from engine.metrics import AGENT_FAILURES

log = logging.getLogger("kubefinops.guard")
T = TypeVar("T")


def failure_reason(exc: BaseException) -> str:
    """``ValueError at containers.0.cpu_request: Input should be finite`` — type, field, what."""
    kind = type(exc).__name__
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or exc.title
        return f"{kind} at {exc.title}.{where}: {one_line(first['msg'], 300)}"
    text = one_line(exc, 300)
    return f"{kind}: {text}" if text else kind


async def dead_letter(
    rt: Runtime, *, agent: str, topic: str, key: Any, raw: Any, exc: BaseException
) -> None:
    reason = failure_reason(exc)
    AGENT_FAILURES.labels(agent, type(exc).__name__).inc()
    log.error("%s: record from %s (key=%r) dead-lettered: %s", agent, topic, key, reason)
    try:
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=agent)
    except asyncio.CancelledError:
        raise
    except Exception as park_exc:  # the dead-letter topic itself refused: say so, go on
        log.error(
            "%s: could not dead-letter a record from %s: %s",
            agent,
            topic,
            failure_reason(park_exc),
        )


async def guarded(
    rt: Runtime,
    handler: Callable[[], Awaitable[Any]],
    *,
    agent: str,
    topic: str,
    key: bytes | str | None,
    raw: bytes | str | None,
) -> bool:
    """Run ``handler()`` for one record; on any failure dead-letter the record. True if it ran."""
    try:
        await handler()
        return True
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await dead_letter(rt, agent=agent, topic=topic, key=key, raw=raw, exc=exc)
        return False


async def guarded_batch(
    rt: Runtime,
    batch: Sequence[Any],
    prepare: Callable[[Any], Awaitable[T | None]],
    handler: Callable[[list[T]], Awaitable[Any]],
    *,
    agent: str,
    topic: str,
    key_of: Callable[[Any], Any] = lambda _: None,
    raw_of: Callable[[Any], Any] = lambda value: value,
) -> None:
    """A batch agent's step, total: ``prepare`` each member alone (parse, validate; None = it
    dead-lettered the member itself), dead-letter the members that fail there, then run
    ``handler`` on the rest — one bad member never costs the batch.  If ``handler`` itself fails,
    every member it was given is dead-lettered with the reason (never dropped)."""
    good: list[T] = []
    members: list[Any] = []
    for item in batch:
        try:
            prepared = await prepare(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await dead_letter(
                rt, agent=agent, topic=topic, key=key_of(item), raw=raw_of(item), exc=exc
            )
            continue
        if prepared is not None:
            good.append(prepared)
            members.append(item)
    if not good:
        return
    try:
        await handler(good)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        for item in members:
            await dead_letter(
                rt, agent=agent, topic=topic, key=key_of(item), raw=raw_of(item), exc=exc
            )
