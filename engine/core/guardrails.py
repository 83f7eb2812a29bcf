"""The guardrails gate: a recommendation becomes apply / hold / skip, naming the deciding rule.

Rules are checked in this order (docs/policies.md); the first that decides wins:

1. ``excluded``        - annotation ``kubefinops.io/exclude: "true"``, or the policy's excluded
                         namespaces / labels / workload names -> skip
2. ``observe``         - mode observe -> skip
3. ``not-enough-data`` - no container has targets (confidence NONE) -> skip
4. ``hpa-conflict``    - an HPA scales on cpu/memory (no metrics = cpu, the Kubernetes default):
                         rule ``skip`` -> skip; ``memory-only`` -> drop the CPU change (skip if the
                         HPA also scales on memory); ``allow`` -> go on
5. ``oom``             - a recent OOMKill: memory never goes down (targets lifted; not a verdict)
6. ``already-applied`` - ``last_applied_id`` is this recommendation's id, or the id the
                         apply decision for it would get -> skip
7. ``penalty``         - a change of this workload regressed and was reverted (or should have
                         been) less than the verification penalty ago: decreases are dropped;
                         hold when nothing else is left (docs/verification.md)
8. ``not-synced``      - the last change never went live (Argo CD out of sync, rollout stuck):
                         hold until the cluster shows it or a person clears it
9. ``oom``             - autopilot mode, an OOMKill newer than the last change and a memory
                         raise: apply at once (no min-change, cooldown or hysteresis holds it)
10. ``min-change``     - no target moves by at least ``min_change`` (default 10%) -> hold; then
                         decreases under ``min_decrease`` / increases under ``min_increase``
                         are left unchanged (hysteresis), hold if nothing is left
11. ``cooldown``       - the last applied change is younger than ``cooldown`` minus
                         ``cooldown_tolerance``: hold, or with ``cooldown_scope: decreases``
                         (default) drop the decreases and apply the increases
12. ``schedule``       - outside every allowed apply window -> hold
13. ``recommend-only`` - mode recommend -> hold
14. ``autopilot``      - apply

Targets set to ``None`` mean "leave unchanged".
"""

from __future__ import annotations

import math

from engine.core.cost import DEFAULT_PRICES, Prices, savings, target_savings
from engine.core.estimators import current_memory
from engine.core.model import (
    Action,
    Confidence,
    ContainerRecommendation,
    Decision,
    Mode,
    Recommendation,
    WorkloadSpec,
)
from engine.core.policy import Policy, exclusion
from engine.core.quantity import fmt_duration, fmt_memory, fmt_time
from engine.core.recommend import content_id

Verdict = tuple[Action, str, str]  # action, guardrail, reason


def has_targets(c: ContainerRecommendation) -> bool:
    return c.confidence is not Confidence.NONE and any(
        v is not None for v in (c.cpu_request, c.cpu_limit, c.memory_request, c.memory_limit)
    )


def hpa_resources(spec: WorkloadSpec) -> set[str]:
    """Resources the HPA scales on; an HPA without metrics scales on CPU (Kubernetes default)."""
    if spec.hpa is None:
        return set()
    metrics = set(spec.hpa.metrics) or {"cpu"}
    return metrics & {"cpu", "memory"}


def drop_cpu(c: ContainerRecommendation, why: str) -> ContainerRecommendation:
    if c.cpu_request is None and c.cpu_limit is None:
        return c
    return c.model_copy(
        update={"cpu_request": None, "cpu_limit": None, "reasons": [*c.reasons, why]}
    )


def protect_memory(
    c: ContainerRecommendation, lookback: float, now: float
) -> ContainerRecommendation:
    """Never decrease memory (request or limit, each against its own current value) of a
    container OOMKilled within ``lookback``."""
    at = c.current.last_oom_at
    cur_req, cur_lim = c.current.requests.memory, c.current.limits.memory
    if at is None or (cur_req is None and cur_lim is None) or c.memory_request is None:
        return c
    if math.isfinite(at) and now - at > lookback:  # an unreadable time protects (conservative)
        return c
    req_floor = cur_req if cur_req is not None else current_memory(c.current) or 0.0
    lim_floor = cur_lim if cur_lim is not None else req_floor
    if c.memory_request >= req_floor and (c.memory_limit is None or c.memory_limit >= lim_floor):
        return c
    request = max(c.memory_request, req_floor)
    limit = max(c.memory_limit or lim_floor, lim_floor, request)
    why = (
        f"oom guardrail: OOMKilled at {fmt_time(at)}, memory kept at"
        f" {fmt_memory(request)} request / {fmt_memory(limit)} limit"
    )
    return c.model_copy(
        update={"memory_request": request, "memory_limit": limit, "reasons": [*c.reasons, why]}
    )


_FIELDS = (
    ("cpu_request", "requests", "cpu"),
    ("cpu_limit", "limits", "cpu"),
    ("memory_request", "requests", "memory"),
    ("memory_limit", "limits", "memory"),
)


def limits_over_requests(c: ContainerRecommendation) -> ContainerRecommendation:
    """After fields were dropped (left unchanged) one by one, a limit may end up below the
    request that will be in force: raise it to the request (an invalid spec otherwise)."""
    update: dict[str, object] = {}
    for resource in ("cpu", "memory"):
        req_attr, lim_attr = f"{resource}_request", f"{resource}_limit"
        req = getattr(c, req_attr)
        req = req if req is not None else getattr(c.current.requests, resource)
        lim = getattr(c, lim_attr)
        lim_now = lim if lim is not None else getattr(c.current.limits, resource)
        if req is not None and lim_now is not None and lim_now < req:
            update[lim_attr] = req
    return c.model_copy(update=update) if update else c


def drop_decreases(c: ContainerRecommendation, why: str) -> ContainerRecommendation:
    """Targets below the current value become ``None`` (unchanged); increases stay."""
    update: dict[str, object] = {}
    for attr, section, resource in _FIELDS:
        target = getattr(c, attr)
        pair = c.current.requests if section == "requests" else c.current.limits
        current = getattr(pair, resource)
        if target is not None and current is not None and target < current:
            update[attr] = None
    if not update:
        return c
    return limits_over_requests(c.model_copy(update={**update, "reasons": [*c.reasons, why]}))


def increases(c: ContainerRecommendation) -> bool:
    for attr, section, resource in _FIELDS:
        target = getattr(c, attr)
        pair = c.current.requests if section == "requests" else c.current.limits
        current = getattr(pair, resource)
        if target is not None and (current is None or target > current):
            return True
    return False


def _penalty(
    containers: list[ContainerRecommendation], until: float | None, now: float
) -> tuple[list[ContainerRecommendation], Verdict | None]:
    if until is None or now >= until:
        return containers, None
    why = f"penalty: a change regressed; no decrease until {fmt_time(until)}"
    kept = [drop_decreases(c, why) for c in containers]
    if not any(has_targets(c) and increases(c) for c in kept):
        return kept, (Action.HOLD, "penalty", f"{why}; nothing else to change")
    return kept, None


def relative_changes(c: ContainerRecommendation) -> list[tuple[str, float]]:
    """(resource, |target - current| / current) for every target set; no current = infinite."""
    pairs = (
        ("cpu request", c.cpu_request, c.current.requests.cpu),
        ("cpu limit", c.cpu_limit, c.current.limits.cpu),
        ("memory request", c.memory_request, c.current.requests.memory),
        ("memory limit", c.memory_limit, c.current.limits.memory),
    )
    out = []
    for label, target, current in pairs:
        if target is None:
            continue
        change = abs(target - current) / current if current else float("inf")
        out.append((f"{label} of {c.name}", change))
    return out


def drop_small_changes(
    c: ContainerRecommendation,
    min_decrease: float,
    min_increase: float,
    min_memory_increase: float | None = None,
) -> ContainerRecommendation:
    """A resource (request and limit together) whose changes are all decreases by less than
    ``min_decrease`` or increases by less than ``min_increase`` of the current value is left
    unchanged (``None``): hysteresis, so workloads settle."""
    update: dict[str, object] = {}
    for resource in ("cpu", "memory"):
        moves = []
        for attr, section, res in _FIELDS:
            target = getattr(c, attr)
            if res != resource or target is None:
                continue
            pair = c.current.requests if section == "requests" else c.current.limits
            current = getattr(pair, res)
            change = (target - current) / current if current else float("inf")
            moves.append((attr, change))
        moving = [ch for _, ch in moves if ch != 0]
        up = min_increase
        if resource == "memory" and min_memory_increase is not None:
            up = min_memory_increase
        material = any(ch <= -min_decrease or ch >= up for ch in moving)
        if moving and not material:
            update.update({attr: None for attr, _ in moves})
    if not update or all(getattr(c, a) is None for a in update):
        return c
    why = f"changes under -{min_decrease:.0%} / +{min_increase:.0%} left unchanged (hysteresis)"
    return limits_over_requests(c.model_copy(update={**update, "reasons": [*c.reasons, why]}))


def oom_raise(
    containers: list[ContainerRecommendation],
    last_applied_at: float | None,
    lookback: float,
    now: float,
) -> str | None:
    """Why memory must go up at once: an OOMKill since the last change, and a higher target."""
    for c in containers:
        at = c.current.last_oom_at
        if at is None or now - at > lookback:
            continue
        if last_applied_at is not None and at < last_applied_at:
            continue  # killed before the last change: that change already answered it
        had = c.current.limits.memory or current_memory(c.current) or 0.0
        new = max(c.memory_limit or 0.0, c.memory_request or 0.0)
        if new > had:
            return (
                f"{c.name} OOMKilled at {fmt_time(at)} with {fmt_memory(had)}: memory raised to"
                f" {fmt_memory(new)} at once (no cooldown or min-change holds an OOM fix)"
            )
    return None


def _min_change(containers: list[ContainerRecommendation], threshold: float) -> Verdict | None:
    changes = [rc for c in containers if has_targets(c) for rc in relative_changes(c)]
    if not changes:
        return Action.HOLD, "min-change", "no target differs from the current spec"
    label, biggest = max(changes, key=lambda item: item[1])
    if biggest <= 0:
        return Action.HOLD, "min-change", "no target differs from the current spec"
    if biggest < threshold:
        return (
            Action.HOLD,
            "min-change",
            f"largest change {biggest:.1%} ({label}) is below the {threshold:.0%} minimum",
        )
    return None


def _hpa(
    containers: list[ContainerRecommendation], spec: WorkloadSpec, policy: Policy
) -> tuple[list[ContainerRecommendation], Verdict | None]:
    scaled = hpa_resources(spec)
    rule = policy.guardrails.hpa
    if not scaled or rule == "allow":
        return containers, None
    hpa = spec.hpa.name if spec.hpa else "?"
    on = "/".join(sorted(scaled))
    if rule == "skip" or "memory" in scaled:
        return containers, (
            Action.SKIP,
            "hpa-conflict",
            f"HPA {hpa} scales on {on} (hpa rule {rule})",
        )
    why = f"HPA {hpa} scales on cpu: cpu change dropped, memory kept (hpa rule memory-only)"
    kept = [drop_cpu(c, why) for c in containers]
    if not any(has_targets(c) for c in kept):
        return kept, (Action.SKIP, "hpa-conflict", f"HPA {hpa} scales on cpu: nothing left")
    return kept, None


def _gate(
    rec: Recommendation,
    spec: WorkloadSpec,
    policy: Policy,
    *,
    last_applied_at: float | None,
    last_applied_id: str | None,
    now: float,
    penalty_until: float | None = None,
    sync_hold: str | None = None,
) -> tuple[list[ContainerRecommendation], Verdict]:
    containers = list(rec.containers)
    why = exclusion(spec, policy)
    if why:
        return containers, (Action.SKIP, "excluded", why)
    if policy.mode is Mode.OBSERVE:
        return containers, (Action.SKIP, "observe", f"policy {policy.id} is in observe mode")
    if not any(has_targets(c) for c in containers):
        reasons = "; ".join(c.reasons[0] for c in containers if c.reasons) or "no containers"
        return containers, (Action.SKIP, "not-enough-data", reasons)
    containers, verdict = _hpa(containers, spec, policy)
    if verdict:
        return containers, verdict
    if policy.guardrails.oom == "protect":
        lookback = policy.estimator.oom_lookback
        containers = [protect_memory(c, lookback, now) for c in containers]
    if last_applied_id is not None and last_applied_id in (
        rec.id,
        decision_id(rec.id, Action.APPLY, "autopilot", policy, containers),
    ):
        return containers, (Action.SKIP, "already-applied", f"{rec.id} is the last change applied")
    containers, verdict = _penalty(containers, penalty_until, now)
    if verdict:
        return containers, verdict
    if sync_hold:
        return containers, (Action.HOLD, "not-synced", sync_hold)
    rails = policy.guardrails
    if rails.oom == "protect" and policy.mode is Mode.AUTOPILOT:
        why = oom_raise(containers, last_applied_at, policy.estimator.oom_lookback, now)
        if why:
            return containers, (Action.APPLY, "oom", why)
    verdict = _min_change(containers, rails.min_change)
    if verdict:
        return containers, verdict
    if rails.min_decrease > 0 or rails.min_increase > 0 or rails.min_memory_increase:
        containers = [
            drop_small_changes(c, rails.min_decrease, rails.min_increase, rails.min_memory_increase)
            for c in containers
        ]
        if _min_change(containers, rails.min_change) is not None:
            return containers, (
                Action.HOLD,
                "min-change",
                f"only decreases under {rails.min_decrease:.0%} or increases under"
                f" {rails.min_increase:.0%} (hysteresis: not material enough for a rollout)",
            )
    cooldown = rails.cooldown
    if last_applied_at is not None and now - last_applied_at < cooldown - rails.cooldown_tolerance:
        hold = (
            Action.HOLD,
            "cooldown",
            f"last change applied {fmt_duration(now - last_applied_at)} ago;"
            f" cooldown is {fmt_duration(cooldown)}",
        )
        if rails.cooldown_scope == "all":
            return containers, hold
        why = "cooldown: decreases wait, increases go"
        ups = [drop_decreases(c, why) for c in containers]
        if _min_change(ups, rails.min_change) is not None:
            return containers, hold
        containers = ups
    if policy.schedule is not None and not policy.schedule.is_open(now):
        return containers, (Action.HOLD, "schedule", "outside the policy's apply windows")
    if policy.mode is Mode.RECOMMEND:
        return containers, (
            Action.HOLD,
            "recommend-only",
            f"policy {policy.id} is in recommend mode",
        )
    return containers, (Action.APPLY, "autopilot", f"policy {policy.id} is in autopilot mode")


def _targets(c: ContainerRecommendation) -> list[object]:
    return [c.name, c.cpu_request, c.cpu_limit, c.memory_request, c.memory_limit]


def decision_id(
    rec_id: str,
    action: Action,
    guardrail: str,
    policy: Policy,
    containers: list[ContainerRecommendation],
) -> str:
    """Same recommendation, verdict, policy version and targets => same id (idempotent)."""
    return content_id(
        "dec",
        [
            rec_id,
            action.value,
            guardrail,
            policy.id,
            policy.version,
            policy.mode.value,
            [_targets(c) for c in containers],
        ],
    )


def decide(
    rec: Recommendation,
    spec: WorkloadSpec,
    policy: Policy,
    *,
    last_applied_at: float | None,
    last_applied_id: str | None,
    now: float,
    prices: Prices = DEFAULT_PRICES,
    penalty_until: float | None = None,
    sync_hold: str | None = None,
) -> Decision:
    """Apply, hold or skip ``rec`` under ``policy``; deterministic id for the same outcome.
    The decision belongs to ``rec``'s collection cycle.

    Savings are recomputed with ``prices`` only when a guardrail changed the targets, e.g. the
    HPA rule dropped the CPU change.  ``penalty_until`` and ``sync_hold`` come from the
    workload's last-action state, written from its verification outcomes
    (:func:`engine.core.verification.hold_state`).
    """
    containers, (action, guardrail, reason) = _gate(
        rec,
        spec,
        policy,
        last_applied_at=last_applied_at,
        last_applied_id=last_applied_id,
        now=now,
        penalty_until=penalty_until,
        sync_hold=sync_hold,
    )
    changed = containers != list(rec.containers)
    return Decision(
        id=decision_id(rec.id, action, guardrail, policy, containers),
        recommendation_id=rec.id,
        workload_id=rec.workload_id,
        namespace=rec.namespace,
        kind=rec.kind,
        name=rec.name,
        action=action,
        guardrail=guardrail,
        reason=reason,
        mode=policy.mode,
        policy_id=policy.id,
        policy_version=policy.version,
        containers=containers,
        savings=savings(containers, rec.replicas, prices) if changed else rec.savings,
        target_savings=(
            target_savings(containers, rec.replicas, prices) if changed else rec.target_savings
        ),
        decided_at=now,
        collection_cycle=rec.collection_cycle,  # the cycle the recommendation was made in
    )
