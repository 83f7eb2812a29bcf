"""Ledger: executions -> ``last-action`` table (what was applied, when), for cooldown and
idempotency in the gate; verification outcomes -> the penalty / not-synced hold in the same
entry (docs/verification.md).  Co-partitioned with recommendations (keyed by workload id)."""

from __future__ import annotations

from typing import Any

from agents.runtime import Runtime, parse_or_park
from engine.core.model import Execution
from engine.core.verification import Verification, hold_state
from engine.metrics import RECORDS_PROCESSED

AGENT = "ledger"
APPLIED = {"pushed", "committed"}


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.executions, name="kubefinops.agents.ledger")
    async def ledger(stream: Any) -> None:
        async for event in stream.events():
            execution = await parse_or_park(
                rt,
                Execution,
                event.value,
                key=event.key,
                agent=AGENT,
                topic=rt.settings.topic("executions"),
            )
            if execution is None:
                continue
            if execution.outcome in APPLIED:
                for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
                    previous = rt.tables.last_action.get(wid) or {}
                    rt.tables.last_action[wid] = {
                        **{k: previous[k] for k in KEPT if k in previous},  # a penalty outlives
                        "applied_at": execution.executed_at,  # the changes made under it
                        "decision_id": did,
                        "commit_sha": execution.commit_sha,
                        "cycle": execution.cycle,
                    }
            RECORDS_PROCESSED.labels(AGENT).inc()

    @rt.app.agent(rt.topics.verifications, name="kubefinops.agents.ledger_verifications")
    async def ledger_verifications(stream: Any) -> None:
        async for event in stream.events():
            await record_verification(rt, event.key, event.value)


KEPT = ("penalty_until", "penalty_cause")


async def record_verification(
    rt: Runtime, key: bytes | None, raw: bytes | None
) -> Verification | None:
    """A verification outcome -> the workload's penalty or not-synced hold in its last action."""
    topic = rt.settings.topic("verifications")
    v = await parse_or_park(rt, Verification, raw, key=key, agent=AGENT, topic=topic)
    if v is None or v.watching:
        return v
    previous = dict(rt.tables.last_action.get(v.workload_id) or {})
    state = hold_state(v)
    if state.get("penalty_until") is None:  # a healthy change does not lift an older penalty
        state.pop("penalty_until", None)
        state.pop("penalty_cause", None)
    rt.tables.last_action[v.workload_id] = {**previous, **state}
    return v
