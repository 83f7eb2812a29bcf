"""Cost model: prices x requests x replicas x 730 h; savings and increases kept apart."""

from __future__ import annotations

import pytest

from engine.core.cost import DEFAULT_PRICES, GIB, breakdown, hourly, monthly, savings
from engine.core.model import Confidence, ContainerRecommendation, ContainerSpec, ResourcePair
from engine.settings import Settings

MIB = 1024.0 * 1024.0


def rec(
    cur_cpu: float | None,
    cur_mem: float | None,
    new_cpu: float | None,
    new_mem: float | None,
    confidence: Confidence = Confidence.HIGH,
) -> ContainerRecommendation:
    current = ContainerSpec(name="app", requests=ResourcePair(cpu=cur_cpu, memory=cur_mem))
    return ContainerRecommendation(
        name="app",
        current=current,
        cpu_request=new_cpu,
        memory_request=new_mem,
        memory_limit=new_mem,
        confidence=confidence,
    )


def test_opencost_defaults_and_gib_pricing() -> None:
    assert DEFAULT_PRICES.cpu_core_hour == 0.031611
    assert DEFAULT_PRICES.memory_gib_hour == 0.004237
    assert hourly(1.0, GIB, DEFAULT_PRICES) == pytest.approx(0.031611 + 0.004237)
    assert hourly(None, None, DEFAULT_PRICES) == 0.0
    # 2 cores + 4 GiB, 3 replicas, 730 h
    expected = (2 * 0.031611 + 4 * 0.004237) * 3 * 730
    assert monthly(2.0, 4 * GIB, 3, DEFAULT_PRICES) == pytest.approx(expected)


def test_downsizing_is_a_saving() -> None:
    s = savings([rec(1.0, 2 * GIB, 0.5, GIB)], replicas=2)
    assert s.current_monthly == pytest.approx((0.031611 + 2 * 0.004237) * 2 * 730)
    assert s.monthly_delta < 0
    assert s.monthly_savings == pytest.approx(-s.monthly_delta, abs=1e-5)
    assert s.monthly_increase == 0.0


def test_under_provisioned_is_an_increase_not_a_saving() -> None:
    s = savings([rec(0.1, 128 * MIB, 0.4, 512 * MIB)], replicas=1)
    assert s.monthly_savings == 0.0
    assert s.monthly_increase == pytest.approx(s.monthly_delta, abs=1e-5) and s.monthly_delta > 0


def test_mixed_change_reports_both_sides() -> None:
    # CPU 1 -> 0.5 saves 0.5 core; memory 1 -> 3 GiB costs 2 GiB
    s = savings([rec(1.0, GIB, 0.5, 3 * GIB)], replicas=1)
    assert s.monthly_savings == pytest.approx(0.5 * 0.031611 * 730, abs=1e-4)
    assert s.monthly_increase == pytest.approx(2 * 0.004237 * 730, abs=1e-4)
    assert s.monthly_delta == pytest.approx(s.monthly_increase - s.monthly_savings, abs=1e-4)


def test_zero_replicas_cost_nothing() -> None:
    s = savings([rec(1.0, GIB, 0.1, 200 * MIB)], replicas=0)
    assert (s.current_monthly, s.recommended_monthly, s.monthly_savings) == (0.0, 0.0, 0.0)


def test_no_current_request_costs_zero_now() -> None:
    s = savings([rec(None, None, 0.25, 256 * MIB)], replicas=1)
    assert s.current_monthly == 0.0
    assert s.recommended_monthly > 0
    assert s.monthly_increase == pytest.approx(s.recommended_monthly, abs=1e-5)


def test_no_targets_means_no_change_in_cost() -> None:
    s = savings([rec(1.0, GIB, None, None, Confidence.NONE)], replicas=4)
    assert s.current_monthly > 0 and s.monthly_delta == 0.0
    assert s.recommended_monthly == s.current_monthly


def test_prices_from_settings_and_custom_currency() -> None:
    cfg = Settings.model_construct(
        price_cpu_core_hour=0.05, price_memory_gib_hour=0.01, currency="EUR"
    )
    prices = cfg.prices
    s = savings([rec(1.0, GIB, None, None)], replicas=1, prices=prices)
    assert s.currency == "EUR"
    assert s.current_monthly == pytest.approx((0.05 + 0.01) * 730)


def test_breakdown_lines_add_up_to_the_savings() -> None:
    recs = [rec(1.0, GIB, 0.5, 3 * GIB), rec(None, 256 * MIB, 0.1, None)]
    lines = breakdown(recs, replicas=2)
    assert [(ln.container, ln.resource) for ln in lines] == [("app", "cpu"), ("app", "memory")] * 2
    assert lines[2].current_monthly == 0.0 and lines[2].recommended_amount == 0.1
    assert lines[3].delta == 0.0  # no memory target: unchanged
    s = savings(recs, replicas=2)
    assert sum(ln.current_monthly for ln in lines) == pytest.approx(s.current_monthly, abs=1e-5)
    assert sum(ln.delta for ln in lines) == pytest.approx(s.monthly_delta, abs=1e-5)
