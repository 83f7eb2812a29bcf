"""The Faust wiring: each agent's stream, timer or task, calling its plain handler.

Nothing here decides anything; the handlers (``agents.<name>``) do, and unit tests call them
without a broker.  This module is what a worker registers on its app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import faust

from agents import (
    aggregator,
    collector,
    executor,
    gate,
    history,
    ledger,
    policies,
    reporter,
    verifier,
)
from agents.guard import guarded
from agents.runtime import Runtime
from engine.app import Topics, wait_for_assignment

log = logging.getLogger("kubefinops.wiring")
RECONCILE_DELAY_SECONDS = 5.0  # let the global table recover before reconciling it


Handler = Callable[[Runtime, Any, Any], Awaitable[Any]]


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    """Register every stream agent, timer and start-up task of the autopilot on ``app``.

    Every record goes through :func:`agents.guard.guarded`: whatever a handler raises, the
    record is dead-lettered with the exception's type and field and the agent goes on.
    """

    async def each(stream: Any, handler: Handler, agent: str, topic: str | None) -> None:
        """``handler`` for every event, under the guard (``topic`` None: the event's own)."""
        async for event in stream.events():
            await guarded(
                rt,
                partial(handler, rt, event.key, event.value),
                agent=agent,
                topic=rt.settings.topic(topic) if topic else str(event.message.topic),
                key=event.key,
                raw=event.value,
            )

    @app.agent(topics.policies, name="kubefinops.agents.policy_sync")
    async def policy_sync(stream: Any) -> None:
        await each(stream, policies.sync, policies.AGENT, "policies")

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

    async def on_tick(rt: Runtime, key: Any, value: Any) -> None:
        await collector.on_tick(rt)

    @app.agent(topics.ticks, name="kubefinops.agents.collector")
    async def collect(stream: Any) -> None:
        await each(stream, on_tick, collector.AGENT, "collector-ticks")

    @app.agent(topics.metrics, name="kubefinops.agents.aggregator")
    async def aggregate(stream: Any) -> None:
        await each(stream, aggregator.ingest, aggregator.AGENT, "metrics")

    @app.agent(topics.recommendations, name="kubefinops.agents.gate")
    async def decide(stream: Any) -> None:
        async for events in stream.take_events(gate.GATE_BATCH, within=gate.GATE_WITHIN):
            # each record is decided under the guard inside (one bad member never costs the batch)
            await gate.handle_batch(rt, [(e.key, e.value) for e in events])

    # One stream over both one-partition topics: decisions, and the collector's manifests plus
    # the apply ticks (kept off the decisions topic, which stays decisions only).
    executor_input = app.topic(
        rt.settings.topic("decisions"),
        rt.settings.topic("apply-control"),
        partitions=1,  # both are one-partition topics: the single Git writer
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(executor_input, name="kubefinops.agents.executor")
    async def execute(stream: Any) -> None:
        await each(stream, executor.accept, executor.AGENT, None)

    @app.timer(interval=max(0.5, rt.settings.apply_batch_seconds / 3))
    async def apply_tick() -> None:
        # Tables are written only inside their stream: wake it while cycles wait to be applied.
        if executor.has_pending(rt):
            await executor.tick(rt)

    @app.agent(topics.executions, name="kubefinops.agents.ledger")
    async def ledger_agent(stream: Any) -> None:
        await each(stream, ledger.record, ledger.AGENT, "executions")

    @app.agent(topics.verifications, name="kubefinops.agents.ledger_verifications")
    async def ledger_verifications(stream: Any) -> None:
        await each(stream, ledger.record_verification, ledger.AGENT, "verifications")

    @app.agent(topics.cycles, name="kubefinops.agents.verifier_forward")
    async def verifier_forward(stream: Any) -> None:
        await each(stream, verifier.forward, verifier.AGENT, "cycles")

    @app.timer(interval=rt.settings.verification_interval_seconds, on_leader=True)
    async def verification_tick() -> None:
        if rt.settings.verification_enabled:
            await verifier.request_tick(rt)

    @app.agent(topics.verification_queue, name="kubefinops.agents.verifier")
    async def verify(stream: Any) -> None:
        await each(stream, verifier.handle, verifier.AGENT, "verification-queue")

    @app.agent(topics.cycles, name="kubefinops.agents.reporter")
    async def report(stream: Any) -> None:
        await each(stream, reporter.handle, reporter.AGENT, "cycles")

    @app.agent(topics.history, name="kubefinops.agents.history")
    async def history_writer(stream: Any) -> None:
        async for events in stream.take_events(history.BATCH, within=history.WITHIN):
            records = [(e.key, e.value) for e in events]
            await guarded(
                rt,
                partial(history.write_batch, rt, records),
                agent=history.AGENT,
                topic=rt.settings.topic("history"),
                key=None,
                raw=b"\n".join(v or b"" for _, v in records),
            )


AGENTS = (
    policies.AGENT,
    collector.AGENT,
    aggregator.AGENT,
    gate.AGENT,
    executor.AGENT,
    ledger.AGENT,
    reporter.AGENT,
    history.AGENT,
    verifier.AGENT,
)
