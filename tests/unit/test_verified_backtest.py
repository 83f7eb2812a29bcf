"""Verified apply in the backtest: an OOM after lowering memory reverts it and holds decreases."""

from __future__ import annotations

import numpy as np

from engine.core.backtest import DAY, Backtest, Values
from engine.core.backtest_score import export, figures
from engine.core.policy import validate_policy
from engine.core.strategies import Autopilot
from engine.core.verified_backtest import VerifiedApply
from tests.unit.classic_params import classic_policy_doc
from tests.unit.test_backtest import GIB, MIB, T0, Scripted, history, in_force, params


def test_an_oom_the_day_after_lowering_memory_reverts_it_and_sets_a_penalty() -> None:
    # 1 GiB of usage, 1.5 GiB in the afternoon of day 4: the limit lowered to 1.2 GiB that
    # morning is OOMKilled; the cycle of day 5 sees it
    h = history(
        9, lambda d: 0.2 + 0 * d, lambda d: np.where((d >= 4.5) & (d < 4.8), 1.5 * GIB, GIB)
    )
    plan = {4: Values(memory_request=1.2 * GIB, memory_limit=1.2 * GIB), 7: Values(cpu_request=1.0)}
    hook = VerifiedApply(frozenset({"scripted"}))
    (run,) = Backtest([h], params(3, 9), hooks=[hook]).run([Scripted(plan)])
    doc = export(run)
    assert in_force(doc, 4)["memory_limit"] == 1.2 * GIB
    assert in_force(doc, 5)["memory_limit"] == 4 * GIB  # reverted at the cycle that saw the OOM
    assert in_force(doc, 5)["memory_request"] == 4 * GIB
    assert hook.reverts == {"scripted": 1}
    state = run.workloads["ns/Deployment/app"]
    assert state.penalty_until == T0 + 5 * DAY + 7 * DAY
    # a later CPU-only change is watched too, and an OOM-free window ends the watch: no revert
    assert in_force(doc, 8)["cpu_request"] == 1.0
    assert hook.reverts == {"scripted": 1}


def test_a_strategy_not_listed_is_left_alone() -> None:
    h = history(
        9, lambda d: 0.2 + 0 * d, lambda d: np.where((d >= 4.5) & (d < 4.8), 1.5 * GIB, GIB)
    )
    hook = VerifiedApply(frozenset({"someone-else"}))
    plan = {4: Values(memory_request=1.2 * GIB, memory_limit=1.2 * GIB)}
    (run,) = Backtest([h], params(3, 9), hooks=[hook]).run([Scripted(plan)])
    assert in_force(export(run), 5)["memory_limit"] == 1.2 * GIB and hook.reverts == {}


def test_the_autopilot_under_penalty_does_not_lower_memory_again() -> None:
    # steady 300 MiB with one 1.5 GiB burst on day 10: the autopilot halves the 2 GiB limit (max
    # step) on day 9 and again to 512 MiB on day 10, is OOMKilled by the burst that afternoon;
    # the gate's own OOM fix raises it at once (x1.2), only the verified variant reverts the cut
    h = history(
        16,
        lambda d: 0.2 + 0 * d,
        lambda d: np.where((d >= 10.5) & (d < 10.7), 1500 * MIB, 300 * MIB),
    )
    # the classic chain (x2 max step, x1.2 OOM bump) makes the cut-then-OOM story of this test
    classic = validate_policy(classic_policy_doc({"id": "classic", "mode": "autopilot"}))
    plain = Autopilot([classic], name="kubefinops")
    verified = Autopilot([classic], name="kubefinops-verified")
    hook = VerifiedApply(frozenset({"kubefinops-verified"}))
    runs = Backtest([h], params(8, 16), hooks=[hook]).run([plain, verified])
    by_name = {r.name: r for r in runs}
    figs = {r.name: figures(r, start=T0 + 8 * DAY, end=T0 + 16 * DAY)[0] for r in runs}
    assert hook.reverts.get("kubefinops-verified", 0) >= 1
    assert hook.reverts.get("kubefinops", 0) == 0
    state = by_name["kubefinops-verified"].workloads["ns/Deployment/app"]
    assert state.penalty_until is not None
    assert state.guardrails.get("penalty", 0) >= 1  # the gate held a decrease under the penalty
    assert figs["kubefinops-verified"].oom_days <= figs["kubefinops"].oom_days
    plain_doc, verified_doc = export(by_name["kubefinops"]), export(by_name["kubefinops-verified"])
    assert in_force(plain_doc, 10)["memory_limit"] == in_force(verified_doc, 10)["memory_limit"]
    assert in_force(plain_doc, 10)["memory_limit"] == 512 * MIB
    assert in_force(plain_doc, 11)["memory_limit"] == 615 * MIB  # the loop alone: the OOM fix
    assert in_force(verified_doc, 11)["memory_limit"] == GIB  # reverted to before the cut
    # and under the penalty no decrease follows for the rest of the window
    assert all(in_force(verified_doc, d)["memory_limit"] == GIB for d in range(11, 16))
