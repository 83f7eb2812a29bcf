"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

Co-partitioned with the recommendations: the workload spec and the last applied change are read
from local tables.  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git
executor is its single consumer) and, with the recommendation, to MongoDB for history.

Records are handled in batches (the wiring takes up to ``GATE_BATCH`` arriving within
``GATE_WITHIN`` seconds): each decision is sent as soon as it is made, and the batch's history
goes to MongoDB in one bulk write per collection when the store can (``save_many``) — one await
per batch instead of two per workload, which was ~9 ms each and what limited a 10,000-workload
cycle to ~50 decisions per second.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, Recommendation
from engine.core.verification import sync_hold
from engine.errors import KubeFinOpsError
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"


GATE_BATCH = 500
GATE_WITHIN = 0.05  # seconds: the most a lone record waits for company


async def archive(rt: Runtime, pairs: Sequence[tuple[Recommendation, Decision]]) -> None:
    """Best effort: MongoDB history must not stop the loop. Failures are logged and counted."""
    store = rt.services.history
    if store is None or not pairs:
        return
    try:
        save_many = getattr(store, "save_many", None)
        if save_many is not None:  # one bulk write per collection
            await save_many("recommendations", [r for r, _ in pairs])
            await save_many("decisions", [d for _, d in pairs])
            return
        for rec, decision in pairs:
            await store.save_recommendation(rec)
            await store.save_decision(decision)
    except KubeFinOpsError as exc:
        log.warning("%d decisions not archived in MongoDB: %s", len(pairs), exc)


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    """One ``kubefinops.recommendations`` record -> its decision (or a dead letter)."""
    (decision,) = await handle_batch(rt, [(key, raw)])
    return decision


async def handle_batch(
    rt: Runtime, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[Decision | None]:
    """Decide every record (each decision sent at once), then archive the batch in bulk."""
    out: list[Decision | None] = []
    pairs: list[tuple[Recommendation, Decision]] = []
    for key, raw in records:
        pair = await decide_one(rt, key, raw)
        out.append(None if pair is None else pair[1])
        if pair is not None:
            pairs.append(pair)
    await archive(rt, pairs)
    RECORDS_PROCESSED.labels(AGENT).inc(len(pairs))
    return out


async def decide_one(
    rt: Runtime, key: bytes | None, raw: bytes | None
) -> tuple[Recommendation, Decision] | None:
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
    return rec, decision
