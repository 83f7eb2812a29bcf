"""Estimator steps: percentiles, headroom, limits, OOM, JVM, floors/caps, rounding, max step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.estimators import EstimatorParams, confidence, estimate_container, quantile
from engine.core.model import Confidence, ContainerSpec, ResourcePair, UsageSummary
from engine.core.quantity import MIB, ceil_cpu, ceil_memory, parse_duration, parse_quantity
from tests.unit.classic_params import classic

NOW = 1_800_000_000.0
DAY = 86400.0
P = classic()


def summary_of(values: np.ndarray, span: float = 8 * DAY) -> UsageSummary:
    """A summary computed from raw samples, the way the aggregator's sketch would report it."""
    q = np.percentile(values, [50, 90, 95, 99])
    return UsageSummary(
        p50=q[0],
        p90=q[1],
        p95=q[2],
        p99=q[3],
        max=float(values.max()),
        mean=float(values.mean()),
        count=len(values),
        first_ts=NOW - span,
        last_ts=NOW,
    )


def flat(value: float, count: int = 2000, span: float = 8 * DAY) -> UsageSummary:
    return summary_of(np.full(count, value), span)


def container(
    cpu: float | None = None,
    mem: float | None = None,
    *,
    cpu_limit: float | None = None,
    mem_limit: float | None = None,
    **kw: object,
) -> ContainerSpec:
    return ContainerSpec(
        name="app",
        requests=ResourcePair(cpu=cpu, memory=mem),
        limits=ResourcePair(cpu=cpu_limit, memory=mem_limit),
        **kw,
    )


def run(c: ContainerSpec, cpu: UsageSummary, mem: UsageSummary, params: EstimatorParams = P):
    return estimate_container(c, {"cpu": cpu, "memory": mem}, params, now=NOW)


# --- known answer ---------------------------------------------------------------------------------


def test_known_answer_p95_plus_headroom_and_memory_above_peak() -> None:
    rng = np.random.default_rng(7)
    cpu_samples = rng.gamma(4.0, 0.05, size=5000)
    mem_samples = rng.normal(300 * MIB, 20 * MIB, size=5000)
    cpu_s, mem_s = summary_of(cpu_samples), summary_of(mem_samples)
    rec = run(container(), cpu_s, mem_s)
    p95 = float(np.percentile(cpu_samples, 95))
    assert rec.cpu_request == math.ceil(p95 * 1.15 * 1000) / 1000
    assert rec.memory_request is not None and rec.memory_request >= mem_samples.max()
    assert rec.memory_request == rec.memory_limit
    assert rec.memory_request % MIB == 0
    assert rec.confidence is Confidence.HIGH


def test_reason_spells_out_the_arithmetic() -> None:
    rec = run(
        container(),
        UsageSummary(
            p50=0.1,
            p90=0.2,
            p95=0.231,
            p99=0.3,
            max=0.5,
            count=500,
            first_ts=NOW - DAY,
            last_ts=NOW,
        ),
        flat(200 * MIB),
    )
    assert rec.cpu_request == 0.266  # 0.231 * 1.15 = 0.26565 -> rounded UP to 266m
    assert "cpu request = p95 0.231 cores + 15% headroom = 266m" in rec.reasons


@settings(max_examples=60, deadline=None)
@given(p95=st.floats(0.02, 8.0), headroom=st.floats(0.0, 1.0), peak=st.floats(150.0, 8000.0))
def test_property_request_is_ceil_of_p95_with_headroom(
    p95: float, headroom: float, peak: float
) -> None:
    params = classic(cpu_headroom=headroom)
    cpu_s = UsageSummary(
        p50=p95 / 2,
        p90=p95,
        p95=p95,
        p99=p95 * 1.1,
        max=p95 * 1.2,
        count=200,
        first_ts=NOW - DAY,
        last_ts=NOW,
    )
    mem_s = UsageSummary(
        p50=peak * MIB / 2,
        p95=peak * MIB * 0.9,
        max=peak * MIB,
        count=200,
        first_ts=NOW - DAY,
        last_ts=NOW,
    )
    rec = run(container(), cpu_s, mem_s, params)
    assert rec.cpu_request == max(0.010, ceil_cpu(p95 * (1 + headroom)))
    assert rec.memory_request is not None and rec.memory_request >= peak * MIB


# --- confidence -----------------------------------------------------------------------------------


def test_no_usage_at_all_is_none_with_reason() -> None:
    rec = estimate_container(container(0.5, 512 * MIB), {}, P, now=NOW)
    assert rec.confidence is Confidence.NONE
    assert rec.cpu_request is None and rec.memory_request is None
    assert rec.reasons[0].startswith("not enough data")


def test_too_few_samples_and_too_short_history() -> None:
    few = flat(0.2, count=99)
    rec = run(container(), few, flat(100 * MIB))
    assert rec.confidence is Confidence.NONE and "cpu 99 samples" in rec.reasons[0]
    short = flat(0.2, span=2.9 * 3600)
    rec = run(container(), short, short)
    assert rec.confidence is Confidence.NONE and rec.cpu_request is None
    assert "need >= 100 samples over >= 3.0h" in rec.reasons[0]


def test_missing_memory_history_means_no_targets() -> None:
    rec = estimate_container(container(), {"cpu": flat(0.2)}, P, now=NOW)
    assert rec.confidence is Confidence.NONE and "memory 0 samples" in rec.reasons[0]


@pytest.mark.parametrize(
    ("span", "level"),
    [
        (3 * 3600, Confidence.LOW),
        (DAY - 1, Confidence.LOW),
        (DAY, Confidence.MEDIUM),
        (7 * DAY - 1, Confidence.MEDIUM),
        (7 * DAY, Confidence.HIGH),
    ],
)
def test_confidence_by_span(span: float, level: Confidence) -> None:
    got, _ = confidence({"cpu": flat(0.1, span=span), "memory": flat(1.0, span=span)}, P)
    assert got is level


# --- CPU ------------------------------------------------------------------------------------------


def test_constant_usage() -> None:
    rec = run(container(), flat(0.2), flat(200 * MIB))
    assert rec.cpu_request == 0.23
    assert rec.memory_request == 230 * MIB


def test_single_spike_moves_memory_not_cpu() -> None:
    cpu = np.full(2000, 0.1)
    cpu[1000] = 4.0
    mem = np.full(2000, 200 * MIB)
    mem[1000] = 900 * MIB
    rec = run(container(), summary_of(cpu), summary_of(mem))
    assert rec.cpu_request == 0.115  # p95 ignores one spike
    assert rec.memory_request is not None and rec.memory_request >= 900 * MIB  # the peak counts


def test_interpolated_percentile() -> None:
    s = UsageSummary(p95=1.0, p99=2.0, max=3.0, count=1)
    assert quantile(s, 97)[0] == pytest.approx(1.5)
    assert quantile(s, 100) == (3.0, "max")


def test_usage_at_cpu_limit_is_flagged_as_throttled() -> None:
    rec = run(container(0.2, 256 * MIB, cpu_limit=0.25), flat(0.25), flat(200 * MIB))
    assert rec.cpu_request == 0.288  # 0.25*1.15 = 0.2875 -> 288m, within 2x of 200m
    assert any("throttled" in r for r in rec.reasons)
    # the current limit is below the new request: raised, keeping the 1.25 limit/request ratio
    assert rec.cpu_limit == ceil_cpu(0.288 * 1.25)


def test_cpu_limit_not_managed_by_default() -> None:
    rec = run(container(0.5, cpu_limit=1.0), flat(0.2), flat(200 * MIB))
    assert rec.cpu_limit is None and any("not managed" in r for r in rec.reasons)


def test_cpu_limit_ratio_and_percentile() -> None:
    s = UsageSummary(
        p50=0.1, p90=0.15, p95=0.2, p99=0.4, max=1.0, count=500, first_ts=NOW - DAY, last_ts=NOW
    )
    ratio = run(container(), s, flat(200 * MIB), classic(cpu_limit_strategy="ratio"))
    assert ratio.cpu_limit == 2 * ratio.cpu_request  # type: ignore[operator]
    pct = run(container(), s, flat(200 * MIB), classic(cpu_limit_strategy="percentile"))
    assert pct.cpu_limit == ceil_cpu(0.4 * 1.15)
    low = run(
        container(),
        flat(0.2),
        flat(200 * MIB),
        classic(cpu_limit_strategy="percentile", cpu_limit_headroom=0.0),
    )
    assert low.cpu_limit == low.cpu_request  # a limit never below the request


# --- memory, OOM, JVM -----------------------------------------------------------------------------


def test_usage_above_memory_limit_raises_to_peak_despite_max_step() -> None:
    rec = run(container(0.1, 100 * MIB, mem_limit=100 * MIB), flat(0.1), flat(400 * MIB))
    # 2x step would give 200Mi; memory below the observed peak is never recommended
    assert rec.memory_request == 400 * MIB
    assert any("observed peak" in r for r in rec.reasons)


@pytest.mark.parametrize(
    ("oom_limit", "expected"),
    [
        (128 * MIB, 228 * MIB),  # +100Mi beats x1.2 for small limits
        (1024 * MIB, ceil_memory(1024 * MIB * 1.2)),  # x1.2 wins for big ones
    ],
)
def test_recent_oom_raises_memory(oom_limit: float, expected: float) -> None:
    c = container(
        0.1, oom_limit, mem_limit=oom_limit, last_oom_at=NOW - 3600, oom_limit_bytes=oom_limit
    )
    rec = run(c, flat(0.1), flat(100 * MIB))
    assert rec.memory_request == expected
    assert any(r.startswith("OOMKilled at") and "raised" in r for r in rec.reasons)


def test_old_oom_is_ignored_and_memory_may_go_down() -> None:
    c = container(0.1, 1024 * MIB, mem_limit=1024 * MIB, last_oom_at=NOW - 8 * DAY)
    rec = run(c, flat(0.1), flat(300 * MIB))
    assert rec.memory_request == 512 * MIB  # halved by the max step, OOM outside the lookback


def test_oom_never_lets_memory_go_down_even_when_usage_is_low() -> None:
    c = container(0.1, 2048 * MIB, mem_limit=2048 * MIB, last_oom_at=NOW - DAY)
    rec = run(c, flat(0.1), flat(100 * MIB))
    assert rec.memory_request is not None and rec.memory_request >= 2048 * MIB * 1.2


def test_jvm_memory_never_below_current_request() -> None:
    c = container(0.5, 2048 * MIB, is_jvm=True)
    rec = run(c, flat(0.1), flat(300 * MIB))
    assert rec.memory_request == 2048 * MIB
    assert any("JVM" in r for r in rec.reasons)
    plain = run(container(0.5, 2048 * MIB), flat(0.1), flat(300 * MIB))
    assert plain.memory_request == 1024 * MIB


# --- floors, caps, rounding, max step -------------------------------------------------------------


def test_floors_visible_in_reasons() -> None:
    rec = run(container(), flat(0.001), flat(5 * MIB))
    assert rec.cpu_request == 0.010 and rec.memory_request == 100 * MIB
    assert "floor 10m applied" in rec.reasons and "floor 100Mi applied" in rec.reasons


def test_caps_applied_and_cap_below_peak_warned() -> None:
    params = classic(cpu_cap="500m", memory_cap="256Mi")
    rec = run(container(), flat(2.0), flat(300 * MIB), params)
    assert rec.cpu_request == 0.5 and rec.memory_request == 256 * MIB
    assert "cap 500m applied" in rec.reasons
    assert any("OOM risk" in r for r in rec.reasons)


def test_rounding_up_to_sane_units() -> None:
    assert ceil_cpu(0.2651) == 0.266
    assert ceil_cpu(0.266) == 0.266
    assert ceil_cpu(0.2660000000001) == 0.266  # float noise does not add a millicore
    assert ceil_memory(100.2 * MIB) == 101 * MIB
    assert ceil_memory(100 * MIB) == 100 * MIB


def test_max_step_halves_and_doubles_at_most() -> None:
    down = run(container(1.0, 1024 * MIB), flat(0.05), flat(100 * MIB))
    assert down.cpu_request == 0.5 and down.memory_request == 512 * MIB
    assert any(r.startswith("max step: cpu lowered") for r in down.reasons)
    up = run(container(0.1, 1024 * MIB), flat(1.0), flat(1000 * MIB))
    assert up.cpu_request == 0.2
    assert "max step: cpu capped at 2x current 100m" in up.reasons


def test_max_step_factor_and_off() -> None:
    four = run(container(1.0), flat(0.05), flat(100 * MIB), classic(max_step=4))
    assert four.cpu_request == 0.25
    off = run(container(1.0), flat(0.05), flat(100 * MIB), classic(max_step=None))
    assert off.cpu_request == ceil_cpu(0.05 * 1.15)


# --- units ----------------------------------------------------------------------------------------


def test_quantity_and_duration_parsing() -> None:
    assert parse_quantity("250m") == 0.25 and parse_quantity("2") == 2.0
    assert parse_quantity(1.5) == 1.5
    assert parse_quantity("512Mi") == 512 * MIB and parse_quantity("1G") == 1e9
    assert parse_duration("24h") == 86400 and parse_duration("7d") == 7 * DAY
    for bad in ("ten", "-5m", "1.5x"):
        with pytest.raises(ValueError):
            parse_quantity(bad)
