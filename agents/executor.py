"""Executor: the single Git writer.  Decisions -> one commit per cycle in smarthealth-gitops.

Consumes the one-partition ``kubefinops.decisions`` topic, so exactly one worker writes to Git at
a time.  Decisions arriving within ``apply_batch_seconds`` form one cycle; its id is derived from
the decision ids, so a replay of the same decisions is the same cycle and the writer's
idempotency (cycle trailer on the remote, identical patch files) makes no second commit.

A retryable failure (remote down, push rejected too often) blocks this stream with capped
backoff: the decisions stay in Kafka uncommitted, nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from agents.runtime import Runtime, parse_or_park
from engine.core.cycles import split_cycle
from engine.core.model import Action, CycleSummary, Decision, Execution
from engine.errors import PermanentError, RetryableError
from engine.metrics import CYCLE_DURATION, CYCLE_FAILURES, RECORDS_PROCESSED, SAVINGS_REALISED

log = logging.getLogger("kubefinops.executor")
AGENT = "executor"


def cycle_id(decisions: list[Decision]) -> str:
    digest = hashlib.sha256("\n".join(sorted(d.id for d in decisions)).encode()).hexdigest()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(min(d.decided_at for d in decisions)))
    return f"{stamp}-{digest[:10]}"


async def execute(rt: Runtime, decisions: list[Decision]) -> Execution:
    cycle = cycle_id(decisions)
    applies = [d for d in decisions if d.action is Action.APPLY]
    now = time.time()
    if not applies:
        return Execution(
            id=cycle,
            cycle=cycle,
            workload_ids=[],
            decision_ids=[],
            outcome="noop",
            detail="no apply decisions",
            executed_at=now,
        )
    writer = rt.service("gitops")
    if writer is None:
        return Execution(
            id=cycle,
            cycle=cycle,
            workload_ids=[d.workload_id for d in applies],
            decision_ids=[d.id for d in applies],
            outcome="held",
            detail="no Git remote configured (KUBEFINOPS_GIT_REMOTE_URL)",
            executed_at=now,
        )
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            result: Execution = await writer.apply_cycle(cycle, applies)
            CYCLE_DURATION.labels(AGENT).observe(time.monotonic() - started)
            return result
        except RetryableError as exc:
            CYCLE_FAILURES.labels(AGENT, "git").inc()
            log.warning("cycle %s: Git unavailable (%s); retrying in %.0fs", cycle, exc, delay)
        except PermanentError as exc:
            CYCLE_FAILURES.labels(AGENT, "git").inc()
            return Execution(
                id=cycle,
                cycle=cycle,
                workload_ids=[d.workload_id for d in applies],
                decision_ids=[d.id for d in applies],
                outcome="failed",
                detail=str(exc),
                executed_at=time.time(),
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 300.0)


async def publish(rt: Runtime, decisions: list[Decision], execution: Execution) -> None:
    by_id = {d.id: d for d in decisions}
    for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
        one = execution.model_copy(update={"workload_ids": [wid], "decision_ids": [did]})
        await rt.topics.executions.send(key=wid.encode(), value=one.model_dump_json().encode())
        if execution.outcome in ("pushed", "committed") and did in by_id:
            SAVINGS_REALISED.inc(max(0.0, -by_id[did].savings.monthly_delta))
    policies = {d.policy_id: d.policy_version or 0 for d in decisions if d.policy_id}
    summary = CycleSummary(
        cycle=execution.cycle, decisions=decisions, execution=execution, policies=policies
    )
    # In parts: a cycle of thousands of decisions is far over Kafka's message limit.
    for part in split_cycle(summary):
        await rt.topics.cycles.send(
            key=execution.cycle.encode(), value=part.model_dump_json().encode()
        )


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.decisions, name="kubefinops.agents.executor")
    async def executor(stream: Any) -> None:
        async for batch in stream.take(1000, within=rt.settings.apply_batch_seconds):
            decisions: list[Decision] = []
            for raw in batch:
                decision = await parse_or_park(
                    rt, Decision, raw, key=None, agent=AGENT, topic=rt.settings.topic("decisions")
                )
                if decision is not None:
                    decisions.append(decision)
            if not decisions:
                continue
            execution = await execute(rt, decisions)
            log.info(
                "cycle %s: %s (%d decisions, %d applied) %s",
                execution.cycle,
                execution.outcome,
                len(decisions),
                len(execution.workload_ids),
                execution.commit_sha or "",
            )
            await publish(rt, decisions, execution)
            RECORDS_PROCESSED.labels(AGENT).inc(len(decisions))
