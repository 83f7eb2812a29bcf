"""Memory request apart from the limit (QoS Burstable, the default) and its gate rules.

The request is what costs (the scheduler reserves it): a high percentile of the working set +
a buffer.  The limit is what kills: the peak + buffer, the growth projection, the OOM bump.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.estimators import EstimatorParams, ceil_memory, estimate_container
from engine.core.guardrails import protect_memory
from engine.core.model import Action, ContainerSpec, ResourcePair, UsageSummary
from tests.unit.test_guardrails import DAY, MIB, NOW, flat, policy, run, spec

BURSTABLE = EstimatorParams(
    max_step=None,
    memory_growth_horizon=0.0,
    memory_buffer=0.6,
    memory_request_percentile=99.0,
    memory_request_buffer=0.1,
    oom_bump_factor=3.0,
)


def mem(p99: float, peak: float, *, peaks: tuple[float, ...] = ()) -> UsageSummary:
    return UsageSummary(
        p50=p99 / 2,
        p90=p99 * 0.9,
        p95=p99 * 0.95,
        p99=p99,
        max=peak,
        mean=p99 / 2,
        count=4000,
        first_ts=NOW - 14 * DAY,
        last_ts=NOW,
        window_max=peaks,
    )


def container(req: float = 2048 * MIB, lim: float = 2048 * MIB, **kw: object) -> ContainerSpec:
    return ContainerSpec(
        name="app",
        requests=ResourcePair(cpu=1.0, memory=req),
        limits=ResourcePair(memory=lim),
        **kw,
    )


def estimate(c: ContainerSpec, m: UsageSummary, params: EstimatorParams = BURSTABLE):
    return estimate_container(c, {"cpu": flat(0.1), "memory": m}, params, now=NOW)


def test_request_from_the_p99_and_limit_from_the_peak() -> None:
    rec = estimate(container(), mem(300 * MIB, 500 * MIB))
    assert rec.memory_request == ceil_memory(300 * MIB * 1.1)
    assert rec.memory_limit == ceil_memory(500 * MIB * 1.6)
    assert any("QoS Burstable" in r for r in rec.reasons)


def test_guaranteed_keeps_request_equal_to_limit() -> None:
    params = BURSTABLE.model_copy(update={"memory_limit_equals_request": True})
    rec = estimate(container(), mem(300 * MIB, 500 * MIB), params)
    assert rec.memory_request == rec.memory_limit == ceil_memory(500 * MIB * 1.6)


def test_the_request_is_never_above_the_limit() -> None:
    params = BURSTABLE.model_copy(update={"memory_request_buffer": 1.0})  # p99 x 2 > peak x 1.6
    rec = estimate(container(), mem(500 * MIB, 500 * MIB), params)
    assert rec.memory_request == rec.memory_limit == ceil_memory(500 * MIB * 1.6)


def test_an_oom_raises_the_limit_and_never_lowers_the_request() -> None:
    c = container(400 * MIB, 600 * MIB, last_oom_at=NOW - 3600, oom_limit_bytes=600 * MIB)
    rec = estimate(c, mem(100 * MIB, 100 * MIB))
    assert rec.memory_limit == 1800 * MIB  # x3 of the limit it was killed at
    assert rec.memory_request == 400 * MIB  # the p99 says 110Mi: not lowered after a kill
    # an old kill no longer holds the request
    old = container(400 * MIB, 600 * MIB, last_oom_at=NOW - 8 * DAY, oom_limit_bytes=600 * MIB)
    assert estimate(old, mem(100 * MIB, 100 * MIB)).memory_request == ceil_memory(110 * MIB)


def test_request_from_a_percentile_of_the_daily_peaks() -> None:
    peaks = tuple(float(100 * MIB * i) for i in range(1, 11))  # 100..1000 MiB
    params = BURSTABLE.model_copy(
        update={"memory_request_basis": "daily-peaks", "memory_request_percentile": 50.0}
    )
    rec = estimate(container(), mem(300 * MIB, 1000 * MIB, peaks=peaks), params)
    assert rec.memory_request == ceil_memory(550 * MIB * 1.1)
    assert rec.memory_limit == ceil_memory(1000 * MIB * 1.6)


def test_protect_memory_floors_request_and_limit_each_at_its_own_value() -> None:
    c = container(300 * MIB, 900 * MIB, last_oom_at=NOW - 3600, oom_limit_bytes=900 * MIB)
    rec = estimate(c, mem(100 * MIB, 100 * MIB)).model_copy(
        update={"memory_request": 200 * MIB, "memory_limit": 800 * MIB}
    )
    kept = protect_memory(rec, 7 * DAY, NOW)
    assert (kept.memory_request, kept.memory_limit) == (300 * MIB, 900 * MIB)


@pytest.mark.parametrize(("threshold", "action"), [(0.35, Action.HOLD), (None, Action.APPLY)])
def test_a_small_memory_increase_waits_for_a_material_one(
    threshold: float | None, action: Action
) -> None:
    # classic chain: memory = peak + 15%; usage 1043.5 MiB -> 1200 MiB, +20% on 1000 MiB
    p = policy(guardrails={"min_memory_increase": threshold, "min_increase": 0.0})
    s = spec(cpu=0.575, mem=1000 * MIB)
    _, d = run(s, p, cpu=0.5, mem=1200 * MIB / 1.15)
    assert d.action is action


def test_an_oom_fix_is_never_held_by_the_memory_increase_threshold() -> None:
    p = policy(guardrails={"min_memory_increase": 5.0})
    s = spec(cpu=0.575, mem=1000 * MIB, last_oom_at=NOW - 3600, oom_limit_bytes=1000 * MIB)
    _, d = run(s, p, cpu=0.5, mem=1000 * MIB)
    assert (d.action, d.guardrail) == (Action.APPLY, "oom")


# --- in the closed loop -----------------------------------------------------------------------


def test_memory_above_the_request_is_exposure_not_an_oom() -> None:
    from engine.core.backtest import Backtest, Values
    from engine.core.backtest_score import figures
    from tests.unit.test_backtest import GIB, T0, Scripted, history, params

    h = history(10, lambda d: 0.5 + 0 * d, lambda d: 1 * GIB + 0 * d)
    plan = {5: Values(memory_request=0.5 * GIB, memory_limit=2 * GIB)}
    (run,) = Backtest([h], params(3, 10)).run([Scripted(plan)])
    total, _ = figures(run, start=T0 + 3 * DAY, end=T0 + 10 * DAY)
    assert total.oom_days == 0
    assert total.memory_above == pytest.approx(5 / 7, abs=0.01)


def test_the_default_autopilot_sets_a_request_below_the_limit_and_never_ooms_a_flat_load() -> None:
    from engine.core.backtest import Backtest
    from engine.core.backtest_score import export, figures
    from engine.core.strategies import Autopilot
    from tests.unit.test_backtest import GIB, T0, history, in_force, params

    # memory 300 MiB, 5% of the samples (one hour a day) at 400 MiB: p99 400, peak 400
    h = history(14, lambda d: 0.2 + 0 * d, lambda d: np.where(d % 1 < 1 / 24, 400 * MIB, 300 * MIB))
    (run,) = Backtest([h], params(7, 14)).run([Autopilot()])
    total, _ = figures(run, start=T0 + 7 * DAY, end=T0 + 14 * DAY)
    v = in_force(export(run), 13)
    assert v["memory_limit"] == ceil_memory(400 * MIB * 1.6)  # peak + 60%
    # p99 + 10% (the p99 read from the aggregator's quantile sketch: within 1%)
    assert v["memory_request"] == pytest.approx(400 * MIB * 1.1, rel=0.01)
    assert v["memory_request"] < v["memory_limit"] < 4 * GIB
    assert total.oom_days == 0
