"""Executor: the single Git writer.  Decisions -> one commit per apply cycle in smarthealth-gitops.

Consumes the one-partition ``kubefinops.decisions`` topic, so exactly one worker writes to Git at
a time.  Decisions are grouped by their collection cycle (engine/core/apply_cycles.py), not by
arrival: the collector's manifest says how many to wait for, so one collection cycle makes one
commit whatever the arrival spread (a MongoDB outage, a rebalance); without a manifest a cycle is
applied once ``apply_batch_seconds`` pass without a new decision of it.  Pending decisions live in
changelog-backed tables until their cycle is applied.  The *apply cycle* id is derived from the
decision ids, so a replay of the same decisions is the same cycle and the writer's idempotency
(cycle trailer on the remote, identical patch files) makes no second commit.

A retryable failure (remote down, push rejected too often) blocks this stream with capped
backoff: the decisions stay in Kafka uncommitted, nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

from agents.guard import dead_letter
from agents.runtime import Runtime, parse_or_park
from engine.backoff import retry_forever
from engine.core.apply_cycles import (
    CycleManifest,
    PendingCycle,
    cycle_key,
    is_control,
    ready_cycles,
)
from engine.core.cycles import split_log
from engine.core.decision_log import DecisionLog, DecisionRef, as_log, identities
from engine.core.model import Action, CycleSummary, Decision, Execution, Outcome
from engine.errors import PermanentError, RetryableError
from engine.logs import redact
from engine.metrics import CYCLE_DURATION, CYCLE_FAILURES, RECORDS_PROCESSED, SAVINGS_REALISED

log = logging.getLogger("kubefinops.executor")
AGENT = "executor"
NO_REMOTE = "no Git remote configured (KUBEFINOPS_GIT_REMOTE_URL)"


def apply_cycle_id(decisions: Sequence[DecisionRef]) -> str:
    """The apply cycle's id: first decision time + a hash of the decision ids (replay-stable)."""
    digest = hashlib.sha256("\n".join(sorted(d.id for d in decisions)).encode()).hexdigest()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(min(d.decided_at for d in decisions)))
    return f"{stamp}-{digest[:10]}"


def _local(
    cycle: str,
    applies: Sequence[Decision],
    outcome: Outcome,
    detail: str,
    at: float,
    *,
    held: bool = False,
) -> Execution:
    """An execution decided here, without the writer (nothing to apply, no remote, refused)."""
    ids = identities(applies)
    why = {d.workload_id: detail for d in ids} if held else {}
    return Execution.of(cycle, ids, outcome, executed_at=at, detail=detail, held=why)


async def execute(rt: Runtime, decisions: DecisionLog, applies: Sequence[Decision]) -> Execution:
    cycle = apply_cycle_id(decisions.refs)
    if not applies:
        return _local(cycle, [], "noop", "no apply decisions", rt.clock())
    writer = rt.services.git
    if writer is None:
        return _local(cycle, applies, "held", NO_REMOTE, rt.clock(), held=True)

    def count_failure(exc: BaseException, delay: float) -> None:
        CYCLE_FAILURES.labels(AGENT, "git").inc()

    started = time.monotonic()
    try:
        execution = await retry_forever(
            lambda: writer.apply_cycle(cycle, applies),
            what=f"cycle {cycle}: Git unavailable",
            first=rt.retry_first_seconds,
            on_retry=count_failure,
        )
    except PermanentError as exc:
        CYCLE_FAILURES.labels(AGENT, "git").inc()
        # the detail goes to the executions topic, MongoDB and the S3 report: masked like a log
        return _local(cycle, applies, "failed", redact(str(exc)), rt.clock())
    CYCLE_DURATION.labels(AGENT).observe(time.monotonic() - started)
    return execution


async def publish(
    rt: Runtime, decisions: DecisionLog, applies: Sequence[Decision], execution: Execution
) -> None:
    """One execution record per applied workload, and the cycle summary for the reporter."""
    delta = (
        {r.id: r.monthly_delta for r in applies.refs}
        if isinstance(applies, DecisionLog)
        else {d.id: d.savings.monthly_delta for d in applies}
    )
    for wid, did in zip(execution.workload_ids, execution.decision_ids, strict=False):
        one = execution.model_copy(update={"workload_ids": [wid], "decision_ids": [did]})
        await rt.topics.executions.send(key=wid.encode(), value=one.model_dump_json().encode())
        if execution.applied and did in delta:
            SAVINGS_REALISED.inc(max(0.0, -delta[did]))
    policies = {r.policy_id: r.policy_version or 0 for r in decisions.refs if r.policy_id}
    header = CycleSummary(
        cycle=execution.cycle, decisions=[], execution=execution, policies=policies
    )
    # In parts: a cycle of thousands of decisions is far over Kafka's message limit; each part's
    # decisions decoded from the log only while that part is sent.
    for part in split_log(header, decisions):
        await rt.topics.cycles.send(
            key=execution.cycle.encode(), value=part.model_dump_json().encode()
        )


async def run_cycle(rt: Runtime, decisions: Sequence[Decision]) -> Execution | None:
    """Apply the decisions of one cycle: one commit, its execution records, its report parts.

    Held as a :class:`DecisionLog` (JSON, decoded one at a time), the ones to apply too: the Git
    writer decodes each while it writes its patch, so an all-apply cycle is not held parsed
    (10,000 decisions parsed were 99 MiB of the worker's peak; engine/core/decision_log.py)."""
    if not decisions:
        return None
    log_ = as_log(decisions)
    applies = log_.where(lambda r: r.action is Action.APPLY)
    execution = await execute(rt, log_, applies)
    log.info(
        "cycle %s: %s (%d decisions, %d applied, %d held) %s",
        execution.cycle,
        execution.outcome,
        len(decisions),
        len(execution.workload_ids),
        len(execution.held),
        execution.commit_sha or "",
    )
    await publish(rt, log_, applies, execution)
    RECORDS_PROCESSED.labels(AGENT).inc(len(decisions))
    return execution


async def handle_batch(rt: Runtime, raws: Sequence[bytes | None]) -> Execution | None:
    """Apply these ``kubefinops.decisions`` values as one cycle at once (bad ones dead-lettered):
    what :func:`flush` does for a ready cycle, for a caller that already has the cycle."""
    decisions: list[Decision] = []
    topic = rt.settings.topic("decisions")
    for raw in raws:
        decision = await parse_or_park(rt, Decision, raw, key=None, agent=AGENT, topic=topic)
        if decision is not None:
            decisions.append(decision)
    return await run_cycle(rt, decisions)


# --- apply cycles keyed by collection cycle (engine/core/apply_cycles.py) ---------------------
_SEP = "|"


def _row_counts(rt: Runtime) -> dict[str, int]:
    """Stored decision rows per pending cycle, from the keys alone (nothing decoded)."""
    counts: dict[str, int] = {}
    for key in list(rt.tables.pending_decisions.keys()):
        ck = str(key).split(_SEP, 1)[0]
        counts[ck] = counts.get(ck, 0) + 1
    return counts


def _rows_of(rt: Runtime, ck: str) -> list[str]:
    prefix = f"{ck}{_SEP}"
    return [str(k) for k in list(rt.tables.pending_decisions.keys()) if str(k).startswith(prefix)]


def _pending(rt: Runtime, *, recount: bool = False) -> dict[str, PendingCycle]:
    """The pending cycles of this worker from their meta rows: when they start, how many
    workloads they expect and have.  The decisions themselves are decoded only when a cycle is
    applied (:func:`_decisions_of`) — decoding every pending decision on every record made a
    cycle of n decisions cost n²/2 decodes (a 1,000-workload burst: ~0.5 M).  ``recount``
    (on control records: the manifest, the apply ticks) counts the rows again from the table's
    keys, which also corrects a count left behind by a crash between a row and its meta."""
    metas = {str(ck): meta for ck, meta in list(rt.tables.pending_cycles.items())}
    counts = (
        _row_counts(rt) if recount or any("stored" not in meta for meta in metas.values()) else None
    )
    out: dict[str, PendingCycle] = {}
    for ck, meta in metas.items():
        out[ck] = PendingCycle.from_meta(meta, [])
        if counts is not None:
            out[ck].stored = counts.pop(ck, 0)
    for ck, n in (counts or {}).items():  # decisions whose meta row is missing
        out[ck] = PendingCycle(cycle=ck, stored=n)
    return out


def _decisions_of(rt: Runtime, ck: str) -> tuple[DecisionLog, list[str]]:
    """A cycle's stored decisions (by workload id) and every row key they were read from; read
    one row at a time into a log, so the cycle is never held parsed."""
    rows = _rows_of(rt, ck)
    decisions = DecisionLog()
    for key in rows:
        try:
            decisions.append(Decision.model_validate(rt.tables.pending_decisions[key]))
        except (KeyError, ValueError):
            log.warning("dropping an unreadable pending decision %s", key)
    return decisions.sorted_by(lambda r: r.workload_id), rows


def _cycle_meta(rt: Runtime, ck: str) -> PendingCycle:
    meta = rt.tables.pending_cycles.get(ck)
    pending = PendingCycle.from_meta(meta or {"cycle": ck}, [])
    if meta is None or "stored" not in meta:  # first decision of the cycle, or an older meta
        pending.stored = len(_rows_of(rt, ck))
    return pending


async def accept(rt: Runtime, key: bytes | None, raw: bytes | None) -> list[Execution]:
    """One ``kubefinops.decisions`` record (or a manifest or tick of ``apply-control``) into
    the pending cycles, then apply every cycle that is ready.  Everything is written to
    changelog-backed tables first, so a crash between here and the commit loses nothing (and the
    writer's cycle trailer makes the retry a no-op)."""
    topic = rt.settings.topic("decisions")
    now = rt.clock()
    control = is_control(raw)
    if control == "cycle-manifest":
        manifest = await parse_or_park(rt, CycleManifest, raw, key=key, agent=AGENT, topic=topic)
        if manifest is not None:
            pending = _cycle_meta(rt, manifest.cycle)
            pending.expect(manifest, now)
            rt.tables.pending_cycles[manifest.cycle] = pending.meta()
    elif control is None:
        decision = await parse_or_park(rt, Decision, raw, key=key, agent=AGENT, topic=topic)
        if decision is not None:
            ck = cycle_key(decision)
            row = f"{ck}{_SEP}{decision.workload_id}"
            pending = _cycle_meta(rt, ck)
            new = row not in rt.tables.pending_decisions  # a re-delivery replaces its row
            # the row first: a crash before the meta leaves the count short (made good by the
            # next recount), never long (which would apply the cycle without its last decision)
            rt.tables.pending_decisions[row] = decision.model_dump(mode="json")
            pending.add(decision, now)
            pending.stored += new
            rt.tables.pending_cycles[ck] = pending.meta()
    return await flush(rt, now, recount=control is not None)


async def flush(rt: Runtime, now: float, *, recount: bool = False) -> list[Execution]:
    """Apply every pending cycle that is ready (complete, quiet or timed out), oldest first."""
    s = rt.settings
    pending = _pending(rt, recount=recount)
    done: list[Execution] = []
    for ck, why in ready_cycles(
        pending, now, quiet=s.apply_batch_seconds, timeout=s.apply_cycle_timeout_seconds
    ):
        decisions, rows = _decisions_of(rt, ck)
        if decisions:
            log.info("apply cycle for %s ready (%s): %d decisions", ck, why, len(decisions))
            try:
                execution = await run_cycle(rt, decisions)
            except (asyncio.CancelledError, RetryableError):
                raise  # shutdown, or a dependency still away: stays pending, retried
            except Exception as exc:  # never silently: every decision of it is dead-lettered
                for ref in decisions.refs:
                    await dead_letter(
                        rt,
                        agent=AGENT,
                        topic=s.topic("decisions"),
                        key=ref.workload_id.encode(),
                        raw=ref.raw.decode(),
                        exc=exc,
                    )
                execution = None
            if execution is not None:
                done.append(execution)
        for row in rows:
            rt.tables.pending_decisions.pop(row, None)
        rt.tables.pending_cycles.pop(ck, None)
    return done


def has_pending(rt: Runtime) -> bool:
    return bool(len(rt.tables.pending_cycles) or len(rt.tables.pending_decisions))


async def tick(rt: Runtime) -> None:
    """Wake the executor's stream (where its tables may be written) while cycles wait."""
    await rt.topics.apply_control.send(key=b"apply-tick", value=b'{"type":"apply-tick"}')
