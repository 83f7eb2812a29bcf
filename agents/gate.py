"""Gate: recommendation -> decision (apply / hold / skip), naming the guardrail that decided.

In the worker the gate runs in the aggregator's pass: the recommender's recommendation is
decided here (:func:`decide_made`) as soon as it is made, not read back from
``kubefinops.recommendations``, which is an output for operators (``kubefinops tail``, MongoDB,
the web API) that no agent consumes.  The topic hop cost a produce, a fetch, a Faust event
and a JSON parse per workload, and put most decisions of a burst behind the aggregator's whole
backlog (docs/benchmarks.md, "The gate in the aggregator's pass").  The workload spec and the last
applied change are read from the aggregator's own partition's tables (co-partitioned by workload
id).  At the end of the metrics record (a bundle of up to 100 workloads' markers, or one) the
decisions go to the one-partition ``kubefinops.decisions`` topic in bundles (:func:`publish`;
the Git executor is its single consumer) and, with their recommendations, to the MongoDB
history's outbox (:mod:`agents.history`): a produce per batch of records, never a wait on
MongoDB.

Each recommendation is decided under its own guard (:mod:`agents.guard`): one the gate fails on
is dead-lettered as a recommendation (the gate's agent name, the recommendations topic), the
marker that made it is not, and the rest of a metrics bundle goes on.  The history writer
stores the outbox in bulk writes (one per collection and batch), which was what limited a
10,000-workload cycle when the gate wrote MongoDB itself.  :func:`handle_batch` decides
recommendation *records* (bytes), parsed or dead-lettered: the same decision, for tests, the
benchmarks and a replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

from agents import history
from agents.guard import failure_reason, guarded
from agents.policies import policy_for
from agents.runtime import Runtime, park, parse_or_park
from engine.core.bounds import MAX_DECISION_BUNDLE_BYTES
from engine.core.bundles import bundle, groups
from engine.core.guardrails import decide
from engine.core.model import Decision, HistoryKind, Recommendation
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


async def publish(rt: Runtime, made: Sequence[Decided]) -> list[Decided]:
    """Send the decisions made on ``kubefinops.decisions``: in bundles (one record per up to
    ``MAX_BUNDLE_RECORDS`` decisions within ``MAX_DECISION_BUNDLE_BYTES``, ~24 decisions; one
    decision alone as itself),
    which the executor, their one consumer, reads member by member.  A decision per record was a
    produce, a fetch, a Faust event and two executor table writes per workload.  A bundle the
    producer refuses is sent again one decision at a time, each under its own guard (what fails
    then is dead-lettered as its recommendation, as when deciding failed); returns what was
    sent, for :func:`archive`."""
    sent: list[Decided] = []
    for group in groups([len(d.decision_raw) for d in made], max_bytes=MAX_DECISION_BUNDLE_BYTES):
        members = [made[i] for i in group]
        first = members[0].decision.workload_id.encode()
        if len(members) == 1:
            await _send_alone(rt, members[0], sent)
            continue
        try:
            await rt.topics.decisions.send(key=first, value=bundle(d.decision_raw for d in members))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "a bundle of %d decisions was refused (%s): sending them one by one",
                len(members),
                failure_reason(exc),
            )
            for d in members:
                await _send_alone(rt, d, sent)
        else:
            sent += members
    return sent


async def _send_alone(rt: Runtime, d: Decided, sent: list[Decided]) -> None:
    key = d.decision.workload_id.encode()

    async def send() -> None:
        await rt.topics.decisions.send(key=key, value=d.decision_raw)
        sent.append(d)

    await guarded(
        rt,
        send,
        agent=AGENT,
        topic=rt.settings.topic("recommendations"),
        key=key,
        raw=d.rec_raw,
    )


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> Decision | None:
    """One ``kubefinops.recommendations`` record -> its decision (or a dead letter)."""
    (decision,) = await handle_batch(rt, [(key, raw)])
    return decision


async def handle_batch(
    rt: Runtime, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[Decision | None]:
    """Decide every recommendation record, then publish the decisions (:func:`publish`) and
    archive them in bulk; a record that is not a recommendation, or that the gate fails on, is
    dead-lettered and the rest go on.  Returns each record's decision (None: dead-lettered)."""
    made: list[Decided | None] = []
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
        made.append(one[0] if one else None)
    sent = await publish(rt, [d for d in made if d is not None])
    ok = {id(d) for d in sent}
    await archive(rt, sent)
    RECORDS_PROCESSED.labels(AGENT).inc(len(sent))
    return [d.decision if d is not None and id(d) in ok else None for d in made]


async def _parse_and_decide(
    into: list[Decided], rt: Runtime, key: bytes | None, raw: bytes | None
) -> None:
    topic = rt.settings.topic("recommendations")
    rec = await parse_or_park(rt, Recommendation, raw, key=key, agent=AGENT, topic=topic)
    if rec is not None:
        # the history stores the model as parsed (extra fields dropped), not the bytes read
        await _decide_into(into, rt, rec, rec.model_dump_json().encode(), key=key, raw=raw)


async def decide_made(rt: Runtime, rec: Recommendation, raw: bytes, into: list[Decided]) -> None:
    """The recommender's ``rec`` (as bytes: ``raw``) decided in the same pass, under its own
    guard as if the gate had read it from the topic; what is decided is appended to ``into``
    for :func:`publish` and :func:`archive`."""
    key = rec.workload_id.encode()
    before = len(into)
    await guarded(
        rt,
        partial(_decide_into, into, rt, rec, raw, key=key, raw=raw),
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
) -> None:
    """``rec`` -> its decision, appended to ``into`` (sent by :func:`publish`); ``key`` and
    ``raw`` are what a dead letter carries (an unknown workload)."""
    topic = rt.settings.topic("recommendations")
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
    decision = decision.model_copy(update={"collection_cycle": rec.collection_cycle})
    DECISIONS.labels(decision.action.value, decision.guardrail).inc()
    into.append(Decided(rec, rec_raw, decision, decision.model_dump_json().encode()))
