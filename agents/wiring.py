"""The Faust wiring: each agent's stream, timer or task, calling its plain handler.

Nothing here decides anything; the handlers (``agents.<name>``) do, and unit tests call them
without a broker.  This module is what a worker registers on its app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from agents import aggregator, collector, executor, gate, ledger, policies, reporter, verifier
from agents.runtime import Runtime
from engine.app import Topics, wait_for_assignment

log = logging.getLogger("kubefinops.wiring")
RECONCILE_DELAY_SECONDS = 5.0  # let the global table recover before reconciling it


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    """Register every stream agent, timer and start-up task of the autopilot on ``app``."""

    @app.agent(topics.policies, name="kubefinops.agents.policy_sync")
    async def policy_sync(stream: Any) -> None:
        async for event in stream.events():
            await policies.sync(rt, event.key, event.value)

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

    @app.agent(topics.metrics, name="kubefinops.agents.aggregator")
    async def aggregate(stream: Any) -> None:
        async for event in stream.events():
            await aggregator.ingest(rt, event.key, event.value)

    @app.agent(topics.recommendations, name="kubefinops.agents.gate")
    async def decide(stream: Any) -> None:
        async for events in stream.take_events(gate.GATE_BATCH, within=gate.GATE_WITHIN):
            await gate.handle_batch(rt, [(e.key, e.value) for e in events])

    @app.agent(topics.decisions, name="kubefinops.agents.executor")
    async def execute(stream: Any) -> None:
        async for batch in stream.take(1000, within=rt.settings.apply_batch_seconds):
            await executor.handle_batch(rt, batch)

    @app.agent(topics.executions, name="kubefinops.agents.ledger")
    async def ledger_agent(stream: Any) -> None:
        async for event in stream.events():
            await ledger.record(rt, event.key, event.value)

    @app.agent(topics.verifications, name="kubefinops.agents.ledger_verifications")
    async def ledger_verifications(stream: Any) -> None:
        async for event in stream.events():
            await ledger.record_verification(rt, event.key, event.value)

    @app.agent(topics.cycles, name="kubefinops.agents.verifier_forward")
    async def verifier_forward(stream: Any) -> None:
        async for event in stream.events():
            await verifier.forward(rt, event.key, event.value)

    @app.timer(interval=rt.settings.verification_interval_seconds, on_leader=True)
    async def verification_tick() -> None:
        if rt.settings.verification_enabled:
            await verifier.request_tick(rt)

    @app.agent(topics.verification_queue, name="kubefinops.agents.verifier")
    async def verify(stream: Any) -> None:
        async for event in stream.events():
            await verifier.handle(rt, event.key, event.value)

    @app.agent(topics.cycles, name="kubefinops.agents.reporter")
    async def report(stream: Any) -> None:
        async for event in stream.events():
            await reporter.handle(rt, event.key, event.value)


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
