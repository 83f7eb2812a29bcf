"""The Faust wiring: each agent's stream, timer or task, calling its plain handler.

Nothing here decides anything; the handlers (``agents.<name>``) do, and unit tests call them
without a broker.  This module is what a worker registers on its app.

Every record goes through :func:`agents.guard.guarded`: whatever a handler raises, the record is
dead-lettered with the exception's type and field and the agent goes on (issue 10).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

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
from engine import memory
from engine.app import RecoveryWatch, RecoveryWatchService, Topics, wait_for_assignment

log = logging.getLogger("kubefinops.wiring")
# Reconcile once the tables are recovered (the tombstones of ids MongoDB no longer has read the
# global table), and at the latest after this long — a fixed delay was a guess that a loaded
# worker, still joining its group, could miss.
RECONCILE_WAIT_SECONDS = 120.0


Handler = Callable[[Runtime, bytes | None, bytes | None], Awaitable[object]]


def per_event(
    app: faust.App, topic: faust.TopicT, name: str, handler: Handler, rt: Runtime, agent: str
) -> None:
    """A stream agent that hands each record (key, value) of ``topic`` to ``handler``, under
    the guard: a record it fails on is dead-lettered (with the record's own topic) and the
    stream goes on."""

    async def consume(stream: Any) -> None:
        async for event in stream.events():
            await guarded(
                rt,
                partial(handler, rt, event.key, event.value),
                agent=agent,
                topic=str(event.message.topic),
                key=event.key,
                raw=event.value,
            )

    consume.__name__ = consume.__qualname__ = name.rsplit(".", 1)[-1]
    app.agent(topic, name=name)(consume)


async def _collector_tick(rt: Runtime, key: bytes | None, value: bytes | None) -> None:
    await collector.on_tick(rt)


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    """Register every stream agent, timer and start-up task of the autopilot on ``app``."""
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
    record_handlers: tuple[tuple[faust.TopicT, str, Handler, str], ...] = (
        (topics.policies, "policy_sync", policies.sync, policies.AGENT),
        (topics.ticks, "collector", _collector_tick, collector.AGENT),
        (topics.metrics, "aggregator", aggregator.ingest, aggregator.AGENT),
        (executor_input, "executor", executor.accept, executor.AGENT),
        (topics.executions, "ledger", ledger.record, ledger.AGENT),
        (topics.verifications, "ledger_verifications", ledger.record_verification, ledger.AGENT),
        (topics.cycles, "verifier_forward", verifier.forward, verifier.AGENT),
        (topics.verification_queue, "verifier", verifier.handle, verifier.AGENT),
        (topics.cycles, "reporter", reporter.handle, reporter.AGENT),
    )
    for topic, name, handler, agent in record_handlers:
        per_event(app, topic, f"kubefinops.agents.{name}", handler, rt, agent)

    # From the app's start: a stalled first recovery is the one that matters (engine/app.py)
    stall = rt.settings.recovery_stall_seconds
    watch = RecoveryWatch(after=stall, unhealthy_after=rt.settings.recovery_stall_unhealthy_seconds)
    rt.liveness = watch
    app.add_dependency(RecoveryWatchService(app, watch, interval=min(15.0, max(0.5, stall / 2))))

    @app.task
    async def reconcile_on_start() -> None:
        await wait_for_assignment(app, timeout=RECONCILE_WAIT_SECONDS)
        await policies.reconcile_until_done(rt)

    @app.timer(interval=rt.settings.collect_interval_seconds, on_leader=True)
    async def tick() -> None:
        await collector.request_cycle(rt, "timer")

    @app.task
    async def first_tick() -> None:
        # Collect right after start instead of one interval later.
        if await wait_for_assignment(app) and rt.settings.collect_on_start and app.is_leader():
            await collector.request_cycle(rt, "start")

    # No agent reads kubefinops.recommendations: the gate decides each recommendation in the
    # aggregator's pass (agents/gate.py).

    @app.timer(interval=max(0.5, rt.settings.apply_batch_seconds / 3))
    async def apply_tick() -> None:
        # Tables are written only inside their stream: wake it while cycles wait to be applied.
        if executor.has_pending(rt):
            await executor.tick(rt)

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

    if rt.settings.malloc_trim_interval_seconds > 0:

        @app.timer(interval=rt.settings.malloc_trim_interval_seconds)
        async def memory_trim() -> None:
            # glibc keeps freed blocks mapped: without this RSS stays at the last burst's peak.
            # In a thread: a trim after a burst walks the whole heap (~150 ms for ~500 MiB
            # released), and ctypes releases the GIL meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, memory.trim)

        # and once the tables are recovered: the replayed changelog's older versions are garbage
        app.on_rebalance_complete.connect(cast(Any, memory.after_signal))

    # a rebalance may have moved partitions to and from another worker: publish each
    # workload's recommendation once more rather than trust what this process sent before
    app.on_partitions_assigned.connect(cast(Any, rt.published.clear))

    if rt.settings.gc_freeze_when_ready:

        @app.task
        async def freeze_heap() -> None:
            # once, when first ready: what is alive then lives as long as the process
            if await wait_for_assignment(app, timeout=3600.0):
                frozen = memory.freeze_heap()
                log.info("garbage collector: %d objects alive at start frozen", frozen)

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
    history.AGENT,
)
