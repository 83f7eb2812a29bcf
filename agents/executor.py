"""Executor: the single Git writer.  Decisions -> one commit per apply cycle in smarthealth-gitops.

Consumes the one-partition ``kubefinops.decisions`` topic, so exactly one worker writes to Git at
a time.  Decisions arriving within ``apply_batch_seconds`` form one *apply cycle*; its id is
derived from the decision ids, so a replay of the same decisions is the same cycle and the
writer's idempotency (cycle trailer on the remote, identical patch files) makes no second commit.

A retryable failure (remote down, push rejected too often) blocks this stream with capped
backoff: the decisions stay in Kafka uncommitted, nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

from agents.runtime import Runtime, parse_or_park
from engine.backoff import retry_forever
from engine.core.cycles import split_cycle
from engine.core.model import Action, CycleSummary, Decision, Execution, Outcome
from engine.errors import PermanentError
from engine.metrics import CYCLE_DURATION, CYCLE_FAILURES, RECORDS_PROCESSED, SAVINGS_REALISED

log = logging.getLogger("kubefinops.executor")
AGENT = "executor"
NO_REMOTE = "no Git remote configured (KUBEFINOPS_GIT_REMOTE_URL)"


def apply_cycle_id(decisions: Sequence[Decision]) -> str:
    """The apply cycle's id: first decision time + a hash of the decision ids (replay-stable)."""
    digest = hashlib.sha256("\n".join(sorted(d.id for d in decisions)).encode()).hexdigest()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(min(d.decided_at for d in decisions)))
    return f"{stamp}-{digest[:10]}"


def _local(
    cycle: str,
    applies: Sequence[Decision],
    outcome: Outcome,
    detail: str,
    at: float,
    *,
    held: bool = False,
) -> Execution:
    """An execution decided here, without the writer (nothing to apply, no remote, refused)."""
    why = {d.workload_id: detail for d in applies} if held else {}
    return Execution.of(cycle, applies, outcome, executed_at=at, detail=detail, held=why)


async def execute(rt: Runtime, decisions: Sequence[Decision]) -> Execution:
    cycle = apply_cycle_id(decisions)
    applies = [d for d in decisions if d.action is Action.APPLY]
    if not applies:
        return _local(cycle, [], "noop", "no apply decisions", rt.clock())
    writer = rt.services.git
    if writer is None:
        return _local(cycle, applies, "held", NO_REMOTE, rt.clock(), held=True)

    def count_failure(exc: BaseException, delay: float) -> None:
        CYCLE_FAILURES.labels(AGENT, "git").inc()

    started = time.monotonic()
    try:
        execution = await retry_forever(
            lambda: writer.apply_cycle(cycle, applies),
            what=f"cycle {cycle}: Git unavailable",
            first=rt.retry_first_seconds,
            on_retry=count_failure,
        )
    except PermanentError as exc:
        CYCLE_FAILURES.labels(AGENT, "git").inc()
        return _local(cycle, applies, "failed", str(exc), rt.clock())
    CYCLE_DURATION.labels(AGENT).observe(time.monotonic() - started)
    return execution


async def publish(rt: Runtime, decisions: Sequence[Decision], execution: Execution) -> None:
    """One execution record per applied workload, and the cycle summary for the reporter."""
    by_id = {d.id: d for d in decisions}
    for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
        one = execution.model_copy(update={"workload_ids": [wid], "decision_ids": [did]})
        await rt.topics.executions.send(key=wid.encode(), value=one.model_dump_json().encode())
        if execution.applied and did in by_id:
            SAVINGS_REALISED.inc(max(0.0, -by_id[did].savings.monthly_delta))
    policies = {d.policy_id: d.policy_version or 0 for d in decisions if d.policy_id}
    summary = CycleSummary(
        cycle=execution.cycle, decisions=list(decisions), execution=execution, policies=policies
    )
    # In parts: a cycle of thousands of decisions is far over Kafka's message limit.
    for part in split_cycle(summary):
        await rt.topics.cycles.send(
            key=execution.cycle.encode(), value=part.model_dump_json().encode()
        )


async def handle_batch(rt: Runtime, raws: Sequence[bytes | None]) -> Execution | None:
    """The decisions of one apply cycle (a batch of ``kubefinops.decisions`` values)."""
    decisions: list[Decision] = []
    for raw in raws:
        decision = await parse_or_park(
            rt, Decision, raw, key=None, agent=AGENT, topic=rt.settings.topic("decisions")
        )
        if decision is not None:
            decisions.append(decision)
    if not decisions:
        return None
    execution = await execute(rt, decisions)
    log.info(
        "cycle %s: %s (%d decisions, %d applied, %d held) %s",
        execution.cycle,
        execution.outcome,
        len(decisions),
        len(execution.workload_ids),
        len(execution.held),
        execution.commit_sha or "",
    )
    await publish(rt, decisions, execution)
    RECORDS_PROCESSED.labels(AGENT).inc(len(decisions))
    return execution
