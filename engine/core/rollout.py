"""What the cluster's own telemetry says about one change (pure): PromQL to ask, facts to read.

No Kubernetes API: kube-state-metrics and cAdvisor series in Prometheus are the whole source.

* Rollout (:func:`rollout_expr`, :func:`parse_rollout`, :func:`live_verdict`): the change is
  *live* when every ready pod of the workload reports the new requests/limits
  (``kube_pod_container_resource_requests/limits``) and the controller's status counts all
  desired replicas updated and ready (``kube_deployment_status_*``, ``kube_statefulset_*``,
  ``kube_daemonset_status_*``).  Pods are mapped to the workload through ``kube_pod_owner`` /
  ``kube_replicaset_owner``, as the collector does.
* Regressions (:func:`evidence`): OOMKilled terminations and restarts of the changed containers
  on pods that carry the new values; once live, CPU throttling above a share of CFS periods when
  a CPU limit is set, unavailable replicas sustained for ``readiness_grace``, and per-policy SLO
  expressions — each only when the same measure was not already breaching before the change
  (``baseline``, evaluated over the window just before the push).

cAdvisor series carry no owner, so their pods are selected by the controller's naming scheme
(``<deployment>-<hash>-<id>``, ``<statefulset>-<ordinal>``, ``<daemonset>-<id>``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.core.collect import Owners, Series
from engine.core.quantity import fmt_memory, parse_quantity
from engine.core.verification import Evidence, Phase, Verification

OOM_METRIC = 'kube_pod_container_status_last_terminated_reason{reason="OOMKilled"}'
RESTARTS_METRIC = "kube_pod_container_status_restarts_total"
THROTTLED_METRIC = "container_cpu_cfs_throttled_periods_total"
PERIODS_METRIC = "container_cpu_cfs_periods_total"
BASELINE_MAX_WINDOW = 3600.0
MAX_EVIDENCE = 10  # per regression: a crash-looping fleet of pods must not grow a record

# kind -> (label naming the workload, desired, updated, ready, unavailable expression or None)
_STATUS: dict[str, tuple[str, str, str, str]] = {
    "Deployment": (
        "deployment",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_updated",
        "kube_deployment_status_replicas_available",
    ),
    "StatefulSet": (
        "statefulset",
        "kube_statefulset_replicas",
        "kube_statefulset_status_replicas_updated",
        "kube_statefulset_status_replicas_ready",
    ),
    "DaemonSet": (
        "daemonset",
        "kube_daemonset_status_desired_number_scheduled",
        "kube_daemonset_status_updated_number_scheduled",
        "kube_daemonset_status_number_available",
    ),
}
_POD_METRICS = (
    "kube_pod_owner",
    "kube_replicaset_owner",
    "kube_pod_status_ready",
    "kube_pod_container_resource_requests",
    "kube_pod_container_resource_limits",
    "kube_pod_container_status_last_terminated_reason",
    "kube_pod_container_status_last_terminated_timestamp",
)
_UNITS = {"cpu": "core", "memory": "byte"}


def _q(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _containers(v: Verification) -> list[str]:
    return sorted({e.container for e in v.expected})


def _container_re(v: Verification) -> str:
    return "|".join(re.escape(c) for c in _containers(v))


def pod_regex(kind: str, name: str) -> str:
    """The names a controller gives its pods (cAdvisor series have no owner label)."""
    base = re.escape(name)
    if kind == "Deployment":
        return f"{base}-[a-z0-9]+-[a-z0-9]+"
    if kind == "StatefulSet":
        return f"{base}-[0-9]+"
    if kind == "DaemonSet":
        return f"{base}-[a-z0-9]+"
    return f"{base}(-.+)?"


def _window(seconds: float) -> str:
    return f"{max(60, math.ceil(seconds))}s"


# --- rollout ------------------------------------------------------------------------------------
def rollout_expr(v: Verification) -> str:
    """One instant selector for the pods, their values and the controller status of ``v``."""
    names = list(_POD_METRICS)
    if v.kind in _STATUS:
        names.extend(_STATUS[v.kind][1:])
    return "{__name__=~" + _q("|".join(names)) + ",namespace=" + _q(v.namespace) + "}"


@dataclass(frozen=True)
class PodState:
    name: str
    ready: bool
    values: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    oom_at: Mapping[str, float | None] = field(default_factory=dict)  # container -> when


@dataclass(frozen=True)
class Rollout:
    pods: tuple[PodState, ...] = ()
    desired: int | None = None
    updated: int | None = None
    ready: int | None = None


def _val(s: Series) -> float:
    return s.values[-1][1] if s.values else 0.0


@dataclass
class _Pod:
    ready: bool = False
    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    oom: dict[str, float | None] = field(default_factory=dict)
    ts: dict[str, float] = field(default_factory=dict)


def parse_rollout(series: Iterable[Series], v: Verification) -> Rollout:
    """The workload's pods (by owner) with readiness, values and OOMs, and its status counts."""
    by_name: dict[str, list[Series]] = {}
    for s in series:
        if s.labels.get("namespace") == v.namespace:
            by_name.setdefault(s.labels.get("__name__", ""), []).append(s)

    def named(metric: str) -> list[Series]:
        return by_name.get(metric, [])

    owners = Owners.build(named("kube_pod_owner"), named("kube_replicaset_owner"))
    pods: dict[str, _Pod] = {}

    def pod_of(s: Series) -> _Pod | None:
        pod = s.labels.get("pod", "")
        if not pod or owners.resolve(v.namespace, pod) != (v.kind, v.name):
            return None
        return pods.setdefault(pod, _Pod())

    for s in named("kube_pod_owner"):
        pod_of(s)
    for s in named("kube_pod_status_ready"):
        if (p := pod_of(s)) is not None and s.labels.get("condition") == "true":
            p.ready = _val(s) == 1
    for section in ("requests", "limits"):
        for s in named(f"kube_pod_container_resource_{section}"):
            res = s.labels.get("resource", "")
            unit_ok = _UNITS.get(res) == s.labels.get("unit", _UNITS.get(res))
            if (p := pod_of(s)) is not None and unit_ok:
                p.values[(s.labels.get("container", ""), section, res)] = _val(s)
    for s in named("kube_pod_container_status_last_terminated_timestamp"):
        if (p := pod_of(s)) is not None:
            p.ts[s.labels.get("container", "")] = _val(s)
    for s in named("kube_pod_container_status_last_terminated_reason"):
        if (p := pod_of(s)) is not None and s.labels.get("reason") == "OOMKilled" and _val(s) == 1:
            container = s.labels.get("container", "")
            p.oom[container] = p.ts.get(container)

    def count(metric: str) -> int | None:
        label = _STATUS[v.kind][0]
        found = [s for s in named(metric) if s.labels.get(label) == v.name]
        return int(_val(found[0])) if found else None

    status = (
        (count(_STATUS[v.kind][1]), count(_STATUS[v.kind][2]), count(_STATUS[v.kind][3]))
        if v.kind in _STATUS
        else (None, None, None)
    )
    states = tuple(
        PodState(name, p.ready, dict(p.values), dict(p.oom)) for name, p in sorted(pods.items())
    )
    return Rollout(states, *status)


def _matches(actual: float | None, expected: str) -> bool:
    if actual is None:
        return False
    return math.isclose(actual, parse_quantity(expected), rel_tol=1e-3, abs_tol=1e-9)


def carries(pod: PodState, v: Verification) -> bool:
    """The pod runs every value the change set."""
    return all(
        _matches(pod.values.get((e.container, e.section, e.resource)), e.new) for e in v.expected
    )


def live_verdict(v: Verification, rollout: Rollout) -> tuple[bool, str]:
    ready = [p for p in rollout.pods if p.ready]
    if not ready:
        return False, f"no ready pod of {v.workload_id} reported by kube-state-metrics"
    stale = [p.name for p in ready if not carries(p, v)]
    if stale:
        some = ", ".join(stale[:3])
        return False, f"{len(stale)} of {len(ready)} ready pods still run other values ({some})"
    desired = rollout.desired
    if desired is not None and len(ready) < desired:
        return False, f"{len(ready)} of {desired} desired replicas ready"
    for what, got in (("updated", rollout.updated), ("ready", rollout.ready)):
        if desired is not None and got is not None and got < desired:
            return False, f"controller status: {got} of {desired} replicas {what}"
    return True, f"all {len(ready)} ready pods carry the new values ({v.changes() or 'unchanged'})"


# --- regressions --------------------------------------------------------------------------------
def restarts_expr(v: Verification, window: float) -> str:
    sel = f"{RESTARTS_METRIC}{{namespace={_q(v.namespace)},container=~{_q(_container_re(v))}}}"
    w = _window(window)
    return f"max_over_time({sel}[{w}]) - min_over_time({sel}[{w}])"


def throttling_expr(v: Verification, window: float) -> str:
    matchers = (
        f"namespace={_q(v.namespace)},pod=~{_q(pod_regex(v.kind, v.name))},"
        f"container=~{_q(_container_re(v))}"
    )
    w = _window(window)
    return (
        f"sum by (container) (increase({THROTTLED_METRIC}{{{matchers}}}[{w}]))"
        f" / sum by (container) (increase({PERIODS_METRIC}{{{matchers}}}[{w}]))"
    )


def unavailable_expr(v: Verification, window: float, grace: float) -> str | None:
    """Largest number of replicas unavailable for at least ``grace`` within ``window``."""
    if v.kind not in _STATUS:
        return None
    label, desired, _, ready = _STATUS[v.kind]
    sel = f"{{namespace={_q(v.namespace)},{label}={_q(v.name)}}}"
    step = max(1, min(30, math.ceil(grace / 4)))
    unavailable = f"({desired}{sel} - on(namespace,{label}) {ready}{sel})"
    g = f"{max(1, math.ceil(grace))}s"
    return f"max_over_time(min_over_time({unavailable}[{g}:{step}s])[{_window(window)}:{step}s])"


def slo_expr(expr: str, v: Verification) -> str:
    return expr.replace("$namespace", v.namespace).replace("$kind", v.kind).replace("$name", v.name)


@dataclass(frozen=True)
class Signals:
    restarts: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (pod, container)
    throttling: Mapping[str, float] = field(default_factory=dict)  # container -> share
    unavailable: float | None = None
    slos: Mapping[str, float] = field(default_factory=dict)


def restarts_by_pod(series: Iterable[Series]) -> dict[tuple[str, str], float]:
    return {(s.labels.get("pod", ""), s.labels.get("container", "")): _val(s) for s in series}


def by_container(series: Iterable[Series]) -> dict[str, float]:
    return {s.labels.get("container", ""): _val(s) for s in series if s.values}


def max_value(series: Iterable[Series]) -> float | None:
    values = [_val(s) for s in series if s.values]
    return max(values) if values else None


def baseline_of(signals: Signals) -> dict[str, float]:
    """The comparison values for a watch, from signals evaluated just before the change."""
    out = {f"throttling:{c}": x for c, x in signals.throttling.items()}
    if signals.unavailable is not None:
        out["readiness"] = signals.unavailable
    out.update({f"slo:{k}": x for k, x in signals.slos.items()})
    return out


def cpu_limited(v: Verification, rollout: Rollout, container: str) -> bool:
    if any(
        e.container == container and e.section == "limits" and e.resource == "cpu"
        for e in v.expected
    ):
        return True
    return any((container, "limits", "cpu") in p.values for p in rollout.pods)


def lowers_memory(v: Verification, container: str) -> bool:
    """The change lowered (or newly capped) the container's memory: an OOM can be its doing.
    A change that only moved CPU, or raised memory, is not blamed for an OOM."""
    for e in v.expected:
        if e.container == container and e.resource == "memory":
            if e.old is None or parse_quantity(e.new) < parse_quantity(e.old):
                return True
    return False


def evidence(v: Verification, rollout: Rollout, signals: Signals, now: float) -> list[Evidence]:
    """Regressions attributed to ``v``, most specific first (oom, restarts, throttling,
    readiness, slo).  While pending only crashes count: a rollout in progress is not a
    readiness drop."""
    out: list[Evidence] = []
    changed = set(_containers(v))
    pods = [p for p in rollout.pods if carries(p, v)]
    for pod in pods:
        for container, at in sorted(pod.oom_at.items()):
            when = now if at is None else at
            if container in changed and when > v.applied_at and lowers_memory(v, container):
                limit = pod.values.get((container, "limits", "memory"))
                note = f"memory limit {fmt_memory(limit)}" if limit else ""
                out.append(
                    Evidence(
                        signal="oom",
                        metric=OOM_METRIC,
                        value=1,
                        threshold=0,
                        container=container,
                        pod=pod.name,
                        at=when,
                        note=note,
                    )
                )
    names = {p.name for p in pods}
    for (pod_name, container), n in sorted(signals.restarts.items()):
        if pod_name in names and container in changed and n > v.params.restarts:
            out.append(
                Evidence(
                    signal="restarts",
                    metric=RESTARTS_METRIC,
                    value=n,
                    threshold=v.params.restarts,
                    container=container,
                    pod=pod_name,
                    at=now,
                )
            )
    if v.phase is not Phase.LIVE:
        return out[:MAX_EVIDENCE]
    base = v.baseline or {}

    def new(key: str, breaching: bool, before_breaching: bool) -> bool:
        return breaching and (key not in base or not before_breaching)

    limit = v.params.throttling
    for container, share in sorted(signals.throttling.items()):
        key = f"throttling:{container}"
        if container in changed and cpu_limited(v, rollout, container):
            if new(key, share > limit, base.get(key, 0.0) > limit):
                metric = f"{THROTTLED_METRIC} / {PERIODS_METRIC}"
                out.append(
                    Evidence(
                        signal="throttling",
                        metric=metric,
                        value=round(share, 4),
                        threshold=limit,
                        baseline=base.get(key),
                        container=container,
                        at=now,
                    )
                )
    if signals.unavailable is not None and new(
        "readiness", signals.unavailable > 0, base.get("readiness", 0.0) > 0
    ):
        out.append(
            Evidence(
                signal="readiness",
                metric="unavailable replicas (desired - ready)",
                value=signals.unavailable,
                threshold=0,
                baseline=base.get("readiness"),
                at=now,
            )
        )
    for slo in v.params.slos:
        value = signals.slos.get(slo.name)
        key = f"slo:{slo.name}"
        if value is not None and new(
            key, slo.breaches(value), key in base and slo.breaches(base[key])
        ):
            out.append(
                Evidence(
                    signal=key,
                    metric=slo.expr,
                    value=value,
                    threshold=slo.threshold,
                    baseline=base.get(key),
                    at=now,
                )
            )
    return out[:MAX_EVIDENCE]
