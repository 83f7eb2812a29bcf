"""Rightsizing estimators: small pure steps composed per container (VPA estimator-chain spirit).

Every step takes plain numbers and returns an :class:`Estimate` (value + the reasons that shaped
it), so a recommendation can always say *why*: ``"cpu request = p95 0.231 cores + 15% headroom =
266m"``.  Units: CPU in cores, memory in bytes, time in Unix seconds.  "Not enough data" is a
:class:`Confidence.NONE` value, never an exception.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from engine.core.bounds import MAX_CPU_CORES, MAX_MEMORY_BYTES
from engine.core.model import (
    Confidence,
    ContainerRecommendation,
    ContainerSpec,
    Targets,
    UsageSummary,
)
from engine.core.quantity import (
    MIB,
    ceil_cpu,
    ceil_memory,
    cpu_field,
    duration_field,
    fmt_cpu,
    fmt_duration,
    fmt_memory,
    fmt_time,
    memory_field,
)
from engine.core.sketch import FloatArray, IntArray

# Finite and bounded (engine/core/bounds.py): "Infinity", 1e300 or a 400-digit number is refused.
CpuQuantity = Annotated[
    float, BeforeValidator(cpu_field), Field(ge=0, le=MAX_CPU_CORES, allow_inf_nan=False)
]
MemoryQuantity = Annotated[
    float, BeforeValidator(memory_field), Field(ge=0, le=MAX_MEMORY_BYTES, allow_inf_nan=False)
]
Duration = Annotated[
    float, BeforeValidator(duration_field), Field(ge=0, le=10 * 365 * 86400, allow_inf_nan=False)
]


_QUANTILES: tuple[tuple[float, str], ...] = (
    (50.0, "p50"),
    (90.0, "p90"),
    (95.0, "p95"),
    (99.0, "p99"),
    (100.0, "max"),
)


class EstimatorParams(BaseModel):
    """Knobs of the estimator chain; defaults follow KRR "simple" and the VPA recommender."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cpu_percentile: float = Field(95.0, ge=50, le=100)
    cpu_headroom: float = Field(0.05, ge=0, le=5)
    # "adaptive": the percentile (cpu_percentile..100) minimising request + cpu_burst_cost x
    # share of samples above it -- the tail is covered where that is cheap (small or steady
    # workloads), not where it costs many cores (large bursty ones).  "fixed": cpu_percentile.
    cpu_percentile_mode: Literal["fixed", "adaptive"] = "adaptive"
    cpu_burst_cost: CpuQuantity = 2.0  # cores one unit (100%) of samples above request is worth
    cpu_limit_strategy: Literal["none", "ratio", "percentile"] = "none"
    cpu_limit_ratio: float = Field(2.0, ge=1, le=100)
    cpu_limit_percentile: float = Field(99.0, ge=50, le=100)
    cpu_limit_headroom: float = Field(0.15, ge=0, le=5)
    memory_percentile: float = Field(100.0, ge=50, le=100)  # 100 = observed max
    memory_buffer: float = Field(0.60, ge=0, le=5)
    # Memory request and limit apart (QoS Burstable): the limit carries the OOM safety (peak +
    # buffer, growth, OOM bump), the request -- what the scheduler reserves and what costs -- is
    # memory_request_percentile of the samples + memory_request_buffer, never above the limit.
    # True: request = limit (QoS Guaranteed for memory, as KRR; no eviction risk under node
    # memory pressure, at the cost of reserving the peak).
    memory_limit_equals_request: bool = False
    memory_request_percentile: float = Field(99.0, ge=50, le=100)
    # "samples": the percentile of the working-set samples; "daily-peaks": of the daily peaks
    memory_request_basis: Literal["samples", "daily-peaks"] = "samples"
    memory_request_buffer: float = Field(0.10, ge=0, le=5)
    cpu_floor: CpuQuantity = 0.010
    memory_floor: MemoryQuantity = 100 * MIB
    cpu_cap: CpuQuantity | None = None
    memory_cap: MemoryQuantity | None = None
    # at most x factor up or 1/factor down per change (the next step toward the target); None = off
    max_step: float | None = Field(None, ge=1, le=1000)
    # growth-aware memory: the robust (Theil-Sen) trend of the window peaks, projected this far
    memory_growth_horizon: Duration = 7 * 86400.0
    memory_growth_min_windows: int = Field(3, ge=2, le=1000)
    oom_bump_factor: float = Field(3.0, ge=1, le=10)  # after an OOMKill: x factor of the limit...
    oom_bump_min: MemoryQuantity = 100 * MIB  # ...and at least this much more (VPA: 1.2, 100Mi)
    min_samples: int = Field(100, ge=1, le=2**31)
    min_history: Duration = 3 * 3600.0
    oom_lookback: Duration = 7 * 86400.0
    medium_history: Duration = 86400.0
    high_history: Duration = 7 * 86400.0

    @field_validator("cpu_cap", "memory_cap")
    @classmethod
    def _cap_not_below_floor(cls, cap: float | None, info: ValidationInfo) -> float | None:
        floor_name = "cpu_floor" if info.field_name == "cpu_cap" else "memory_floor"
        floor = info.data.get(floor_name)
        if cap is not None and floor is not None and cap < floor:
            fmt = fmt_cpu if floor_name == "cpu_floor" else fmt_memory
            raise ValueError(f"must be >= {floor_name} ({fmt(cap)} < {fmt(floor)})")
        return cap

    @field_validator("high_history")
    @classmethod
    def _high_after_medium(cls, high: float, info: ValidationInfo) -> float:
        medium = info.data.get("medium_history")
        if medium is not None and high < medium:
            raise ValueError("must be >= medium_history")
        return high


@dataclass(frozen=True)
class Estimate:
    value: float | None
    reasons: tuple[str, ...] = ()

    def then(self, value: float | None, reason: str | None = None) -> Estimate:
        return Estimate(value, (*self.reasons, reason) if reason else self.reasons)


# --- reading the usage summary -------------------------------------------------------------------


def quantile(summary: UsageSummary, percentile: float) -> tuple[float, str]:
    """The value at ``percentile`` (50..100), interpolated between the summary's quantiles."""
    for p, name in _QUANTILES:  # a stored quantile (the common case): no interpolation
        if math.isclose(percentile, p):
            return float(getattr(summary, name)), name
    points = [(p, float(getattr(summary, name)), name) for p, name in _QUANTILES]
    for (lo_p, lo_v, lo_n), (hi_p, hi_v, hi_n) in itertools.pairwise(points):
        if lo_p < percentile < hi_p:
            weight = (percentile - lo_p) / (hi_p - lo_p)
            return lo_v + weight * (hi_v - lo_v), f"p{percentile:g} (between {lo_n} and {hi_n})"
    raise ValueError(f"percentile {percentile} outside 50..100")


def confidence(
    summaries: dict[str, UsageSummary], params: EstimatorParams
) -> tuple[Confidence, str]:
    """NONE below ``min_samples``/``min_history`` on any resource; else LOW/MEDIUM/HIGH by span."""
    if not summaries:
        return Confidence.NONE, "not enough data: no usage samples"
    short: list[str] = []
    spans: list[float] = []
    for resource in sorted(summaries):
        s = summaries[resource]
        spans.append(s.span_seconds)
        if s.count < params.min_samples or s.span_seconds < params.min_history:
            short.append(f"{resource} {s.count} samples over {fmt_duration(s.span_seconds)}")
    if short:
        need = f"need >= {params.min_samples} samples over >= {fmt_duration(params.min_history)}"
        return Confidence.NONE, f"not enough data: {', '.join(short)} ({need})"
    span = min(spans)
    if span >= params.high_history:
        level = Confidence.HIGH
    elif span >= params.medium_history:
        level = Confidence.MEDIUM
    else:
        level = Confidence.LOW
    return level, f"confidence {level.value}: {fmt_duration(span)} of history"


# --- CPU -----------------------------------------------------------------------------------------


_ADAPTIVE_PERCENTILES = (90.0, 95.0, 97.0, 98.0, 99.0, 100.0)


def adaptive_candidates(
    summary: UsageSummary, params: EstimatorParams
) -> list[tuple[float, float, str]]:
    """``(score, value, label)`` of every percentile p the adaptive rule weighs, in rising p:
    the score is ``value(p) x (1 + headroom) + cpu_burst_cost x (1 - p/100)``."""
    out = []
    for p in (q for q in _ADAPTIVE_PERCENTILES if q >= params.cpu_percentile - 5):
        value, label = quantile(summary, p)
        score = value * (1 + params.cpu_headroom) + params.cpu_burst_cost * (1 - p / 100)
        out.append((score, value, label))
    return out


def adaptive_percentile(summary: UsageSummary, params: EstimatorParams) -> tuple[float, str]:
    """The percentile p with the lowest score (:func:`adaptive_candidates`; see params)."""
    best: tuple[float, float, str] | None = None
    for score, value, label in adaptive_candidates(summary, params):
        if best is None or score < best[0] - 1e-12:
            best = (score, value, label)
    assert best is not None
    _, value, label = best
    return value, f"{label} (adaptive: the tail is worth covering up to there)"


def cpu_request_base(summary: UsageSummary, params: EstimatorParams) -> Estimate:
    if params.cpu_percentile_mode == "adaptive":
        value, label = adaptive_percentile(summary, params)
    else:
        value, label = quantile(summary, params.cpu_percentile)
    target = value * (1 + params.cpu_headroom)
    return Estimate(
        target,
        (
            f"cpu request = {label} {value:.3f} cores + {params.cpu_headroom:.0%} headroom"
            f" = {fmt_cpu(ceil_cpu(target))}",
        ),
    )


def cpu_limit(
    request: float, summary: UsageSummary, current: ContainerSpec, params: EstimatorParams
) -> Estimate:
    if params.cpu_limit_strategy == "none":
        had = current.limits.cpu
        if had is None or had >= request:
            return Estimate(
                None,
                (
                    "cpu limit: not managed (strategy none, like KRR: no CFS"
                    " throttling from a limit we set)",
                ),
            )
        ratio = had / current.requests.cpu if current.requests.cpu else 1.0
        value = ceil_cpu(request * max(ratio, 1.0))
        return Estimate(
            value,
            (
                f"cpu limit: current {fmt_cpu(had)} is below the new request;"
                f" raised to {fmt_cpu(value)} keeping the limit/request ratio",
            ),
        )
    if params.cpu_limit_strategy == "ratio":
        value = ceil_cpu(request * params.cpu_limit_ratio)
        return Estimate(
            value, (f"cpu limit = {params.cpu_limit_ratio:g} x request = {fmt_cpu(value)}",)
        )
    base, label = quantile(summary, params.cpu_limit_percentile)
    value = ceil_cpu(base * (1 + params.cpu_limit_headroom))
    est = Estimate(
        value,
        (
            f"cpu limit = {label} {base:.3f} cores + "
            f"{params.cpu_limit_headroom:.0%} headroom = {fmt_cpu(value)}",
        ),
    )
    if params.cpu_cap is not None and value > params.cpu_cap:
        value = max(request, math.floor(params.cpu_cap * 1000 + 1e-6) / 1000)
        est = est.then(value, f"cpu limit capped at {fmt_cpu(value)}")
    if value < request:
        est = est.then(request, "cpu limit raised to the request")
    return est


def throttling_note(summary: UsageSummary, current: ContainerSpec) -> str | None:
    limit = current.limits.cpu
    if limit and summary.count and summary.p99 >= 0.95 * limit:
        return (
            f"cpu p99 {summary.p99:.3f} cores is at the current limit {fmt_cpu(limit)}:"
            " usage is throttled, true demand may be higher"
        )
    return None


# --- memory --------------------------------------------------------------------------------------


def memory_base(summary: UsageSummary, params: EstimatorParams) -> Estimate:
    value, label = quantile(summary, params.memory_percentile)
    target = value * (1 + params.memory_buffer)
    what = "memory request = limit" if params.memory_limit_equals_request else "memory limit"
    return Estimate(
        target,
        (
            f"{what} = {label} {fmt_memory(value)} + {params.memory_buffer:.0%}"
            f" buffer = {fmt_memory(ceil_memory(target))}",
        ),
    )


def memory_request(
    limit: Estimate,
    summary: UsageSummary,
    current: ContainerSpec,
    now: float,
    params: EstimatorParams,
) -> Estimate:
    """The memory request when it is not the limit: a high percentile of the working set +
    buffer, never above the limit; not lowered after a recent OOMKill."""
    if params.memory_limit_equals_request or limit.value is None:
        return limit
    peaks = summary.window_max
    if params.memory_request_basis == "daily-peaks" and peaks:
        pct = params.memory_request_percentile
        value = float(np.percentile(np.asarray(peaks, dtype=np.float64), pct))
        label = f"p{pct:g} of {len(peaks)} daily peaks"
    else:
        value, label = quantile(summary, params.memory_request_percentile)
    target = value * (1 + params.memory_request_buffer)
    est = Estimate(
        target,
        (
            f"memory request = {label} {fmt_memory(value)} +"
            f" {params.memory_request_buffer:.0%} = {fmt_memory(ceil_memory(target))}"
            " (QoS Burstable: the limit carries the OOM margin)",
        ),
    )
    at, had = current.last_oom_at, current.requests.memory
    if at is not None and now - at <= params.oom_lookback and had and target < had:
        est = est.then(had, f"OOMKilled at {fmt_time(at)}: memory request not lowered")
    est = jvm_guard(est, current)
    if est.value is not None and est.value > limit.value:
        est = est.then(limit.value, "memory request = the limit (never above it)")
    return est


def current_memory(current: ContainerSpec) -> float | None:
    values = [v for v in (current.requests.memory, current.limits.memory) if v]
    return max(values) if values else None


@functools.lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[FloatArray, IntArray, IntArray, FloatArray]:
    """``x = 0..n-1``, the index pairs ``i < j`` and ``x[j] - x[i]`` (read-only, shared: the
    Theil-Sen fit of every container with ``n`` peaks uses the same ones)."""
    x = np.arange(n, dtype=np.float64)
    i, j = np.triu_indices(n, k=1)
    dx = x[j] - x[i]
    for a in (x, i, j, dx):
        a.flags.writeable = False
    return x, i, j, dx


def _median(values: FloatArray) -> float:
    """``float(np.median(values))`` of a 1-D array, bit for bit (the middle value, or the two
    middle values' sum / 2; NaN if any is NaN), without numpy's generic-axis overhead."""
    if values.size == 0:
        return math.nan
    s = np.sort(values)
    last = float(s[-1])
    if math.isnan(last):
        return math.nan
    mid = s.size // 2
    # numpy's mean of the middle value(s): a sum from 0.0 (so -0.0 comes out 0.0), then / count
    if s.size % 2:
        return 0.0 + float(s[mid])
    return (0.0 + float(s[mid - 1]) + float(s[mid])) / 2.0


def growth(est: Estimate, summary: UsageSummary, params: EstimatorParams) -> Estimate:
    """Memory that grows: the Theil-Sen trend of the window peaks projected ``horizon`` ahead.

    The slope is the median of the pairwise slopes of the peaks (robust to a spike), the level
    the trend's value at the newest window; only growth counts.  The projection + buffer
    replaces the flat estimate when it is higher.
    """
    peaks = summary.window_max
    horizon = params.memory_growth_horizon
    if est.value is None or horizon <= 0 or len(peaks) < params.memory_growth_min_windows:
        return est
    y = np.asarray(peaks, dtype=np.float64)
    x, i, j, dx = _pairs(y.size)
    slope = _median((y[j] - y[i]) / dx)
    if slope <= 0:
        return est
    level = _median(y - slope * x) + slope * x[-1]
    per_day = slope * 86_400.0 / summary.window_seconds
    projected = (level + slope * horizon / summary.window_seconds) * (1 + params.memory_buffer)
    if projected <= est.value:
        return est
    return est.then(
        projected,
        f"memory grows {fmt_memory(per_day)}/day (trend of {y.size} daily peaks): projected"
        f" {fmt_duration(horizon)} ahead + {params.memory_buffer:.0%} = "
        f"{fmt_memory(ceil_memory(projected))}",
    )


def oom_bump(
    est: Estimate, current: ContainerSpec, now: float, params: EstimatorParams
) -> Estimate:
    """A recent OOMKill never lets memory go down and lifts it to max(x factor, + minimum) of
    the limit it was killed at (VPA: x1.2, +100Mi)."""
    at = current.last_oom_at
    if at is None or now - at > params.oom_lookback or est.value is None:
        return est
    oom_limit = current.oom_limit_bytes or current.limits.memory or current_memory(current)
    floor = current.limits.memory or current_memory(current) or 0.0
    if oom_limit:
        floor = max(floor, oom_limit * params.oom_bump_factor, oom_limit + params.oom_bump_min)
    if est.value >= floor:
        return est.then(est.value, f"OOMKilled at {fmt_time(at)}: memory not lowered")
    return est.then(
        floor,
        f"OOMKilled at {fmt_time(at)} with limit "
        f"{fmt_memory(oom_limit or 0)}: memory raised to {fmt_memory(floor)}",
    )


def jvm_guard(est: Estimate, current: ContainerSpec) -> Estimate:
    req = current.requests.memory
    if not current.is_jvm or not req or est.value is None or est.value >= req:
        return est
    return est.then(
        req,
        f"JVM: memory kept at the current request {fmt_memory(req)} (the heap is sized from it)",
    )


# --- shared steps --------------------------------------------------------------------------------


def max_step(est: Estimate, current: float | None, factor: float | None, unit: str) -> Estimate:
    """At most ``factor`` x up or 1/``factor`` down relative to the current value."""
    if est.value is None or factor is None or not current:
        return est
    fmt = fmt_cpu if unit == "cpu" else fmt_memory
    if est.value > current * factor:
        return est.then(
            current * factor, f"max step: {unit} capped at {factor:g}x current {fmt(current)}"
        )
    if est.value < current / factor:
        return est.then(
            current / factor,
            f"max step: {unit} lowered at most to 1/{factor:g} of current {fmt(current)}",
        )
    return est


def not_below_peak(est: Estimate, summary: UsageSummary) -> Estimate:
    """Memory below the observed peak is an OOM waiting to happen; the max step never forces it."""
    if est.value is None or est.value >= summary.max:
        return est
    return est.then(summary.max, f"memory kept at the observed peak {fmt_memory(summary.max)}")


def bounds(est: Estimate, floor: float, cap: float | None, unit: str) -> Estimate:
    """Round up to sane units, then apply the floor and the cap (both visible in the reasons)."""
    if est.value is None:
        return est
    cpu = unit == "cpu"
    value = ceil_cpu(est.value) if cpu else ceil_memory(est.value)
    fmt = fmt_cpu if cpu else fmt_memory
    out = est.then(value)
    if value < floor:
        value = ceil_cpu(floor) if cpu else ceil_memory(floor)
        out = out.then(value, f"floor {fmt(floor)} applied")
    if cap is not None and value > cap:
        value = math.floor(cap * 1000 + 1e-6) / 1000 if cpu else math.floor(cap / MIB) * MIB
        out = out.then(value, f"cap {fmt(cap)} applied")
    return out


# --- the chain -----------------------------------------------------------------------------------


_NO_USAGE = UsageSummary()  # frozen: one shared "no data" summary
_BOTH = ("cpu", "memory")


def usage_view(summary: UsageSummary) -> dict[str, float]:
    return {
        "p50": summary.p50,
        "p90": summary.p90,
        "p95": summary.p95,
        "p99": summary.p99,
        "max": summary.max,
        "count": float(summary.count),
        "span_s": summary.span_seconds,
    }


def estimate_container(
    current: ContainerSpec,
    usage: dict[str, UsageSummary],
    params: EstimatorParams,
    *,
    now: float,
) -> ContainerRecommendation:
    """Compose the steps for one container; NONE confidence yields no targets, only reasons."""
    view = {r: usage_view(s) for r, s in sorted(usage.items())}
    # (an empty summary only for a missing resource: building one per lookup was ~20% here)
    level, why = confidence({r: usage[r] if r in usage else _NO_USAGE for r in _BOTH}, params)
    if level is Confidence.NONE:
        return ContainerRecommendation(
            name=current.name, current=current, usage=view, confidence=level, reasons=[why]
        )
    cpu_s, mem_s = usage["cpu"], usage["memory"]

    # the target: what the estimators say
    cpu_target = bounds(cpu_request_base(cpu_s, params), params.cpu_floor, params.cpu_cap, "cpu")
    mem = memory_base(mem_s, params)
    mem = growth(mem, mem_s, params)
    mem = oom_bump(mem, current, now, params)
    mem = jvm_guard(mem, current)
    mem_target = bounds(mem, params.memory_floor, params.memory_cap, "memory")
    req_target = bounds(
        memory_request(mem_target, mem_s, current, now, params),
        params.memory_floor,
        mem_target.value,
        "memory",
    )
    # the next step toward it: the max-step guardrail, never below the observed peak
    cpu = max_step(cpu_target, current.requests.cpu, params.max_step, "cpu")
    cpu = bounds(cpu, params.cpu_floor, params.cpu_cap, "cpu")
    assert cpu.value is not None and cpu_target.value is not None
    limit = cpu_limit(cpu.value, cpu_s, current, params)
    mem_now = current.limits.memory or current_memory(current)
    mem = max_step(mem_target, mem_now, params.max_step, "memory")
    mem = not_below_peak(mem, mem_s)
    mem = bounds(mem, params.memory_floor, params.memory_cap, "memory")
    assert mem.value is not None and req_target.value is not None
    req = req_target
    if not params.memory_limit_equals_request:
        req = max_step(req_target, current.requests.memory, params.max_step, "memory")
        req = bounds(req, params.memory_floor, mem.value, "memory")
    else:
        req = mem
    if params.memory_cap is not None and mem_s.max > params.memory_cap:
        mem = mem.then(
            mem.value,
            f"cap {fmt_memory(params.memory_cap)} is below the observed"
            f" peak {fmt_memory(mem_s.max)}: OOM risk",
        )
    target = None
    if (cpu.value, mem.value, req.value) != (cpu_target.value, mem_target.value, req_target.value):
        target_limit = cpu_limit(cpu_target.value, cpu_s, current, params)
        target = Targets(
            cpu_request=cpu_target.value,
            cpu_limit=target_limit.value,
            memory_request=req_target.value,
            memory_limit=mem_target.value,
        )

    req_reasons = () if req is mem else req.reasons
    reasons = [why, *cpu.reasons, *limit.reasons, *mem.reasons, *req_reasons]
    note = throttling_note(cpu_s, current)
    if note:
        reasons.append(note)
    return ContainerRecommendation(
        name=current.name,
        current=current,
        usage=view,
        confidence=level,
        cpu_request=cpu.value,
        cpu_limit=limit.value,
        memory_request=req.value,
        memory_limit=mem.value,
        target=target,
        reasons=reasons,
    )
