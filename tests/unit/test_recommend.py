"""recommend(): estimators + cost per workload, deterministic ids, honest reasons."""

from __future__ import annotations

import pytest

from engine.core.cost import Prices
from engine.core.model import Confidence, UsageSummary, WorkloadSpec
from engine.core.policy import validate_policy
from engine.core.quantity import ceil_cpu
from engine.core.recommend import recommend
from tests.fakes import CLASSIC_POLICY, MIB, REC_NOW, flat_usage, workload_spec

NOW = REC_NOW


def spec(
    replicas: int = 3,
    *,
    cpu: float | None = 1.0,
    mem: float | None = 1024 * MIB,
    names: tuple[str, ...] = ("app",),
) -> WorkloadSpec:
    return workload_spec({n: (cpu, mem) for n in names}, replicas=replicas)


def usage(
    cpu: float = 0.6, mem: float = 600 * MIB, names: tuple[str, ...] = ("app",)
) -> dict[str, dict[str, UsageSummary]]:
    return flat_usage({n: (cpu, mem) for n in names})


def test_composes_targets_and_savings() -> None:
    rec = recommend(spec(), usage(), CLASSIC_POLICY, now=NOW)
    c = rec.containers[0]
    assert rec.workload_id == "smarthealth/Deployment/patient-api" and rec.replicas == 3
    assert c.cpu_request == ceil_cpu(0.6 * 1.15)
    assert c.memory_request == 690 * MIB and c.confidence is Confidence.HIGH
    assert c.usage["cpu"]["p95"] == 0.6 and c.usage["memory"]["count"] == 2000
    assert rec.savings.monthly_savings > 0 and rec.savings.monthly_increase == 0
    assert rec.generated_at == NOW


def test_ids_are_deterministic_and_content_based() -> None:
    a = recommend(spec(), usage(), CLASSIC_POLICY, now=NOW)
    b = recommend(spec(), usage(), CLASSIC_POLICY, now=NOW + 3600)
    assert a.id == b.id and a.id.startswith("rec-")
    assert recommend(spec(), usage(cpu=0.3), CLASSIC_POLICY, now=NOW).id != a.id
    bumped = CLASSIC_POLICY.model_copy(update={"version": 2})
    assert recommend(spec(), usage(), bumped, now=NOW).id != a.id
    assert recommend(spec(cpu=2.0), usage(), CLASSIC_POLICY, now=NOW).id != a.id


def test_no_data_container_keeps_current_cost() -> None:
    rec = recommend(spec(), {}, CLASSIC_POLICY, now=NOW)
    c = rec.containers[0]
    assert c.confidence is Confidence.NONE and c.cpu_request is None
    assert c.reasons[0].startswith("not enough data")
    assert rec.savings.monthly_delta == 0 and rec.savings.current_monthly > 0


def test_missing_current_requests_are_said_and_cost_zero() -> None:
    rec = recommend(spec(cpu=None, mem=None), usage(), CLASSIC_POLICY, now=NOW)
    reasons = rec.containers[0].reasons
    assert "no current cpu request: current cpu cost counted as 0" in reasons
    assert "no current memory request: current memory cost counted as 0" in reasons
    assert rec.savings.current_monthly == 0 and rec.savings.monthly_increase > 0


def test_zero_replicas() -> None:
    rec = recommend(spec(replicas=0), usage(), CLASSIC_POLICY, now=NOW)
    assert rec.containers[0].cpu_request is not None
    assert any(r.startswith("0 replicas") for r in rec.containers[0].reasons)
    assert rec.savings.current_monthly == 0 and rec.savings.recommended_monthly == 0


def test_container_selector_leaves_others_unchanged() -> None:
    policy = validate_policy({"id": "sidecars", "selectors": {"containers": ["istio-*"]}})
    rec = recommend(
        spec(names=("app", "istio-proxy")), usage(names=("app", "istio-proxy")), policy, now=NOW
    )
    app, proxy = rec.containers
    assert app.cpu_request is None and "not selected by policy sidecars" in app.reasons[0]
    assert proxy.cpu_request is not None


def test_policy_estimator_knobs_are_used() -> None:
    policy = validate_policy({"id": "p", "estimator": {"cpu_headroom": 0.5, "max_step": None}})
    rec = recommend(spec(), usage(cpu=0.2), policy, now=NOW)
    assert rec.containers[0].cpu_request == pytest.approx(0.3)


def test_prices_are_used() -> None:
    cheap = recommend(
        spec(),
        usage(),
        CLASSIC_POLICY,
        now=NOW,
        prices=Prices(cpu_core_hour=0.0, memory_gib_hour=0.0),
    )
    assert cheap.savings.current_monthly == 0.0
    dear = recommend(
        spec(),
        usage(),
        CLASSIC_POLICY,
        now=NOW,
        prices=Prices(cpu_core_hour=1.0, memory_gib_hour=0.0),
    )
    assert dear.savings.current_monthly == pytest.approx(1.0 * 3 * 730)
