"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

Co-partitioned with the recommendations: the workload spec and the last applied change are read
from local tables.  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git
executor is its single consumer) and, with the recommendation, to the MongoDB history's outbox
(:mod:`agents.history`): a produce per record, never a wait on MongoDB.

Records are handled in batches (the wiring takes up to ``GATE_BATCH`` arriving within
``GATE_WITHIN`` seconds): each decision is sent as soon as it is made; each record is decided
under the guard (:mod:`agents.guard`), so one that fails is dead-lettered and the rest of the
batch goes on.  The history writer stores the outbox in bulk writes (one per collection and
batch), which was what limited a 10,000-workload cycle when the gate wrote MongoDB itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from pydantic import BaseModel

from agents import history
from agents.guard import guarded
from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, HistoryKind, Recommendation
from engine.core.verification import sync_hold
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"


GATE_BATCH = 500
GATE_WITHIN = 0.05  # seconds: the most a lone record waits for company


async def archive(rt: Runtime, pairs: Sequence[tuple[Recommendation, Decision]]) -> None:
    """The MongoDB history, through the outbox (:mod:`agents.history`): the batch's records in
    as few messages as fit (not two per workload), never a wait on MongoDB — an outage neither
    slows the gate nor loses a record."""
    items: list[tuple[HistoryKind, BaseModel, str]] = []
    for rec, decision in pairs:
        items.append(("recommendations", rec, rec.workload_id))
        items.append(("decisions", decision, decision.workload_id))
    await history.record_many(rt, items)


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
    topic = rt.settings.topic("recommendations")
    for key, raw in records:
        made: list[tuple[Recommendation, Decision] | None] = []
        await guarded(
            rt,
            partial(_decide_into, made, rt, key, raw),
            agent=AGENT,
            topic=topic,
            key=key,
            raw=raw,
        )
        pair = made[0] if made else None
        out.append(None if pair is None else pair[1])
        if pair is not None:
            pairs.append(pair)
    await archive(rt, pairs)
    RECORDS_PROCESSED.labels(AGENT).inc(len(pairs))
    return out


async def _decide_into(
    into: list[tuple[Recommendation, Decision] | None],
    rt: Runtime,
    key: bytes | None,
    raw: bytes | None,
) -> None:
    into.append(await decide_one(rt, key, raw))


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
