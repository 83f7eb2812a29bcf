"""The Faust wiring: each agent's stream, timer or task, calling its plain handler.

Nothing here decides anything; the handlers (``agents.<name>``) do, and unit tests call them
without a broker.  This module is what a worker registers on its app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from agents import aggregator, collector, executor, gate, ledger, policies, reporter, verifier
from agents.runtime import Runtime
from engine.app import Topics, wait_for_assignment

log = logging.getLogger("kubefinops.wiring")
RECONCILE_DELAY_SECONDS = 5.0  # let the global table recover before reconciling it


Handler = Callable[[Runtime, bytes | None, bytes | None], Awaitable[object]]


def per_event(
    app: faust.App, topic: faust.TopicT, name: str, handler: Handler, rt: Runtime
) -> None:
    """A stream agent that hands each record (key, value) of ``topic`` to ``handler``."""

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            await handler(rt, event.key, event.value)

    agent.__name__ = agent.__qualname__ = name.rsplit(".", 1)[-1]
    app.agent(topic, name=name)(agent)


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    """Register every stream agent, timer and start-up task of the autopilot on ``app``."""
    record_handlers: tuple[tuple[faust.TopicT, str, Handler], ...] = (
        (topics.policies, "policy_sync", policies.sync),
        (topics.metrics, "aggregator", aggregator.ingest),
        (topics.executions, "ledger", ledger.record),
        (topics.verifications, "ledger_verifications", ledger.record_verification),
        (topics.cycles, "verifier_forward", verifier.forward),
        (topics.verification_queue, "verifier", verifier.handle),
        (topics.cycles, "reporter", reporter.handle),
    )
    for topic, name, handler in record_handlers:
        per_event(app, topic, f"kubefinops.agents.{name}", handler, rt)

    @app.task
    async def reconcile_on_start() -> None:
        await asyncio.sleep(RECONCILE_DELAY_SECONDS)
        await policies.reconcile_until_done(rt)

    @app.timer(interval=rt.settings.collect_interval_seconds, on_leader=True)
    async def tick() -> None:
        await collector.request_cycle(rt, "timer")

    @app.task
    async def first_tick() -> None:
        # Collect right after start instead of one interval later.
        if await wait_for_assignment(app) and rt.settings.collect_on_start and app.is_leader():
            await collector.request_cycle(rt, "start")

    @app.agent(topics.ticks, name="kubefinops.agents.collector")
    async def collect(stream: Any) -> None:
        async for _ in stream:
            await collector.on_tick(rt)

    @app.agent(topics.recommendations, name="kubefinops.agents.gate")
    async def decide(stream: Any) -> None:
        async for events in stream.take_events(gate.GATE_BATCH, within=gate.GATE_WITHIN):
            await gate.handle_batch(rt, [(e.key, e.value) for e in events])

    @app.agent(topics.decisions, name="kubefinops.agents.executor")
    async def execute(stream: Any) -> None:
        async for batch in stream.take(1000, within=rt.settings.apply_batch_seconds):
            await executor.handle_batch(rt, batch)

    @app.timer(interval=rt.settings.verification_interval_seconds, on_leader=True)
    async def verification_tick() -> None:
        if rt.settings.verification_enabled:
            await verifier.request_tick(rt)


AGENTS = (
    policies.AGENT,
    collector.AGENT,
    aggregator.AGENT,
    gate.AGENT,
    executor.AGENT,
    ledger.AGENT,
    reporter.AGENT,
    verifier.AGENT,
)
