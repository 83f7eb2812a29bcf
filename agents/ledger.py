"""Ledger: executions -> ``last-action`` table (what was applied, when), for cooldown and
idempotency in the gate, and -> MongoDB history (realised savings, cycles and commit links of
the stats API); verification outcomes -> the penalty / not-synced hold in the same entry
(docs/verification.md).  Co-partitioned with recommendations (keyed by workload id)."""

from __future__ import annotations

import logging

from agents import history
from agents.runtime import Runtime, parse_or_park
from engine.core.model import Execution
from engine.core.verification import Verification, hold_state
from engine.metrics import RECORDS_PROCESSED
from tables.state import LastAction

log = logging.getLogger("kubefinops.ledger")
AGENT = "ledger"


async def archive(rt: Runtime, execution: Execution) -> None:
    """To the MongoDB history through its outbox (:mod:`agents.history`), like the gate's
    records: a produce, never a wait on MongoDB, and nothing lost while MongoDB is away."""
    await history.record(rt, "executions", execution, key=execution.id)


async def record(rt: Runtime, key: bytes | None, raw: bytes | None) -> Execution | None:
    """One ``kubefinops.executions`` record -> the last action of each workload it applied."""
    topic = rt.settings.topic("executions")
    execution = await parse_or_park(rt, Execution, raw, key=key, agent=AGENT, topic=topic)
    if execution is None:
        return None
    if execution.applied:
        for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
            previous = rt.tables.last_action.get(wid)
            rt.tables.last_action[wid] = LastAction(
                applied_at=execution.executed_at,
                decision_id=did,
                commit_sha=execution.commit_sha,
                cycle=execution.cycle,
                # a penalty outlives the changes made under it (increases still go through)
                penalty_until=previous.penalty_until if previous else None,
                penalty_cause=previous.penalty_cause if previous else None,
            )
    await archive(rt, execution)
    RECORDS_PROCESSED.labels(AGENT).inc()
    return execution


async def record_verification(
    rt: Runtime, key: bytes | None, raw: bytes | None
) -> Verification | None:
    """A verification outcome -> the workload's penalty or not-synced hold in its last action."""
    topic = rt.settings.topic("verifications")
    v = await parse_or_park(rt, Verification, raw, key=key, agent=AGENT, topic=topic)
    if v is None or v.watching:
        return v
    previous = rt.tables.last_action.get(v.workload_id) or LastAction()
    state = hold_state(v)
    if state.get("penalty_until") is None:  # a healthy change does not lift an older penalty
        state.pop("penalty_until", None)
        state.pop("penalty_cause", None)
    rt.tables.last_action[v.workload_id] = previous.model_copy(update=state)
    RECORDS_PROCESSED.labels(AGENT).inc()
    return v
