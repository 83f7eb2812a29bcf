"""Verifier: every pushed change is watched until it is proven healthy or undone.

See docs/verification.md.  The one-partition internal topic ``kubefinops.verification-queue``
carries two kinds of record: a ``start`` for every workload change an apply cycle pushed
(forwarded from ``kubefinops.cycles`` by :func:`forward`) and a ``tick`` every
``verification_interval_seconds`` (a leader timer).  The watches live in the one-partition
``verifications`` table (a Kafka changelog, keyed by workload id): a worker killed during a
watch resumes it after restart, a redelivered ``start`` changes nothing, and a revert already on
the remote is never made twice (the writer finds its ``Kubefinops-Verification`` trailer).

Every transition goes out as a record on ``kubefinops.verifications`` (keyed by workload id; the
ledger turns it into the workload's penalty or hold), into MongoDB history and the metrics.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from agents import history
from agents.policies import current_policies
from agents.runtime import Runtime, park, parse_or_park
from engine.adapters.verification import check, settle
from engine.core.model import CycleSummary, Decision, Execution, Mode, Wire
from engine.core.verification import (
    Phase,
    Verification,
    VerificationParams,
    due,
    postponed,
    resumed,
    start,
    superseded,
)
from engine.errors import RetryableError
from engine.metrics import (
    CYCLE_FAILURES,
    RECORDS_PROCESSED,
    REVERTS,
    VERIFICATIONS,
    VERIFICATIONS_WATCHING,
)

log = logging.getLogger("kubefinops.verifier")
AGENT = "verifier"
APPLIED = ("pushed", "committed")


class VerifyStart(Wire):
    type: Literal["start"] = "start"
    decision: Decision
    execution: Execution


class VerifyTick(Wire):
    type: Literal["tick"] = "tick"
    at: float
    by: str = "timer"


def _kind(value: Any) -> str:
    return str(value.get("type", "") if isinstance(value, dict) else getattr(value, "type", ""))


QueueRecord = VerifyStart | VerifyTick
_QUEUE: TypeAdapter[QueueRecord] = TypeAdapter(
    Annotated[
        Annotated[VerifyStart, Tag("start")] | Annotated[VerifyTick, Tag("tick")],
        Discriminator(_kind),
    ]
)


# --- cycles -> queue ------------------------------------------------------------------------------
async def forward(rt: Runtime, key: bytes | None, raw: bytes | None) -> int:
    """One ``kubefinops.cycles`` record -> a ``start`` per workload change it pushed."""
    if not rt.settings.verification_enabled or rt.services.telemetry is None:
        return 0  # nothing to watch with (the demo has no cluster telemetry)
    topic = rt.settings.topic("cycles")
    summary = await parse_or_park(rt, CycleSummary, raw, key=key, agent=AGENT, topic=topic)
    if summary is None or summary.execution.outcome not in APPLIED:
        return 0
    execution = summary.execution
    by_id = {d.id: d for d in summary.decisions}
    sent = 0
    for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
        decision = by_id.get(did)
        if decision is None:
            continue
        one = execution.model_copy(update={"workload_ids": [wid], "decision_ids": [did]})
        record = VerifyStart(decision=decision, execution=one)
        await rt.topics.verification_queue.send(
            key=wid.encode(), value=record.model_dump_json().encode()
        )
        sent += 1
    return sent


async def request_tick(rt: Runtime, by: str = "timer") -> None:
    record = VerifyTick(at=rt.clock(), by=by)
    await rt.topics.verification_queue.send(key=b"tick", value=record.model_dump_json().encode())


# --- the queue --------------------------------------------------------------------------------
async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> list[Verification]:
    """One queue record: a change to start watching, or a tick checking every watch."""
    try:
        record = _QUEUE.validate_json(raw or b"")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        reason = f"VerifyRecord.{where}: {first['msg']}"
        topic = rt.settings.topic("verification-queue")
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return []
    RECORDS_PROCESSED.labels(AGENT).inc()
    now = rt.clock()
    if isinstance(record, VerifyStart):
        return await begin(rt, record, now)
    if now - record.at > 2 * rt.settings.verification_interval_seconds:
        return []  # queued behind a slow check (or replayed after a restart): a newer tick follows
    return await check_all(rt, now)


def _store(rt: Runtime, v: Verification) -> None:
    rt.tables.verifications[v.workload_id] = v


def params_for(rt: Runtime, policy_id: str | None) -> VerificationParams:
    base = rt.settings.verification_defaults
    for policy in current_policies(rt):
        if policy.id == policy_id:
            return policy.verification.resolve(base)
    return base


def autopilot(rt: Runtime, v: Verification) -> bool:
    """Revert through Git only while the change's policy is (still) in autopilot mode.  A policy
    not in the table (yet: a worker that just started, or deleted since) leaves the mode the
    change was decided under — never a wrong "recommend only" while the table recovers."""
    for policy in current_policies(rt):
        if policy.id == v.policy_id:
            return policy.mode is Mode.AUTOPILOT
    return v.mode is Mode.AUTOPILOT


async def begin(rt: Runtime, record: VerifyStart, now: float) -> list[Verification]:
    v = start(record.decision, record.execution, params_for(rt, record.decision.policy_id))
    if v is None:
        return []
    existing = rt.tables.verifications.get(v.workload_id)
    if existing is not None and existing.id == v.id:
        return []  # redelivered: the watch already exists (and may be far along)
    out: list[Verification] = []
    if existing is not None and not existing.finished:
        ended = superseded(existing, v.commit_sha[:12], now)
        await publish(rt, ended)
        out.append(ended)
    _store(rt, v)
    await publish(rt, v)
    out.append(v)
    return out


def this_ticks_share(
    rt: Runtime, due_watches: list[tuple[str, Verification]]
) -> list[tuple[str, Verification]]:
    """The due watches one tick checks: all of them, or the ``verification_max_checks_per_tick``
    checked longest ago (``checked_at``, stored with the watch: the order survives a restart) —
    so after a cycle of thousands of changes every watch is still checked, less often, and a
    tick asks Prometheus a bounded number of queries (2-4 a watch) instead of a round per
    change."""
    budget = rt.settings.verification_max_checks_per_tick
    if budget <= 0 or len(due_watches) <= budget:
        return due_watches
    return sorted(due_watches, key=lambda w: (w[1].checked_at or 0.0, w[0]))[:budget]


async def check_all(rt: Runtime, now: float) -> list[Verification]:
    """Check every unfinished watch that is due; make the reverts that are due.

    A dependency down (Prometheus, or Git for a revert) never holds the queue: the watch is
    re-scheduled in the durable table with backoff (:func:`~engine.core.verification.postponed`)
    and the tick is acknowledged.  One Prometheus failure postpones every other watch of the tick
    too, without asking it again (each failed check costs the client's retries).  Nothing is
    lost: the state is in the table, and checks resume at the normal pace once it answers."""
    telemetry = rt.services.telemetry
    reverter = rt.services.git
    interval = rt.settings.verification_interval_seconds
    moved: list[Verification] = []
    down: str | None = None  # why Prometheus failed in this tick
    failed_at = 0.0
    postponed_ids: list[str] = []
    watches = sorted((wid, v) for wid, v in rt.tables.verifications.items() if not v.finished)
    watching = len(watches)
    for wid, v in this_ticks_share(rt, [(wid, v) for wid, v in watches if due(v, now)]):
        new, failure = v, down
        if failure is None and telemetry is not None:
            try:
                new = await check(telemetry, v, now, autopilot=autopilot(rt, v))
            except RetryableError as exc:
                failure = down = f"Prometheus: {exc}"
        if failure is None and new.revert_pending:
            _store(rt, new)  # the regression is recorded before the revert is attempted
            try:
                new = await settle(new, reverter, now)
            except RetryableError as exc:
                failure = f"Git: {exc}"
        if failure is not None:
            if not postponed_ids or failure != down:
                log.warning("verification of %s postponed: %s", wid, failure)
            CYCLE_FAILURES.labels(AGENT, "prometheus-or-git").inc()
            failed_at = failed_at or rt.clock()  # the backoff starts after the failed attempt
            new = postponed(new, failed_at, interval)
            postponed_ids.append(wid)
        else:
            new = resumed(new)
        if new != v:
            _store(rt, new)
        if new.phase is not v.phase or new.revert_pending != v.revert_pending:
            await publish(rt, new)
            moved.append(new)
        watching -= new.finished
    if len(postponed_ids) > 1:
        log.warning("%d verifications postponed with backoff", len(postponed_ids))
    VERIFICATIONS_WATCHING.set(watching)
    return moved


async def publish(rt: Runtime, v: Verification) -> None:
    """A transition: the record, the metrics, MongoDB history (via the outbox), a log line."""
    await rt.topics.verifications.send(
        key=v.workload_id.encode(), value=v.model_dump_json().encode()
    )
    if v.phase is not Phase.PENDING:
        cause = (v.cause or "") if v.phase in (Phase.REGRESSED, Phase.REVERTED) else ""
        VERIFICATIONS.labels(outcome=v.phase.value, cause=cause).inc()
    if v.phase is Phase.REVERTED:
        REVERTS.labels(outcome="committed").inc()
    elif v.phase is Phase.REGRESSED and not v.revert_pending:
        recommended = "revert recommended" in v.detail
        REVERTS.labels(outcome="recommended" if recommended else "failed").inc()
    # Through the history outbox (agents/history.py): never waits on MongoDB, never lost; keyed by
    # workload, so a change's states are stored in the order they happened.
    await history.record(rt, "verifications", v, v.workload_id)
    log.info(
        "%s %s: %s%s",
        v.workload_id,
        v.phase.value,
        v.detail,
        f" (revert {v.revert_sha})" if v.revert_sha else "",
    )
