"""Ledger: executions -> ``last-action`` table (what was applied, when), for cooldown and
idempotency in the gate.  Co-partitioned with recommendations (keyed by workload id)."""

from __future__ import annotations

from typing import Any

from agents.runtime import Runtime, parse_or_park
from engine.core.model import Execution
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
                    rt.tables.last_action[wid] = {
                        "applied_at": execution.executed_at,
                        "decision_id": did,
                        "commit_sha": execution.commit_sha,
                        "cycle": execution.cycle,
                    }
            RECORDS_PROCESSED.labels(AGENT).inc()
