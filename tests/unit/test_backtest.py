"""The closed-loop backtest on small generated histories whose answers are known."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from engine.core.backtest import (
    DAY,
    Backtest,
    BacktestParams,
    ContainerHistory,
    Outcome,
    Values,
    WorkloadState,
)
from engine.core.backtest_score import export, figures
from engine.core.model import ContainerSpec, HpaSpec, ResourcePair, WorkloadSpec
from engine.core.strategies import Autopilot, KrrSimple, Replay, VpaLike

MIB = 2.0**20
GIB = 2.0**30
T0 = 1_700_006_400.0  # a midnight UTC
STEP = 300.0


def history(
    days: float,
    cpu: Callable[[np.ndarray], np.ndarray],
    mem: Callable[[np.ndarray], np.ndarray],
    *,
    name: str = "app",
    cpu_req: float = 2.0,
    mem_req: float = 4 * GIB,
    begin: float = T0,
) -> ContainerHistory:
    ts = begin + STEP * (np.arange(int(days * DAY / STEP)) + 0.5)
    t_days = (ts - T0) / DAY
    n = ts.size
    return ContainerHistory(
        namespace="ns",
        kind="Deployment",
        workload=name,
        container="c",
        ts=ts,
        cpu=np.asarray(cpu(t_days), dtype=np.float64) * np.ones(n),
        memory=np.asarray(mem(t_days), dtype=np.float64) * np.ones(n),
        provisioned={
            "cpu_request": np.full(n, cpu_req),
            "cpu_limit": np.full(n, cpu_req),
            "memory_request": np.full(n, mem_req),
            "memory_limit": np.full(n, mem_req),
        },
    )


def params(start_day: float, end_day: float, **kw: object) -> BacktestParams:
    return BacktestParams(start=T0 + start_day * DAY, end=T0 + end_day * DAY, **kw)  # type: ignore[arg-type]


class Scripted:
    """Applies given values on given cycles (by day number): a strategy with known decisions."""

    name = "scripted"

    def __init__(self, plan: Mapping[int, Values]) -> None:
        self.plan = plan
        self.seen: list[tuple[int, ContainerSpec]] = []

    def decide(self, state: WorkloadState, now: float) -> Outcome:
        day = round((now - T0) / DAY)
        self.seen.append((day, state.container("c")))
        if day in self.plan:
            return Outcome("apply", "script", "", {"c": self.plan[day]}, decision_id=f"d{day}")
        return Outcome("hold", "script")


def in_force(run_export: dict[str, dict[str, dict[str, float | None]]], day: int) -> dict:
    return run_export[str(int(T0 + day * DAY))]["ns/Deployment/app/c"]


# --- the loop's mechanics, with a scripted strategy -------------------------------------------


def test_an_applied_value_is_in_force_from_its_cycle_and_scored_against_usage() -> None:
    h = history(10, lambda d: 0.5 + 0 * d, lambda d: 1 * GIB + 0 * d)
    strat = Scripted(
        {5: Values(cpu_request=0.25, memory_request=0.5 * GIB, memory_limit=0.5 * GIB)}
    )
    (run,) = Backtest([h], params(3, 10)).run([strat])
    doc = export(run)
    assert in_force(doc, 4)["cpu_request"] == 2.0
    assert in_force(doc, 5)["cpu_request"] == 0.25
    total, (wl,) = figures(run, start=T0 + 3 * DAY, end=T0 + 10 * DAY)
    # days 3..9 scored; from day 5 on every sample is above the request and every day an OOM
    assert total.container_days == 7
    assert total.oom_days == 5
    assert total.cpu_above == pytest.approx(5 / 7, abs=0.01)
    assert total.memory_above == pytest.approx(5 / 7, abs=0.01)  # 1 GiB used, 0.5 GiB requested
    assert wl.applies == 1 and total.decreases == 1 and total.increases == 0


def test_an_oom_is_reported_on_the_next_cycle_and_the_observed_peak_is_capped() -> None:
    h = history(8, lambda d: 0.1 + 0 * d, lambda d: np.where(d >= 6.5, 900 * MIB, 300 * MIB))
    strat = Scripted({4: Values(memory_request=512 * MIB, memory_limit=512 * MIB)})
    bt = Backtest([h], params(3, 8))
    (run,) = bt.run([strat])
    seen = dict(strat.seen)
    assert seen[6].last_oom_at is None
    oom = seen[7]
    assert oom.last_oom_at == pytest.approx(T0 + 6.5 * DAY, abs=STEP)
    assert oom.oom_limit_bytes == 512 * MIB
    state = run.workloads["ns/Deployment/app"].containers["c"]
    assert state.usage.summary("memory").max == pytest.approx(512 * MIB, rel=1e-9)
    total, _ = figures(run, start=T0 + 3 * DAY, end=T0 + 8 * DAY)
    assert total.oom_days == 2  # day 6 (second half) and day 7


def test_uncapped_observation_sees_the_real_peak() -> None:
    h = history(8, lambda d: 0.1 + 0 * d, lambda d: np.where(d >= 6.5, 900 * MIB, 300 * MIB))
    strat = Scripted({4: Values(memory_request=512 * MIB, memory_limit=512 * MIB)})
    (run,) = Backtest([h], params(3, 8, cap_observed_memory=False)).run([strat])
    state = run.workloads["ns/Deployment/app"].containers["c"]
    assert state.usage.summary("memory").max == pytest.approx(900 * MIB, rel=1e-9)


def test_a_rollout_clears_the_oom_report() -> None:
    h = history(8, lambda d: 0.1 + 0 * d, lambda d: np.where(d >= 5.5, 900 * MIB, 300 * MIB))
    strat = Scripted({4: Values(memory_limit=512 * MIB), 6: Values(memory_limit=2 * GIB)})
    Backtest([h], params(3, 8)).run([strat])
    seen = dict(strat.seen)
    assert seen[6].last_oom_at is not None
    assert seen[7].last_oom_at is None


def test_missing_days_are_not_scored_and_the_loop_goes_on() -> None:
    full = history(12, lambda d: 0.2 + 0 * d, lambda d: 300 * MIB + 0 * d)
    gap = (full.ts > T0 + 6 * DAY) & (full.ts <= T0 + 9 * DAY)
    h = ContainerHistory(
        **{
            **full.__dict__,
            "ts": full.ts[~gap],
            "cpu": full.cpu[~gap],
            "memory": full.memory[~gap],
            "provisioned": {k: v[~gap] for k, v in full.provisioned.items()},
        }
    )
    strat = Scripted({})
    (run,) = Backtest([h], params(4, 12)).run([strat])
    total, _ = figures(run, start=T0 + 4 * DAY, end=T0 + 12 * DAY)
    assert total.container_days == 5  # days 4, 5, 9, 10, 11
    assert len(strat.seen) == 8  # a decision every cycle, stale state included


def test_a_workload_that_appears_mid_window_is_decided_and_scored_from_then_on() -> None:
    early = history(10, lambda d: 0.2 + 0 * d, lambda d: 300 * MIB + 0 * d)
    late = history(
        4, lambda d: 0.2 + 0 * d, lambda d: 300 * MIB + 0 * d, name="late", begin=T0 + 6 * DAY
    )
    strat = Scripted({8: Values(cpu_request=0.5)})
    (run,) = Backtest([early, late], params(3, 10)).run([strat])
    days = {k: sorted(v) for k, v in run.days.items()}
    assert days["ns/Deployment/late/c"] == [int(T0 + d * DAY) for d in (6, 7, 8, 9)]
    assert run.workloads["ns/Deployment/late"].first_seen == pytest.approx(T0 + 6 * DAY + STEP / 2)
    _, rows = figures(run, start=T0 + 3 * DAY, end=T0 + 10 * DAY)
    late_row = next(r for r in rows if r.workload_id.endswith("/late"))
    # one apply over the 4 days it existed
    assert late_row.rollouts_per_30d == pytest.approx(30 / (4 - STEP / 2 / DAY), rel=1e-6)


def test_saving_is_measured_against_the_provisioned_requests() -> None:
    h = history(6, lambda d: 0.1 + 0 * d, lambda d: 300 * MIB + 0 * d, cpu_req=2.0, mem_req=2 * GIB)
    strat = Scripted({3: Values(cpu_request=1.0, memory_request=1 * GIB, memory_limit=2 * GIB)})
    (run,) = Backtest([h], params(3, 6)).run([strat])
    total, _ = figures(run, start=T0 + 3 * DAY, end=T0 + 6 * DAY)
    assert total.saving == pytest.approx(0.5, rel=1e-9)


def test_hooks_see_every_cycle_and_may_change_the_spec_in_force() -> None:
    h = history(8, lambda d: 0.1 + 0 * d, lambda d: 300 * MIB + 0 * d)
    calls: list[tuple[str, float, str]] = []

    def revert_day5(
        name: str, now: float, states: Mapping[str, WorkloadState], outcomes: Mapping[str, Outcome]
    ) -> None:
        calls.append((name, now, outcomes["ns/Deployment/app"].action))
        if round((now - T0) / DAY) == 5:
            st = states["ns/Deployment/app"]
            c = st.container("c").model_copy(
                update={"requests": ResourcePair(cpu=2.0, memory=4 * GIB)}
            )
            st.spec = st.spec.model_copy(update={"containers": [c]})

    strat = Scripted({4: Values(cpu_request=0.5)})
    (run,) = Backtest([h], params(3, 8), hooks=[revert_day5]).run([strat])
    assert [round((t - T0) / DAY) for _, t, _ in calls] == [3, 4, 5, 6, 7]
    doc = export(run)
    assert in_force(doc, 4)["cpu_request"] == 0.5
    assert in_force(doc, 5)["cpu_request"] == 2.0


# --- the real recommender and gate ------------------------------------------------------------


def cpu_in_force(run_export: dict, day: int) -> float:
    value = in_force(run_export, day)["cpu_request"]
    assert value is not None
    return float(value)


def test_a_peer_follows_a_step_change_in_cpu_on_the_first_cycle_its_p95_sees_it() -> None:
    h = history(20, lambda d: np.where(d >= 12, 0.6, 0.1), lambda d: 300 * MIB + 0 * d)
    (run,) = Backtest([h], params(8, 20)).run([KrrSimple()])
    doc = export(run)
    # P95 over 14 days moves once more than 5% of the window (0.7 d) is at the new level
    assert [round(cpu_in_force(doc, d), 3) for d in range(10, 16)] == [0.1, 0.1, 0.1, 0.6, 0.6, 0.6]
    total, _ = figures(run, start=T0 + 8 * DAY, end=T0 + 20 * DAY)
    assert total.cpu_above == pytest.approx(1 / 12, abs=0.002)  # all of day 12, nothing else


def test_autopilot_leaves_the_cpu_of_an_hpa_managed_workload_alone() -> None:
    h = history(12, lambda d: 0.1 + 0 * d, lambda d: 300 * MIB + 0 * d)
    template = WorkloadSpec(
        namespace="ns",
        kind="Deployment",
        name="app",
        replicas=3,
        hpa=HpaSpec(name="app", min_replicas=2, max_replicas=6, metrics=["cpu"]),
    )
    (run,) = Backtest([h], params(8, 12), specs={"ns/Deployment/app": template}).run(
        [Autopilot(), KrrSimple()]
    )[:1]
    doc = export(run)
    assert all(in_force(doc, d)["cpu_request"] == 2.0 for d in range(8, 12))
    assert in_force(doc, 11)["memory_limit"] < 4 * GIB  # memory still rightsized


def test_peers_skip_hpa_managed_workloads() -> None:
    h = history(12, lambda d: 0.1 + 0 * d, lambda d: 300 * MIB + 0 * d)
    template = WorkloadSpec(
        namespace="ns", kind="Deployment", name="app", hpa=HpaSpec(name="app", metrics=["cpu"])
    )
    runs = Backtest([h], params(8, 12), specs={"ns/Deployment/app": template}).run(
        [KrrSimple(), VpaLike()]
    )
    for run in runs:
        assert run.workloads["ns/Deployment/app"].applies == []


def test_krr_simple_is_p95_of_cpu_and_max_memory_plus_15_percent() -> None:
    rng = np.random.default_rng(3)
    n = int(15 * DAY / STEP)
    cpu = rng.uniform(0.05, 0.45, size=n)
    mem = rng.uniform(200, 400, size=n) * MIB
    h = history(15, lambda d: cpu, lambda d: mem)
    (run,) = Backtest([h], params(14, 15)).run([KrrSimple()])
    doc = export(run)
    window = h.ts > T0 + 0 * DAY  # 14 days before the cycle: all samples up to day 14
    upto = h.ts <= T0 + 14 * DAY
    p95 = float(np.percentile(cpu[window & upto], 95))
    peak = float(mem[upto].max())
    got = in_force(doc, 14)
    assert got["cpu_request"] == pytest.approx(math.ceil(p95 * 1000) / 1000)
    assert got["memory_limit"] == pytest.approx(math.ceil(peak * 1.15 / MIB) * MIB)


def test_export_round_trips_through_replay() -> None:
    rng = np.random.default_rng(11)
    n = int(16 * DAY / STEP)
    hs = [
        history(
            16,
            lambda d, s=s: rng.uniform(0.05, 0.3 + s, size=n),
            lambda d: 300 * MIB * (1 + d / 20),
            name=f"w{s}",
        )
        for s in range(3)
    ]
    p = params(8, 16)
    (ours,) = Backtest(hs, p).run([Autopilot()])
    doc = export(ours)
    (again,) = Backtest(hs, p).run([Replay(doc, "replay")])
    assert export(again) == doc
    a, _ = figures(ours, start=p.start, end=p.end)
    b, _ = figures(again, start=p.start, end=p.end)
    assert (a.saving, a.cpu_above, a.oom_days, a.applies) == (
        b.saving,
        b.cpu_above,
        b.oom_days,
        b.applies,
    )
    assert a.applies > 0


def test_params_reject_an_empty_window() -> None:
    with pytest.raises(ValueError):
        BacktestParams(start=T0, end=T0)
