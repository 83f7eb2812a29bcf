"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

Co-partitioned with the recommendations: the workload spec and the last applied change are read
from local tables.  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git
executor is its single consumer) and, with the recommendation, to MongoDB for history.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, Recommendation, WorkloadSpec
from engine.core.verification import sync_hold
from engine.errors import KubeFinOpsError
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"


async def archive(rt: Runtime, rec: Recommendation, decision: Decision) -> None:
    """Best effort: MongoDB history must not stop the loop. Failures are logged and counted."""
    store = rt.service("records")
    if store is None:
        return
    try:
        await store.save_recommendation(rec.model_dump(mode="json"))
        await store.save_decision(decision.model_dump(mode="json"))
    except KubeFinOpsError as exc:
        log.warning("decision %s not archived in MongoDB: %s", decision.id, exc)


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    rec = await parse_or_park(
        rt, Recommendation, raw, key=key, agent=AGENT, topic=rt.settings.topic("recommendations")
    )
    if rec is None:
        return None
    stored = rt.tables.workloads.get(rec.workload_id)
    if stored is None:
        await park(
            rt,
            topic=rt.settings.topic("recommendations"),
            key=key,
            raw=raw,
            reason="unknown workload: no spec recorded",
            agent=AGENT,
        )
        return None
    spec = WorkloadSpec.model_validate(stored)
    last: dict[str, Any] = rt.tables.last_action.get(rec.workload_id) or {}
    now = time.time()
    decision = decide(
        rec,
        spec,
        policy_for(rt, spec),
        last_applied_at=last.get("applied_at"),
        last_applied_id=last.get("decision_id"),
        now=now,
        settings=rt.settings,
        penalty_until=last.get("penalty_until"),
        sync_hold=sync_hold(last, spec, now),
    )
    decision = decision.model_copy(update={"cycle": rec.cycle})
    DECISIONS.labels(decision.action.value, decision.guardrail).inc()
    await rt.topics.decisions.send(
        key=rec.workload_id.encode(), value=decision.model_dump_json().encode()
    )
    await archive(rt, rec, decision)
    RECORDS_PROCESSED.labels(AGENT).inc()
    return decision


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.recommendations, name="kubefinops.agents.gate")
    async def gate(stream: Any) -> None:
        async for event in stream.events():
            await handle(rt, event.key, event.value)
