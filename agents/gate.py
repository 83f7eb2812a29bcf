"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

Co-partitioned with the recommendations: the workload spec and the last applied change are read
from local tables.  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git
executor is its single consumer) and, with the recommendation, to MongoDB for history.

Records are handled in batches (up to ``GATE_BATCH`` arriving within ``GATE_WITHIN`` seconds):
each decision is sent as soon as it is made, and the batch's history goes to MongoDB in one bulk
write per collection — one await per batch instead of two per workload, which was ~9 ms each
and what limited a 10,000-workload cycle to ~50 decisions per second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, Recommendation, WorkloadSpec
from engine.errors import KubeFinOpsError
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"


GATE_BATCH = 500
GATE_WITHIN = 0.05  # seconds: the most a lone record waits for company


async def archive(rt: Runtime, pairs: list[tuple[Recommendation, Decision]]) -> None:
    """Best effort: MongoDB history must not stop the loop. Failures are logged and counted.

    One bulk write per collection for the whole batch when the store can (``save_many``).
    """
    store = rt.service("records")
    if store is None or not pairs:
        return
    try:
        if hasattr(store, "save_many"):
            await store.save_many("recommendations", [r.model_dump(mode="json") for r, _ in pairs])
            await store.save_many("decisions", [d.model_dump(mode="json") for _, d in pairs])
            return
        for rec, decision in pairs:
            await store.save_recommendation(rec.model_dump(mode="json"))
            await store.save_decision(decision.model_dump(mode="json"))
    except KubeFinOpsError as exc:
        log.warning("%d decisions not archived in MongoDB: %s", len(pairs), exc)


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    """One record -> its decision (sent and archived), or None once dead-lettered."""
    (decision,) = await handle_batch(rt, [(key, raw)])
    return decision


async def handle_batch(
    rt: Runtime, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[Decision | None]:
    """Decide every record (sending each decision at once), then archive the batch."""
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
    decision = decide(
        rec,
        spec,
        policy_for(rt, spec),
        last_applied_at=last.get("applied_at"),
        last_applied_id=last.get("decision_id"),
        now=time.time(),
        settings=rt.settings,
    )
    decision = decision.model_copy(update={"cycle": rec.cycle})
    DECISIONS.labels(decision.action.value, decision.guardrail).inc()
    await rt.topics.decisions.send(
        key=rec.workload_id.encode(), value=decision.model_dump_json().encode()
    )
    return rec, decision


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.recommendations, name="kubefinops.agents.gate")
    async def gate(stream: Any) -> None:
        async for events in stream.take_events(GATE_BATCH, within=GATE_WITHIN):
            await handle_batch(rt, [(e.key, e.value) for e in events])
