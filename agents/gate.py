"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

Co-partitioned with the recommendations: the workload spec and the last applied change are read
from local tables.  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git
executor is its single consumer) and, with the recommendation, to MongoDB for history.
"""

from __future__ import annotations

import logging

from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, Recommendation
from engine.core.verification import sync_hold
from engine.errors import KubeFinOpsError
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"


async def archive(rt: Runtime, rec: Recommendation, decision: Decision) -> None:
    """Best effort: MongoDB history must not stop the loop. Failures are logged and counted."""
    store = rt.services.history
    if store is None:
        return
    try:
        await store.save_recommendation(rec)
        await store.save_decision(decision)
    except KubeFinOpsError as exc:
        log.warning("decision %s not archived in MongoDB: %s", decision.id, exc)


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    """One ``kubefinops.recommendations`` record -> its decision (or a dead letter)."""
    topic = rt.settings.topic("recommendations")
    rec = await parse_or_park(rt, Recommendation, raw, key=key, agent=AGENT, topic=topic)
    if rec is None:
        return None
    spec = rt.tables.workloads.get(rec.workload_id)
    if spec is None:
        reason = "unknown workload: no spec recorded"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return None
    last = rt.tables.last_action.get(rec.workload_id)
    now = rt.clock()
    decision = decide(
        rec,
        spec,
        policy_for(rt, spec),
        last_applied_at=last.applied_at if last else None,
        last_applied_id=last.decision_id if last else None,
        now=now,
        prices=rt.prices,
        # verified apply: no decrease under a penalty, no change while the last one is not live
        penalty_until=last.penalty_until if last else None,
        sync_hold=sync_hold(last.model_dump(), spec, now) if last else None,
    )
    decision = decision.model_copy(update={"collection_cycle": rec.collection_cycle})
    DECISIONS.labels(decision.action.value, decision.guardrail).inc()
    await rt.topics.decisions.send(
        key=rec.workload_id.encode(), value=decision.model_dump_json().encode()
    )
    await archive(rt, rec, decision)
    RECORDS_PROCESSED.labels(AGENT).inc()
    return decision
