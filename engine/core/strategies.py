"""Strategies for the backtest: ours (the real recommender and gate) and two peer comparators.

* :class:`Autopilot` (``kubefinops``) calls :func:`engine.core.recommend.recommend` and
  :func:`engine.core.guardrails.decide` exactly as the recommender and gate agents do, on the
  aggregator's usage state, under the policies given (default: the built-in default policy in
  autopilot mode).
* :class:`KrrSimple` (``krr-simple``) and :class:`VpaLike` (``vpa-like``) are written from the
  peers' *published parameters* (docs/recommendations.md lists them with their sources), not
  from their code.  Neither peer has a gate of its own in this loop: their values are applied
  when one moves by at least ``update_threshold`` (VPA's updater threshold, 10%).
* :class:`Replay` applies the values in force recorded by ``--export``: scoring an export again
  reproduces its figures, and any tool's output written in that format can be scored.

Settings are pydantic fields with descriptions, so they read as documentation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.core.backtest import DAY, FloatArray, Outcome, Values, WorkloadState
from engine.core.cost import DEFAULT_PRICES, Prices
from engine.core.guardrails import decide, has_targets, hpa_resources
from engine.core.model import (
    RESOURCES,
    Action,
    ContainerRecommendation,
    ContainerSpec,
    Mode,
    UsageSummary,
)
from engine.core.policy import DEFAULT_POLICY, Policy, policy_for
from engine.core.quantity import MIB, ceil_cpu, ceil_memory
from engine.core.recommend import recommend

AUTOPILOT_DEFAULT = DEFAULT_POLICY.model_copy(
    update={"id": "backtest-default", "name": "built-in default, autopilot", "mode": Mode.AUTOPILOT}
)

# The estimator settings before issue 9's backtest-tuned defaults (P95 + 15% CPU, peak + 15%
# memory, x2 max step, VPA's x1.2 OOM bump, 10% decrease hysteresis), for before/after runs.
CLASSIC = {
    "estimator": {
        "memory_limit_equals_request": True,
        "cpu_percentile_mode": "fixed",
        "cpu_headroom": 0.15,
        "memory_buffer": 0.15,
        "memory_growth_horizon": 0.0,
        "oom_bump_factor": 1.2,
        "max_step": 2.0,
    },
    "guardrails": {"min_decrease": 0.10, "min_memory_increase": None},
}
AUTOPILOT_CLASSIC = Policy.model_validate(
    {
        "id": "backtest-classic",
        "name": "pre-tuning estimator, autopilot",
        "mode": "autopilot",
        **CLASSIC,
    }
)


def _values(c: ContainerRecommendation) -> Values:
    return Values(c.cpu_request, c.cpu_limit, c.memory_request, c.memory_limit)


class Autopilot:
    """The production recommender and gate (see the module docstring)."""

    def __init__(
        self,
        policies: Sequence[Policy] = (),
        *,
        default: Policy = AUTOPILOT_DEFAULT,
        prices: Prices = DEFAULT_PRICES,
        name: str = "kubefinops",
    ) -> None:
        self.name = name
        self.policies = list(policies)
        self.default = default
        self.prices = prices

    def decide(self, state: WorkloadState, now: float) -> Outcome:
        spec = state.spec
        usage: dict[str, dict[str, UsageSummary]] = {
            name: {r: cs.usage.summary(r) for r in RESOURCES}
            for name, cs in state.containers.items()
            if cs.cursor > 0
        }
        policy = policy_for(self.policies, spec, self.default)
        rec = recommend(spec, usage, policy, now=now, prices=self.prices)
        dec = decide(
            rec,
            spec,
            policy,
            last_applied_at=state.last_applied_at,
            last_applied_id=state.last_applied_id,
            now=now,
            prices=self.prices,
            penalty_until=state.penalty_until,
        )
        applied = (
            {c.name: _values(c) for c in dec.containers if has_targets(c)}
            if dec.action is Action.APPLY
            else {}
        )
        return Outcome(
            action=dec.action.value,
            guardrail=dec.guardrail,
            reason=dec.reason,
            containers=applied,
            targets={c.name: _values(c) for c in rec.containers if has_targets(c)},
            decision_id=dec.id,
        )


# --- peers ---------------------------------------------------------------------------------------


def _changed(current: ContainerSpec, v: Values, threshold: float) -> bool:
    pairs = (
        (v.cpu_request, current.requests.cpu),
        (v.cpu_limit, current.limits.cpu),
        (v.memory_request, current.requests.memory),
        (v.memory_limit, current.limits.memory),
    )
    for new, old in pairs:
        if new is None or new == old:
            continue
        if not old or abs(new - old) / old >= threshold:
            return True
    return False


def _peer_outcome(
    state: WorkloadState, targets: dict[str, Values], threshold: float, why: str
) -> Outcome:
    if not targets:
        return Outcome("skip", "not-enough-data", why)
    moved = any(_changed(state.container(n), v, threshold) for n, v in targets.items())
    if not moved:
        return Outcome("hold", "min-change", f"no value moves by {threshold:.0%}", {}, targets)
    return Outcome("apply", "update", "a value moved by the update threshold", targets, targets)


def _oom_floor(c: ContainerSpec, now: float, lookback: float) -> float:
    """VPA's OOM bump: max(+100 MiB, x1.2) of the memory the container was killed at."""
    if c.last_oom_at is None or now - c.last_oom_at > lookback or not c.oom_limit_bytes:
        return 0.0
    return max(c.oom_limit_bytes * 1.2, c.oom_limit_bytes + 100 * MIB)


class _Peer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    update_threshold: float = Field(
        0.10, ge=0, le=1, description="apply when a value moves by this share (VPA updater's)"
    )
    allow_hpa: bool = Field(False, description="recommend for workloads an HPA scales")

    def decide(self, state: WorkloadState, now: float) -> Outcome:
        if not self.allow_hpa and hpa_resources(state.spec):
            return Outcome("skip", "hpa-conflict", "an HPA scales this workload")
        targets = {}
        for name, cs in state.containers.items():
            ts, cpu, mem = cs.window(self.window_seconds(), now)
            values = self.targets(state.container(name), ts, cpu, mem, now)
            if values is not None:
                targets[name] = values
        return _peer_outcome(state, targets, self.update_threshold, self.not_enough)

    # --- what a peer defines
    not_enough: ClassVar[str] = "not enough data"

    def window_seconds(self) -> float:
        raise NotImplementedError

    def targets(
        self, c: ContainerSpec, ts: FloatArray, cpu: FloatArray, mem: FloatArray, now: float
    ) -> Values | None:
        raise NotImplementedError


class KrrSimple(_Peer):
    """KRR's "simple" strategy: CPU P95 over 14 d, no headroom; memory max x 1.15."""

    name: str = "krr-simple"
    history: float = Field(14 * DAY, gt=0, description="history window, seconds")
    cpu_percentile: float = Field(95.0, ge=0, le=100, description="CPU request percentile")
    memory_buffer: float = Field(0.15, ge=0, description="memory = max x (1 + buffer)")
    cpu_floor: float = Field(0.010, ge=0, description="minimum CPU request, cores")
    memory_floor: float = Field(100 * MIB, ge=0, description="minimum memory, bytes")
    min_points: int = Field(100, ge=1, description="samples needed to recommend")
    min_history: float = Field(3 * 3600.0, ge=0, description="history span needed, seconds")
    oom_bump: bool = Field(False, description="KRR's optional OOM bump (x1.25 of the limit)")

    not_enough: ClassVar[str] = "fewer than the minimum points or history"

    def window_seconds(self) -> float:
        return self.history

    def targets(
        self, c: ContainerSpec, ts: FloatArray, cpu: FloatArray, mem: FloatArray, now: float
    ) -> Values | None:
        if ts.size < self.min_points or float(ts[-1] - ts[0]) < self.min_history:
            return None
        cpu_req = max(ceil_cpu(float(np.percentile(cpu, self.cpu_percentile))), self.cpu_floor)
        memory = float(mem.max()) * (1 + self.memory_buffer)
        if self.oom_bump and c.last_oom_at is not None and c.oom_limit_bytes:
            memory = max(memory, c.oom_limit_bytes * 1.25)
        memory = max(ceil_memory(memory), self.memory_floor)
        return Values(cpu_request=cpu_req, memory_request=memory, memory_limit=memory)


def weighted_quantile(values: FloatArray, weights: FloatArray, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return float(values[order][min(idx, values.size - 1)])


def daily_peaks(ts: FloatArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(day start, peak) of every UTC day with samples."""
    days = np.floor(ts / DAY) * DAY
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    return days[starts], np.maximum.reduceat(values, starts)


class VpaLike(_Peer):
    """VPA recommender's published parameters: decaying CPU P90, P90 of daily memory peaks."""

    name: str = "vpa-like"
    history: float = Field(8 * DAY, gt=0, description="history window, seconds")
    half_life: float = Field(DAY, gt=0, description="sample weight halves every, seconds")
    cpu_percentile: float = Field(0.90, gt=0, le=1, description="target CPU quantile")
    memory_percentile: float = Field(0.90, gt=0, le=1, description="target memory-peak quantile")
    margin: float = Field(0.15, ge=0, description="safety margin on both targets")
    cpu_floor: float = Field(0.025, ge=0, description="minimum CPU, cores (per pod)")
    memory_floor: float = Field(250 * MIB, ge=0, description="minimum memory, bytes (per pod)")
    oom_lookback: float = Field(8 * DAY, ge=0, description="an OOM counts this long, seconds")

    not_enough: ClassVar[str] = "no samples yet"

    def window_seconds(self) -> float:
        return self.history

    def targets(
        self, c: ContainerSpec, ts: FloatArray, cpu: FloatArray, mem: FloatArray, now: float
    ) -> Values | None:
        if ts.size == 0:
            return None
        weights = np.exp2((ts - now) / self.half_life)
        cpu_t = weighted_quantile(cpu, weights, self.cpu_percentile) * (1 + self.margin)
        day, peaks = daily_peaks(ts, mem)
        peak_w = np.exp2((day + DAY - now) / self.half_life)
        mem_t = weighted_quantile(peaks, peak_w, self.memory_percentile) * (1 + self.margin)
        mem_t = max(mem_t, _oom_floor(c, now, self.oom_lookback))
        cpu_req = max(ceil_cpu(cpu_t), self.cpu_floor)
        mem_req = max(ceil_memory(mem_t), self.memory_floor)
        return Values(
            cpu_request=cpu_req,
            cpu_limit=_proportional(c.limits.cpu, c.requests.cpu, cpu_req),
            memory_request=mem_req,
            memory_limit=_proportional(c.limits.memory, c.requests.memory, mem_req),
        )


def _proportional(limit: float | None, request: float | None, new_request: float) -> float | None:
    """VPA keeps the limit/request ratio; no limit stays no limit."""
    if limit is None:
        return None
    if not request:
        return max(limit, new_request)
    return new_request * max(limit / request, 1.0)


class Replay:
    """Applies recorded values in force (the ``--export`` document) at each day's cycle."""

    def __init__(self, doc: Mapping[str, Mapping[str, Mapping[str, float | None]]], name: str):
        self.name = name
        self.doc = doc

    def decide(self, state: WorkloadState, now: float) -> Outcome:
        day = self.doc.get(str(int(math.floor(now / DAY) * DAY)), {})
        targets = {}
        for name in state.containers:
            rec = day.get(f"{state.spec.workload_id}/{name}")
            if rec is not None:
                targets[name] = Values(
                    cpu_request=rec.get("cpu_request"),
                    memory_request=rec.get("memory_request"),
                    memory_limit=rec.get("memory_limit"),
                )
        if not targets:
            return Outcome("skip", "not-recorded", "no values recorded for this day")
        return _peer_outcome(state, targets, 0.0, "")
