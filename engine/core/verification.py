"""Verified apply (pure): the life of one pushed change, from ``git push`` to healthy or reverted.

One :class:`Verification` per workload change.  It is the durable watch state (a table value)
and, at every transition, the record published on ``kubefinops.verifications``::

    pending --all ready pods carry the new values--> live --window passes cleanly--> healthy
       |  \\                                          |
       |   `--deadline passes--> not-synced            `--a signal breaches--> regressed
       |                                                                        |  (autopilot)
       `--a pod with the new values crashes (OOM, restarts)--> regressed        `--> reverted

``regressed`` is terminal in recommend mode (the revert is reported, not committed) and when the
revert could not be made (a human changed the same fields since).  A newer change of the same
workload ends an unfinished watch as ``superseded``.  :func:`advance` is the whole state machine;
the telemetry it needs is read by the adapter (:mod:`engine.adapters.verification`) from
kube-state-metrics and cAdvisor series, parsed by :mod:`engine.core.rollout`.

Attribution: a signal counts against a change only when it started after it — OOMs and restarts
only on pods that carry the new values, after the push; throttling, readiness and SLO
breaches only when the same expression was not already breaching over the window before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.core.estimators import Duration
from engine.core.model import ContainerSpec, Decision, Execution, Mode, Wire, WorkloadSpec
from engine.core.patches import container_changes
from engine.core.quantity import fmt_duration, fmt_time, parse_quantity


def verification_id(decision_id: str, commit_sha: str) -> str:
    digest = hashlib.sha256(f"{decision_id}\n{commit_sha}".encode()).hexdigest()
    return f"ver-{digest[:24]}"


class Phase(StrEnum):
    PENDING = "pending"
    LIVE = "live"
    NOT_SYNCED = "not-synced"
    HEALTHY = "healthy"
    REGRESSED = "regressed"
    REVERTED = "reverted"
    SUPERSEDED = "superseded"


WATCHING = frozenset({Phase.PENDING, Phase.LIVE})


class Slo(BaseModel):
    """A per-policy PromQL expression: breaching when its largest value is above ``threshold``
    (below it with ``below: true``).  ``$namespace``, ``$kind`` and ``$name`` are substituted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$")
    expr: str = Field(min_length=1, max_length=2000)
    threshold: float
    below: bool = False

    def breaches(self, value: float) -> bool:
        return value < self.threshold if self.below else value > self.threshold


class VerificationParams(BaseModel):
    """What a watch checks and for how long; frozen into the watch when the change is pushed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline: Duration = Field(1800.0, description="time for the change to go live")
    window: Duration = Field(7200.0, description="how long a live change is watched")
    penalty: Duration = Field(7 * 86400.0, description="no decrease after a regression")
    throttling: float = Field(0.25, ge=0, le=1, description="throttled / CFS periods above")
    restarts: int = Field(0, ge=0, description="restarts of a changed container above")
    readiness_grace: Duration = Field(300.0, description="unavailable at least this long")
    slos: tuple[Slo, ...] = ()


class VerificationOverrides(BaseModel):
    """A policy's ``verification`` block: any field left out takes the worker's setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline: Duration | None = None
    window: Duration | None = None
    penalty: Duration | None = None
    throttling: float | None = Field(None, ge=0, le=1)
    restarts: int | None = Field(None, ge=0)
    readiness_grace: Duration | None = None
    slos: tuple[Slo, ...] = ()

    def resolve(self, defaults: VerificationParams) -> VerificationParams:
        given = {k: v for k, v in self.model_dump(exclude={"slos"}).items() if v is not None}
        return defaults.model_copy(update={**given, "slos": (*defaults.slos, *self.slos)})


class Expected(Wire):
    """One field the change set: the value every pod must carry to count as live."""

    container: str
    section: str  # requests | limits
    resource: str  # cpu | memory
    old: str | None
    new: str

    def describe(self) -> str:
        field = f"{self.section}.{self.resource}"
        return f"{self.container} {field} {self.old or 'unset'} -> {self.new}"


class Evidence(Wire):
    """Why a change is judged harmful: the metric, what it showed, and the line it crossed."""

    signal: str  # oom | restarts | throttling | readiness | slo:<name>
    metric: str
    value: float
    threshold: float
    baseline: float | None = None  # the same measure before the change
    container: str | None = None
    pod: str | None = None
    at: float
    note: str = ""

    def line(self) -> str:
        where = "/".join(p for p in (self.pod, self.container) if p)
        before = "" if self.baseline is None else f", before the change {self.baseline:g}"
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.signal} {where + ' ' if where else ''}{self.metric} = {self.value:g}"
            f" (threshold {self.threshold:g}{before}) at {fmt_time(self.at)}{note}"
        )


class Verification(Wire):
    id: str
    workload_id: str
    namespace: str
    kind: str
    name: str
    decision_id: str
    commit_sha: str
    cycle: str
    policy_id: str | None = None
    mode: Mode = Mode.AUTOPILOT  # the mode the change was decided under
    applied_at: float
    expected: list[Expected]
    params: VerificationParams = VerificationParams()
    phase: Phase = Phase.PENDING
    detail: str = ""
    live_at: float | None = None
    checked_at: float | None = None
    updated_at: float
    evidence: list[Evidence] = []
    cause: str | None = None
    baseline: dict[str, float] | None = None  # signal key -> value before the change
    revert_pending: bool = False
    revert_sha: str | None = None
    penalty_until: float | None = None
    # Telemetry (or Git) unreachable: consecutive failed checks, and when to try again (the
    # backoff lives in the durable watch, so the queue's ticks are acknowledged, not stuck).
    check_failures: int = 0
    next_check_at: float | None = None

    @property
    def watching(self) -> bool:
        return self.phase in WATCHING

    @property
    def finished(self) -> bool:
        return not self.watching and not self.revert_pending

    def changes(self) -> str:
        return "; ".join(e.describe() for e in self.expected if e.old != e.new)


def start(
    decision: Decision, execution: Execution, params: VerificationParams
) -> Verification | None:
    """The watch of one pushed change, or None when the decision set no field."""
    expected = [
        Expected(
            container=c.container, section=c.section, resource=c.resource, old=c.old, new=c.new
        )
        for c in container_changes(decision)
    ]
    if not expected or not execution.commit_sha:
        return None
    return Verification(
        id=verification_id(decision.id, execution.commit_sha),
        workload_id=decision.workload_id,
        namespace=decision.namespace,
        kind=decision.kind,
        name=decision.name,
        decision_id=decision.id,
        commit_sha=execution.commit_sha,
        cycle=execution.cycle,
        policy_id=decision.policy_id,
        mode=decision.mode,
        applied_at=execution.executed_at,
        expected=expected,
        params=params,
        detail="waiting for the new values on every ready pod",
        updated_at=execution.executed_at,
    )


def _moved(v: Verification, phase: Phase, now: float, detail: str, **more: object) -> Verification:
    return v.model_copy(update={"phase": phase, "detail": detail, "updated_at": now, **more})


def regress(
    v: Verification, evidence: list[Evidence], now: float, *, autopilot: bool
) -> Verification:
    """``regressed``: penalty from now; in autopilot a revert is due, otherwise only reported."""
    first = evidence[0]
    action = "revert due" if autopilot else "revert recommended (policy not in autopilot)"
    return _moved(
        v,
        Phase.REGRESSED,
        now,
        f"{first.line()}; {action}",
        evidence=evidence,
        cause=first.signal.split(":", 1)[0],
        revert_pending=autopilot,
        penalty_until=now + v.params.penalty,
        checked_at=now,
    )


def advance(
    v: Verification,
    now: float,
    *,
    live: tuple[bool, str],
    evidence: list[Evidence],
    autopilot: bool,
) -> Verification:
    """One check of a watch.  ``live`` is the rollout verdict with its reason; ``evidence`` the
    regressions attributed to this change (crash signals only while pending).  A transition
    changes ``phase``; otherwise only ``detail``/``checked_at`` move."""
    if not v.watching:
        return v
    if evidence:
        return regress(v, evidence, now, autopilot=autopilot)
    is_live, why = live
    if v.phase is Phase.PENDING:
        if is_live:
            return _moved(v, Phase.LIVE, now, why, live_at=now, checked_at=now)
        if now - v.applied_at >= v.params.deadline:
            detail = f"not live {fmt_duration(v.params.deadline)} after the push: {why}"
            return _moved(v, Phase.NOT_SYNCED, now, detail, checked_at=now)
        return v.model_copy(update={"detail": why, "checked_at": now})
    live_at = v.live_at if v.live_at is not None else now
    if now - live_at >= v.params.window:
        detail = f"no regression in {fmt_duration(v.params.window)} after it went live"
        return _moved(v, Phase.HEALTHY, now, detail, checked_at=now)
    return v.model_copy(update={"checked_at": now})


def reverted(v: Verification, revert_sha: str | None, now: float, detail: str) -> Verification:
    return _moved(
        v, Phase.REVERTED, now, detail, revert_sha=revert_sha, revert_pending=False, checked_at=now
    )


def revert_failed(v: Verification, now: float, why: str) -> Verification:
    """The revert cannot be made (permanent): stays ``regressed``, penalty kept, reported."""
    return v.model_copy(
        update={"revert_pending": False, "detail": f"revert not made: {why}", "updated_at": now}
    )


BACKOFF_CAP_INTERVALS = 10  # the longest wait between two failed checks, in check intervals


def due(v: Verification, now: float) -> bool:
    """Whether a tick at ``now`` checks this watch (not while it backs off after failures)."""
    return v.next_check_at is None or now >= v.next_check_at


def postponed(v: Verification, now: float, interval: float) -> Verification:
    """A check that could not be made (a dependency down): try again after ``interval`` doubled
    per consecutive failure, at most :data:`BACKOFF_CAP_INTERVALS` intervals.  Nothing else of
    the watch moves: the deadline and the window are judged from the cluster's own telemetry
    once it answers (a change that went live meanwhile is live, whatever the outage)."""
    failures = v.check_failures + 1
    delay = interval * min(2 ** min(failures - 1, 30), BACKOFF_CAP_INTERVALS)
    return v.model_copy(update={"check_failures": failures, "next_check_at": now + delay})


def resumed(v: Verification) -> Verification:
    """A check made after failures: back to the normal pace."""
    if not v.check_failures and v.next_check_at is None:
        return v
    return v.model_copy(update={"check_failures": 0, "next_check_at": None})


def superseded(v: Verification, by: str, now: float) -> Verification:
    return _moved(v, Phase.SUPERSEDED, now, f"superseded by change {by}", revert_pending=False)


def revert_message(v: Verification) -> str:
    """Conventional-commit subject, body, and trailers naming the change and the evidence."""
    cause = v.cause or "regression"
    subject = f"revert(rightsizing): {v.workload_id} after {cause} regression"
    body = [
        f"Reverts {v.changes() or 'the change'} of {v.workload_id}",
        f"(commit {v.commit_sha[:12]}, cycle {v.cycle}); other workloads are untouched.",
        "",
        *(f"- {e.line()}" for e in v.evidence),
    ]
    trailers = [
        f"Kubefinops-Reverts: {v.commit_sha}",
        f"Kubefinops-Reverts-Decision: {v.decision_id}",
        f"Kubefinops-Verification: {v.id}",
        f"Kubefinops-Workload: {v.workload_id}",
        *(f"Kubefinops-Evidence: {' '.join(e.line().split())}" for e in v.evidence),
    ]
    if v.penalty_until is not None:
        trailers.append(f"Kubefinops-Penalty-Until: {fmt_time(v.penalty_until)}")
    return "\n".join([subject, "", *body, "", *trailers]) + "\n"


def hold_state(v: Verification) -> dict[str, Any]:
    """What a verification outcome leaves in the workload's last-action state for the gate:
    the penalty after a regression, the not-synced hold with the values it waits for."""
    state: dict[str, Any] = {"verification": v.phase.value, "verification_id": v.id}
    if v.penalty_until is not None:
        state["penalty_until"] = v.penalty_until
        state["penalty_cause"] = v.cause
    if v.phase is Phase.NOT_SYNCED:
        state["hold_until"] = v.updated_at + v.params.penalty
        state["hold_expected"] = [e.model_dump() for e in v.expected]
        state["hold_reason"] = f"change {v.commit_sha[:12]} not live: {v.detail}"
    else:
        state.update(hold_until=None, hold_expected=None, hold_reason=None)
    return state


def _spec_value(c: ContainerSpec, e: Expected) -> float | None:
    pair = c.requests if e.section == "requests" else c.limits
    value: float | None = getattr(pair, e.resource, None)
    return value


def sync_hold(last: Mapping[str, Any], spec: WorkloadSpec, now: float) -> str | None:
    """Why the gate holds a workload whose last change never went live, or None: the hold ends
    when the observed spec carries the change (synced late) or after ``hold_until``."""
    reason = last.get("hold_reason")
    until = last.get("hold_until")
    if not reason or until is None or now >= float(until):
        return None
    containers = {c.name: c for c in spec.containers}
    for raw in last.get("hold_expected") or []:
        e = Expected.model_validate(raw)
        c = containers.get(e.container)
        got = _spec_value(c, e) if c is not None else None
        if got is None or abs(got - parse_quantity(e.new)) > 1e-3 * max(1.0, parse_quantity(e.new)):
            return str(reason)
    return None
