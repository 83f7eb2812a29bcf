"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

In the worker the gate runs in the aggregator's pass: the recommender's recommendation, as soon
as it is published on ``kubefinops.recommendations``, is decided here (:func:`decide_made`)
without being read back from that topic, which is an output for operators (``kubefinops tail``,
MongoDB, the web API) that no agent consumes.  The topic hop cost a produce, a fetch, a Faust event
and a JSON parse per workload, and put most decisions of a burst behind the aggregator's whole
backlog (docs/benchmarks.md, "The gate in the aggregator's pass").  The workload spec and the last
applied change are read from the aggregator's own partition's tables (co-partitioned by workload
id).  Decisions go to the one-partition ``kubefinops.decisions`` topic (the Git executor is its
single consumer) and, with the recommendation, to the MongoDB history's outbox
(:mod:`agents.history`): a produce per batch of records, never a wait on MongoDB.

Each recommendation is decided under its own guard (:mod:`agents.guard`): one the gate fails on
is dead-lettered as a recommendation (the gate's agent name, the recommendations topic), the
marker that made it is not, and the rest of a metrics bundle goes on.  The history writer
stores the outbox in bulk writes (one per collection and batch), which was what limited a
10,000-workload cycle when the gate wrote MongoDB itself.  :func:`handle_batch` decides
recommendation *records* (bytes), parsed or dead-lettered: the same decision, for tests, the
benchmarks and a replay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

from agents import history
from agents.guard import guarded
from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.guardrails import decide
from engine.core.model import Decision, HistoryKind, Recommendation, WorkloadSpec
from engine.core.verification import sync_hold
from engine.metrics import DECISIONS, RECORDS_PROCESSED

log = logging.getLogger("kubefinops.gate")
AGENT = "gate"

GATE_BATCH = 500  # recommendation records per archived batch, for callers of handle_batch


class Decided(NamedTuple):
    """A decision made, with the recommendation it decided and both as sent (JSON bytes): the
    history archives these bytes instead of serializing the models a second time."""

    rec: Recommendation
    rec_raw: bytes
    decision: Decision
    decision_raw: bytes


async def archive(rt: Runtime, made: Sequence[Decided]) -> None:
    """The MongoDB history, through the outbox (:mod:`agents.history`): the records in as few
    messages as fit (not two per workload), never a wait on MongoDB — an outage neither slows
    the gate nor loses a record."""
    items: list[tuple[HistoryKind, bytes, str]] = []
    for d in made:
        items.append(("recommendations", d.rec_raw, d.rec.workload_id))
        items.append(("decisions", d.decision_raw, d.decision.workload_id))
    await history.record_serialized(rt, items)


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    """One ``kubefinops.recommendations`` record -> its decision (or a dead letter)."""
    (decision,) = await handle_batch(rt, [(key, raw)])
    return decision


async def handle_batch(
    rt: Runtime, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[Decision | None]:
    """Decide every recommendation record (each decision sent at once), then archive the batch
    in bulk; a record that is not a recommendation, or that the gate fails on, is dead-lettered
    and the rest go on."""
    out: list[Decision | None] = []
    made: list[Decided] = []
    topic = rt.settings.topic("recommendations")
    for key, raw in records:
        one: list[Decided] = []
        await guarded(
            rt,
            partial(_parse_and_decide, one, rt, key, raw),
            agent=AGENT,
            topic=topic,
            key=key,
            raw=raw,
        )
        out.append(one[0].decision if one else None)
        made += one
    await archive(rt, made)
    RECORDS_PROCESSED.labels(AGENT).inc(len(made))
    return out


async def _parse_and_decide(
    into: list[Decided], rt: Runtime, key: bytes | None, raw: bytes | None
) -> None:
    topic = rt.settings.topic("recommendations")
    rec = await parse_or_park(rt, Recommendation, raw, key=key, agent=AGENT, topic=topic)
    if rec is not None:
        # the history stores the model as parsed (extra fields dropped), not the bytes read
        await _decide_into(into, rt, rec, rec.model_dump_json().encode(), key=key, raw=raw)


async def decide_made(
    rt: Runtime,
    rec: Recommendation,
    raw: bytes,
    into: list[Decided],
    *,
    spec: WorkloadSpec | None = None,
) -> None:
    """The recommender's ``rec`` (sent as ``raw``) decided in the same pass, under its own
    guard as if the gate had read it from the topic; what is decided is appended to ``into``
    for :func:`archive`.  ``spec``: the workload's as the recommender left it in the table (not
    read from the table again)."""
    key = rec.workload_id.encode()
    before = len(into)
    await guarded(
        rt,
        partial(_decide_into, into, rt, rec, raw, key=key, raw=raw, spec=spec),
        agent=AGENT,
        topic=rt.settings.topic("recommendations"),
        key=key,
        raw=raw,
    )
    RECORDS_PROCESSED.labels(AGENT).inc(len(into) - before)


async def _decide_into(
    into: list[Decided],
    rt: Runtime,
    rec: Recommendation,
    rec_raw: bytes,
    *,
    key: bytes | None,
    raw: bytes | None,
    spec: WorkloadSpec | None = None,
) -> None:
    """``rec`` -> its decision, sent and appended to ``into``; ``key`` and ``raw`` are what a
    dead letter carries (an unknown workload).  ``spec``: the workload's stored spec when the
    caller has it."""
    topic = rt.settings.topic("recommendations")
    if spec is None:
        spec = rt.tables.workloads.get(rec.workload_id)
    if spec is None:
        reason = "unknown workload: no spec recorded"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return
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
    DECISIONS.labels(decision.action.value, decision.guardrail).inc()
    decision_raw = decision.model_dump_json().encode()
    await rt.topics.decisions.send(key=rec.workload_id.encode(), value=decision_raw)
    into.append(Decided(rec, rec_raw, decision, decision_raw))
