"""/metrics stays bounded at fleet scale: per-workload series for the top workloads only."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from engine.core.model import (
    Confidence,
    ContainerRecommendation,
    ContainerSpec,
    Recommendation,
    ResourcePair,
    Savings,
)
from engine.metrics import REGISTRY, FleetGauges, scrape

N = 10_000
NAMESPACES = 20


def _rec(i: int) -> Recommendation:
    ns, name = f"team-{i % NAMESPACES}", f"svc-{i:05d}"
    current = 10.0 + (i % 97)
    recommended = current - (i % 13) * 0.5  # pending savings 0..6
    containers = [
        ContainerRecommendation(
            name=c,
            current=ContainerSpec(name=c, requests=ResourcePair(cpu=0.5, memory=2.0**29)),
            cpu_request=0.25 + i * 1e-6,
            memory_request=2.0**28,
            confidence=Confidence.HIGH,
            usage={"cpu": {"p95": 0.2}, "memory": {"p95": 2.0**27}},
        )
        for c in ("app", "sidecar")
    ]
    return Recommendation(
        id=f"r{i}", workload_id=f"{ns}/Deployment/{name}", namespace=ns, kind="Deployment",
        name=name, replicas=2, containers=containers,
        savings=Savings(current_monthly=current, recommended_monthly=recommended),
        generated_at=1.0,
    )  # fmt: skip


@pytest.fixture
def recs() -> list[Recommendation]:
    return [_rec(i) for i in range(N)]


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    FleetGauges(top=0).refresh(0.0)  # leave no series behind for other tests


def _series(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}\{{.*$", text, flags=re.M)


def test_metrics_stay_small_at_ten_thousand_workloads(recs: list[Recommendation]) -> None:
    fleet = FleetGauges(top=100)
    for r in recs:
        fleet.observe(r, now=100.0)
    fleet.refresh(now=100.0)
    text = generate_latest(REGISTRY).decode()
    assert len(text) < 256 * 1024, len(text)
    workloads = {re.search(r'workload="([^"]+)"', s).group(1)  # type: ignore[union-attr]
                 for s in _series(text, "kubefinops_monthly_cost_current")}  # fmt: skip
    assert len(workloads) == 100
    # the exported ones are those with the most pending savings
    pending = sorted(recs, key=lambda r: (-(r.savings.current_monthly
                     - r.savings.recommended_monthly), r.workload_id))  # fmt: skip
    assert workloads == {r.name for r in pending[:100]}
    # the namespace totals still cover every workload
    totals = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^kubefinops_namespace_monthly_cost_current\{namespace="([^"]+)"\} (\S+)$', text, re.M
        )
    }
    assert len(totals) == NAMESPACES
    assert sum(totals.values()) == pytest.approx(sum(r.savings.current_monthly for r in recs))
    assert f'kubefinops_workloads_tracked{{scope="all"}} {float(N)}' in text


def test_without_the_cap_the_same_fleet_is_far_larger(recs: list[Recommendation]) -> None:
    """The bound is what keeps it small (this is the size the cap avoids)."""
    capped, uncapped = FleetGauges(top=100), FleetGauges(top=N)
    for r in recs[:2000]:
        capped.observe(r, now=0.0)
        uncapped.observe(r, now=0.0)
    capped.refresh(0.0)
    small = len(generate_latest(REGISTRY))
    uncapped.refresh(0.0)
    large = len(generate_latest(REGISTRY))
    assert large > 10 * small


def test_workloads_not_refreshed_expire(recs: list[Recommendation]) -> None:
    fleet = FleetGauges(top=10, stale_seconds=60.0)
    for r in recs[:50]:
        fleet.observe(r, now=0.0)
    fleet.observe(recs[50], now=100.0)
    fleet.refresh(now=100.0)
    assert len(fleet) == 1
    text = generate_latest(REGISTRY).decode()
    (only,) = _series(text, "kubefinops_monthly_cost_current")
    assert recs[50].name in only


def test_scrape_refreshes_the_module_fleet_first() -> None:
    from engine.metrics import FLEET

    FLEET.observe(_rec(7), now=10.0)
    try:
        text = scrape(now=10.0).decode()
        assert len(_series(text, "kubefinops_request_recommended")) == 4  # 2 containers x 2
    finally:
        FLEET.stale_seconds, saved = -1.0, FLEET.stale_seconds
        FLEET.refresh(10.0)  # expires everything
        FLEET.stale_seconds = saved


def test_a_scrape_restricted_to_names_gives_those_and_skips_the_fleet() -> None:
    """``scrape(names=...)`` (``/metrics?name[]=``): only the series asked for; the fleet's
    per-workload series are refreshed only when one of theirs is asked for."""
    from engine.metrics import FLEET, RECORDS_PROCESSED

    saved = FLEET.stale_seconds
    FLEET.stale_seconds = -1.0
    FLEET.refresh(now=float("inf"))  # FLEET is the process's: drop what earlier tests left
    FLEET.stale_seconds = saved
    RECORDS_PROCESSED.labels("aggregator").inc()
    FLEET.observe(_rec(7), now=10.0)
    try:
        FLEET.stale_seconds = -1.0  # a refresh would expire the entry
        text = scrape(now=10.0, names=["kubefinops_records_processed_total"]).decode()
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        assert samples and all(
            line.startswith("kubefinops_records_processed_total{") for line in samples
        ), samples
        assert len(FLEET) == 1  # not refreshed: nothing asked for its series
        text = scrape(now=10.0, names=["kubefinops_workloads_tracked"]).decode()
        assert len(FLEET) == 0  # asked for one of the fleet's: refreshed (and expired)
        assert 'kubefinops_workloads_tracked{scope="all"} 0.0' in text
        assert "kubefinops_records_processed" not in text
    finally:
        FLEET.stale_seconds = saved
        FLEET.refresh(10.0)


def _ns_totals(text: str, name: str) -> dict[str, float]:
    pattern = rf'^{name}\{{namespace="([^"]+)"\}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def test_namespace_cost_at_target_next_to_the_step() -> None:
    """A step that falls short of its target: the target's cost is exported beside the step's;
    a recommendation without a separate target counts its step as its target."""
    short = _rec(40)  # team-0: 50.0 now, next step 49.5, target 30.0
    short = short.model_copy(
        update={"target_savings": Savings(current_monthly=50.0, recommended_monthly=30.0)}
    )
    reached = _rec(20)  # team-0: 30.0 now, step = target 26.5
    other = _rec(1)  # team-1: 11.0 now, step = target 10.5
    fleet = FleetGauges(top=1)  # the namespace totals cover workloads outside the top
    for r in (short, reached, other):
        fleet.observe(r, now=0.0)
    fleet.refresh(0.0)
    text = generate_latest(REGISTRY).decode()
    step = _ns_totals(text, "kubefinops_namespace_monthly_cost_recommended")
    target = _ns_totals(text, "kubefinops_namespace_monthly_cost_target")
    assert step == {"team-0": pytest.approx(49.5 + 26.5), "team-1": pytest.approx(10.5)}
    assert target == {"team-0": pytest.approx(30.0 + 26.5), "team-1": pytest.approx(10.5)}
