"""decide(): every guardrail, their documented order, and deterministic decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from engine.core.guardrails import decide, hpa_resources
from engine.core.model import (
    Action,
    ContainerSpec,
    HpaSpec,
    Mode,
    ResourcePair,
    UsageSummary,
    WorkloadSpec,
)
from engine.core.policy import Policy, validate_policy
from engine.core.recommend import recommend
from tests.fakes import flat_summary
from tests.unit.classic_params import classic_policy_doc

SAT_3AM = datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()
NOW = SAT_3AM
DAY = 86400.0
MIB = 1024.0 * 1024.0


def flat(value: float) -> UsageSummary:
    return flat_summary(value, now=NOW)


def spec(
    *,
    cpu: float = 1.0,
    mem: float = 1024 * MIB,
    hpa: HpaSpec | None = None,
    annotations: dict[str, str] | None = None,
    ns: str = "smarthealth",
    **container: Any,
) -> WorkloadSpec:
    c = ContainerSpec(
        name="app",
        requests=ResourcePair(cpu=cpu, memory=mem),
        limits=ResourcePair(memory=mem),
        **container,
    )
    return WorkloadSpec(
        namespace=ns,
        kind="Deployment",
        name="patient-api",
        replicas=2,
        containers=[c],
        hpa=hpa,
        annotations=annotations or {},
    )


def policy(mode: str = "autopilot", **kw: Any) -> Policy:
    return validate_policy(classic_policy_doc({"id": "p", "mode": mode, **kw}))


def run(
    s: WorkloadSpec,
    p: Policy,
    *,
    cpu: float = 0.5,
    mem: float = 500 * MIB,
    last_at: float | None = None,
    last_id: str | None = None,
    now: float = NOW,
    usage: dict[str, dict[str, UsageSummary]] | None = None,
):
    rec = recommend(
        s,
        usage if usage is not None else {"app": {"cpu": flat(cpu), "memory": flat(mem)}},
        p,
        now=now,
    )
    return rec, decide(rec, s, p, last_applied_at=last_at, last_applied_id=last_id, now=now)


def test_autopilot_applies_a_real_change() -> None:
    rec, d = run(spec(), policy())
    assert (d.action, d.guardrail) == (Action.APPLY, "autopilot")
    assert d.recommendation_id == rec.id and d.policy_id == "p" and d.policy_version == 1
    assert d.mode is Mode.AUTOPILOT and d.containers == rec.containers
    assert d.savings == rec.savings and d.decided_at == NOW


@pytest.mark.parametrize(
    ("s", "p", "kw", "action", "guardrail"),
    [
        # exclusion beats observe mode
        (
            spec(annotations={"kubefinops.io/exclude": "true"}),
            policy("observe"),
            {},
            Action.SKIP,
            "excluded",
        ),
        (spec(ns="kube-system"), policy(), {}, Action.SKIP, "excluded"),
        # observe beats not-enough-data
        (spec(), policy("observe"), {"usage": {}}, Action.SKIP, "observe"),
        (spec(), policy(), {"usage": {}}, Action.SKIP, "not-enough-data"),
        # min-change beats cooldown
        (
            spec(cpu=0.55, mem=560 * MIB),
            policy(),
            {"cpu": 0.5, "mem": 500 * MIB, "last_at": NOW - 60},
            Action.HOLD,
            "min-change",
        ),
        # cooldown beats schedule
        (
            spec(),
            policy(schedule={"windows": [{"days": ["mon"]}]}),
            {"last_at": NOW - 3600},
            Action.HOLD,
            "cooldown",
        ),
        # schedule beats recommend-only
        (
            spec(),
            policy("recommend", schedule={"windows": [{"days": ["mon"]}]}),
            {},
            Action.HOLD,
            "schedule",
        ),
        (spec(), policy("recommend"), {}, Action.HOLD, "recommend-only"),
        (
            spec(),
            policy(schedule={"windows": [{"days": ["sat"], "start_hour": 2, "end_hour": 4}]}),
            {"last_at": NOW - 2 * DAY},
            Action.APPLY,
            "autopilot",
        ),
    ],
)
def test_guardrail_order(
    s: WorkloadSpec, p: Policy, kw: dict[str, Any], action: Action, guardrail: str
) -> None:
    _, d = run(s, p, **kw)
    assert (d.action, d.guardrail) == (action, guardrail), d.reason


def test_not_enough_data_reason_is_the_estimator_reason() -> None:
    _, d = run(
        spec(),
        policy(),
        usage={"app": {"cpu": flat(0.1).model_copy(update={"count": 5}), "memory": flat(MIB)}},
    )
    assert d.guardrail == "not-enough-data" and d.reason.startswith("not enough data: cpu 5")


def test_min_change_reason_and_threshold() -> None:
    _, d = run(spec(cpu=0.55, mem=560 * MIB), policy(), cpu=0.5, mem=500 * MIB)
    # 0.5*1.15 = 575m vs 550m (4.5%); 575Mi vs 560Mi (2.7%)
    assert d.reason.startswith("largest change 4.5% (cpu request of app) is below the 10%")
    _, d = run(
        spec(cpu=0.55, mem=560 * MIB),
        policy(guardrails={"min_change": 0.04}),
        cpu=0.5,
        mem=500 * MIB,
    )
    assert d.action is Action.APPLY


def test_no_change_at_all_holds_even_with_zero_threshold() -> None:
    _, d = run(spec(cpu=0.575, mem=575 * MIB), policy(guardrails={"min_change": 0}))
    assert (d.action, d.guardrail) == (Action.HOLD, "min-change")
    assert "no target differs" in d.reason


def test_one_big_change_is_enough() -> None:
    _, d = run(spec(cpu=0.575, mem=2048 * MIB), policy())  # cpu unchanged, memory halves
    assert d.action is Action.APPLY


def test_hpa_on_cpu_memory_only_drops_cpu_and_recomputes_savings() -> None:
    s = spec(hpa=HpaSpec(name="patient-api", metrics=["cpu"]))
    rec, d = run(s, policy())
    c = d.containers[0]
    assert d.action is Action.APPLY
    assert c.cpu_request is None and c.memory_request == rec.containers[0].memory_request
    assert any("HPA patient-api scales on cpu" in r for r in c.reasons)
    assert d.savings.monthly_savings < rec.savings.monthly_savings  # the CPU saving is gone


def test_hpa_without_metrics_means_cpu() -> None:
    assert hpa_resources(spec(hpa=HpaSpec(name="h"))) == {"cpu"}
    assert hpa_resources(spec(hpa=HpaSpec(name="h", metrics=["requests_per_second"]))) == set()
    assert hpa_resources(spec()) == set()


@pytest.mark.parametrize(
    ("metrics", "rule", "action", "guardrail"),
    [
        (["cpu"], "skip", Action.SKIP, "hpa-conflict"),
        (["cpu", "memory"], "memory-only", Action.SKIP, "hpa-conflict"),
        (["cpu"], "allow", Action.APPLY, "autopilot"),
        (["requests_per_second"], "skip", Action.APPLY, "autopilot"),
    ],
)
def test_hpa_rules(metrics: list[str], rule: str, action: Action, guardrail: str) -> None:
    _, d = run(spec(hpa=HpaSpec(name="h", metrics=metrics)), policy(guardrails={"hpa": rule}))
    assert (d.action, d.guardrail) == (action, guardrail)


def test_hpa_memory_only_with_only_cpu_change_drops_cpu_then_holds_on_min_change() -> None:
    s = spec(cpu=1.0, mem=575 * MIB, hpa=HpaSpec(name="h", metrics=["cpu"]))
    _, d = run(s, policy())
    # memory is unchanged (575Mi) so after dropping CPU there is nothing to do: the memory target
    # is still a target (no hpa-conflict skip), and min-change holds it as no change
    assert d.containers[0].cpu_request is None
    assert (d.action, d.guardrail) == (Action.HOLD, "min-change")


def test_oom_guardrail_never_decreases_memory() -> None:
    s = spec(mem=1024 * MIB, last_oom_at=NOW - 3600, oom_limit_bytes=1024 * MIB)
    rec, d = run(s, policy(estimator={"oom_lookback": "7d"}), mem=300 * MIB)
    assert rec.containers[0].memory_request is not None
    assert d.containers[0].memory_request is not None
    assert d.containers[0].memory_request >= 1024 * MIB
    # a recommendation built elsewhere (e.g. an older estimator) is still lifted by the gate
    low = rec.model_copy(
        update={
            "containers": [
                rec.containers[0].model_copy(
                    update={"memory_request": 256 * MIB, "memory_limit": 256 * MIB}
                )
            ]
        }
    )
    d2 = decide(low, s, policy(), last_applied_at=None, last_applied_id=None, now=NOW)
    assert d2.containers[0].memory_request == 1024 * MIB
    assert any(r.startswith("oom guardrail") for r in d2.containers[0].reasons)
    ignoring = decide(
        low,
        s,
        policy(guardrails={"oom": "ignore"}),
        last_applied_at=None,
        last_applied_id=None,
        now=NOW,
    )
    assert ignoring.containers[0].memory_request == 256 * MIB


def test_already_applied_by_recommendation_or_decision_id() -> None:
    rec, first = run(spec(), policy())
    assert first.action is Action.APPLY
    again = decide(
        rec, spec(), policy(), last_applied_at=None, last_applied_id=first.id, now=NOW + 60
    )
    assert (again.action, again.guardrail) == (Action.SKIP, "already-applied")
    by_rec = decide(rec, spec(), policy(), last_applied_at=None, last_applied_id=rec.id, now=NOW)
    assert by_rec.guardrail == "already-applied"
    other = decide(
        rec, spec(), policy(), last_applied_at=None, last_applied_id="dec-other", now=NOW
    )
    assert other.action is Action.APPLY


def test_decision_ids_are_deterministic() -> None:
    rec, d1 = run(spec(), policy())
    d2 = decide(rec, spec(), policy(), last_applied_at=None, last_applied_id=None, now=NOW + 5)
    assert d1.id == d2.id and d1.id.startswith("dec-")
    held = decide(
        rec, spec(), policy("recommend"), last_applied_at=None, last_applied_id=None, now=NOW
    )
    assert held.id != d1.id


def test_decision_round_trips_the_wire() -> None:
    _, d = run(spec(), policy())
    assert type(d).model_validate_json(d.model_dump_json()) == d
