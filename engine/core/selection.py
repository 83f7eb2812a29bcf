"""What a one-shot run selects, pushed into PromQL (pure), and counters turned into rates.

KRR's ``--namespace``/``--selector`` choose workloads before any usage query, so Prometheus only
reads the selected series.  :class:`Selection` does the same here:

* namespaces become a ``namespace`` matcher on every query (usage, owners, specs);
* a label selector (``app=api,tier!=batch,team in (a,b),!legacy`` — kubectl's syntax) becomes
  matchers on kube-state-metrics' ``kube_{deployment,statefulset,daemonset}_labels`` series
  (label ``k8s-app`` is exported as ``label_k8s_app``); the matching workloads' pods then become
  an exact ``pod`` matcher on the usage queries.

:func:`counter_rates` turns a counter sampled once per step (``max by (...) (counter)`` as a
range query: one sample per series and step) into per-step rates with PromQL's reset rule, so
CPU costs Prometheus one sample per step instead of every sample of a ``rate()`` window.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SET = re.compile(r"^\s*(!?[\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
LABEL_METRICS = ("kube_deployment_labels", "kube_statefulset_labels", "kube_daemonset_labels")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    @property
    def exported(self) -> str:
        """kube-state-metrics' name for the label: ``label_`` + non-alphanumerics as ``_``."""
        return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", self.key)

    def matcher(self) -> str:
        name = self.exported
        if self.op == "=":
            return f'{name}="{_promql_string(self.values[0])}"'
        if self.op == "!=":
            return f'{name}!="{_promql_string(self.values[0])}"'
        if self.op in ("in", "notin"):
            regex = "|".join(_regex_literal(v) for v in self.values)
            return f'{name}{"=~" if self.op == "in" else "!~"}"{regex}"'
        return f'{name}{"!=" if self.op == "exists" else "="}""'

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.exported[len("label_") :], labels.get(self.key))
        if self.op == "=":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value in self.values
        if self.op == "notin":
            return value not in self.values
        return bool(value) == (self.op == "exists")

    def __str__(self) -> str:
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        return f"{self.key}{self.op}{self.values[0]}"


def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _regex_literal(value: str) -> str:
    """``value`` matched literally by RE2, written inside a PromQL double-quoted string."""
    return _promql_string(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", value))


def _split(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_selector(selector: str | None) -> tuple[Requirement, ...]:
    """kubectl's label selector syntax; :class:`ConfigError` naming the bad term."""
    out = []
    for term in _split(selector or ""):
        if m := _SET.match(term):
            key, op, values = m.group(1), m.group(2), m.group(3)
            vals = tuple(v.strip() for v in values.split(",") if v.strip())
            if not vals or key.startswith("!"):
                raise ConfigError(f"invalid selector term {term!r}")
            out.append(Requirement(key, op, vals))
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                out.append(Requirement(key.strip(), "=" if op == "==" else op, (value.strip(),)))
                break
        else:
            neg = term.startswith("!")
            out.append(Requirement(term.lstrip("!").strip(), "!exists" if neg else "exists"))
    for req in out:
        if not _KEY.match(req.key):
            raise ConfigError(f"invalid selector: {req.key!r} is not a label key")
    return tuple(out)


@dataclass(frozen=True)
class Selection:
    namespaces: tuple[str, ...] = ()
    labels: tuple[Requirement, ...] = ()

    @classmethod
    def build(cls, namespaces: Sequence[str] = (), selector: str | None = None) -> Selection:
        for ns in namespaces:
            if not _DNS_LABEL.match(ns):
                raise ConfigError(f"invalid namespace {ns!r}: not a Kubernetes namespace name")
        return cls(tuple(sorted(set(namespaces))), parse_selector(selector))

    @property
    def everything(self) -> bool:
        return not self.namespaces and not self.labels

    def namespace_matcher(self) -> str:
        if not self.namespaces:
            return ""
        if len(self.namespaces) == 1:
            return f'namespace="{self.namespaces[0]}"'
        return f'namespace=~"{"|".join(self.namespaces)}"'

    def label_matchers(self) -> str:
        return ",".join(r.matcher() for r in self.labels)

    def selects(self, namespace: str, labels: dict[str, str]) -> bool:
        if self.namespaces and namespace not in self.namespaces:
            return False
        return all(r.matches(labels) for r in self.labels)

    def describe(self) -> str:
        """``namespace "a", "b" and selector "app=api"`` for one-line messages."""
        parts = []
        if self.namespaces:
            parts.append("namespace " + ", ".join(f'"{n}"' for n in self.namespaces))
        if self.labels:
            parts.append(f'selector "{",".join(str(r) for r in self.labels)}"')
        return " and ".join(parts) or "the whole cluster"


def join_matchers(*matchers: str) -> str:
    return ",".join(m for m in matchers if m)


def pod_matcher(pods: Iterable[str]) -> str:
    """An exact ``pod`` matcher (Prometheus anchors regexes) for the selected pods."""
    names = sorted(set(pods))
    return f'pod=~"{"|".join(_regex_literal(p) for p in names)}"' if names else ""


def counter_rate_arrays(
    t: FloatArray, v: FloatArray, step: float, steps: int = 1
) -> tuple[FloatArray, FloatArray]:
    """Rates of a counter sampled once per ``step`` over windows of ``steps`` steps, in one
    numpy pass: at each sample time ``t``, the increase over the last ``steps`` steps divided by
    their duration (``rate(x[steps*step])`` evaluated at ``t`` when the scrapes fall on the
    steps).  Each step's decrease is a reset (its increase is the value after it, as PromQL's
    ``rate``); a window holding a gap longer than one step (a pod that was not there) gives no
    rate."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if t.size <= steps:
        return t[:0], v[:0]
    dt = np.diff(t)
    increase = np.diff(v)
    increase = np.where(increase >= 0, increase, v[1:])
    ok = (dt > 0) & (dt <= step * 1.5)
    if steps == 1:
        return t[1:][ok], increase[ok] / dt[ok]

    # Window sums as ``steps`` shifted slices added in order (a strided window view costs
    # ~15 µs a call in setup alone, most of it for the usual 2-step window).
    n = ok.size - steps + 1
    full = ok[:n].copy()
    inc = np.where(ok, increase, 0.0)
    span = np.where(ok, dt, 0.0)
    inc_sum, span_sum = inc[:n].copy(), span[:n].copy()
    for i in range(1, steps):
        full &= ok[i : n + i]
        inc_sum += inc[i : n + i]
        span_sum += span[i : n + i]
    return t[steps:][full], inc_sum[full] / span_sum[full]


def max_per_time(t: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The max of the values at each distinct time, sorted by time (``max by`` over series
    evaluated at the same step times)."""
    if not t.size:
        return t, v
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    peaks: FloatArray = np.maximum.reduceat(v, starts)
    return t[starts], peaks


_VERSION = re.compile(r"v?(\d+)\.\d+")


def left_open_ranges(version: str | None) -> bool:
    """Whether a server of this ``buildinfo`` version reads range selectors left-open
    (``(t - r, t]``: Prometheus 3.0 and later), so that ``max_over_time(x[step])`` at every step
    reads each raw sample once; Prometheus 2.x reads ``[t - r, t]`` and counts a sample on a
    boundary twice.  An unknown version counts as 2.x (the raw-sample read works on both)."""
    found = _VERSION.match(version or "")
    return found is not None and int(found.group(1)) >= 3


def window_maxima(
    t: FloatArray, v: FloatArray, first: float, end: float, step: int
) -> tuple[FloatArray, FloatArray]:
    """``max_over_time(x[step])`` at every ``step``-aligned time from ``first`` to ``end``, from
    the raw samples, in one numpy pass: the window of time ``t`` is ``[t - step, t]``, closed at
    both ends as Prometheus 2.x reads it (a sample on a boundary counts in both windows); a
    window without samples gives no point.  The samples may come from several series (it is
    then ``max by (...)`` of the per-series maxima)."""
    ms = np.round(t * 1000).astype(np.int64)
    step_ms, first_ms = int(step) * 1000, round(first * 1000)
    offset = ms - first_ms
    k = -((-offset) // step_ms)  # ceil: the first window whose right end is at or after ts
    boundary = offset % step_ms == 0
    k = np.concatenate((k, k[boundary] + 1))
    v = np.concatenate((v, v[boundary]))
    last = (round(end * 1000) - first_ms) // step_ms
    inside = (k >= 0) & (k <= last)
    k, v = k[inside], v[inside]
    if not k.size:
        return t[:0], v[:0]
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    peaks: FloatArray = np.maximum.reduceat(v, starts)
    times: FloatArray = first + k[starts].astype(np.float64) * step
    return times, peaks


def counter_rates(values: Sequence[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    """Per-step rates of a counter sampled once per ``step``: ``(t, increase / step)`` for each
    pair of consecutive steps; a decrease is a reset (the increase is the value after it, as
    PromQL's ``rate``); a gap longer than one step (a pod that was not there) gives no rate."""
    if len(values) < 2:
        return []
    arr = np.asarray(values, dtype=np.float64)
    t, v = arr[:, 0], arr[:, 1]
    dt = np.diff(t)
    increase = np.diff(v)
    increase = np.where(increase >= 0, increase, v[1:])
    keep = (dt > 0) & (dt <= step * 1.5)
    rates = increase[keep] / dt[keep]
    return list(zip(t[1:][keep].tolist(), rates.tolist(), strict=True))
