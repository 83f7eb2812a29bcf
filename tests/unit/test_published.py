"""Which recommendations go on the recommendations topic (engine/core/published.py): pure."""

from __future__ import annotations

import pytest

from engine.core.model import (
    ContainerRecommendation,
    ContainerSpec,
    Recommendation,
    ResourcePair,
    Savings,
)
from engine.core.published import PublishedRecommendations

T = 1_800_000_000.0
HOUR = 3600.0


def rec(
    wid: str = "shop/Deployment/api",
    rid: str = "rec-aaaaaaaaaaaaaaaaaaaaaaaa",
    *,
    replicas: int = 2,
    saved: float = 10.0,
    at: float = T,
    cycle: str = "c1",
    reason: str = "p95 0.2 cores",
) -> Recommendation:
    ns, kind, name = wid.split("/")
    current = ContainerSpec(name="app", requests=ResourcePair(cpu=1.0))
    return Recommendation(
        id=rid,
        workload_id=wid,
        namespace=ns,
        kind=kind,
        name=name,
        replicas=replicas,
        containers=[ContainerRecommendation(name="app", current=current, reasons=[reason])],
        savings=Savings(current_monthly=20.0, recommended_monthly=20.0 - saved),
        generated_at=at,
        collection_cycle=cycle,
    )


def test_the_first_is_published_and_the_same_again_is_not() -> None:
    memo = PublishedRecommendations(6 * HOUR)
    assert memo.due(rec(), T)
    memo.published(rec(), T)
    # a later cycle, a later stamp, another reason text: the same recommendation
    again = rec(at=T + HOUR, cycle="c2", reason="p95 0.21 cores")
    assert not memo.due(again, T + HOUR)


@pytest.mark.parametrize(
    "changed",
    [
        rec(rid="rec-bbbbbbbbbbbbbbbbbbbbbbbb"),  # a target, the confidence, current or policy
        rec(replicas=3),  # scaled: the savings' basis moved
        rec(saved=12.0),  # prices or replicas: other money
    ],
    ids=["id", "replicas", "savings"],
)
def test_a_change_is_published_at_once(changed: Recommendation) -> None:
    memo = PublishedRecommendations(6 * HOUR)
    memo.published(rec(), T)
    assert memo.due(changed, T + 1)


def test_an_unchanged_one_is_published_again_once_the_last_is_refresh_old() -> None:
    memo = PublishedRecommendations(6 * HOUR)
    memo.published(rec(), T)
    assert not memo.due(rec(), T + 6 * HOUR - 1)
    assert memo.due(rec(), T + 6 * HOUR)
    memo.published(rec(), T + 6 * HOUR)  # the clock restarts from the refresh
    assert not memo.due(rec(), T + 7 * HOUR)


def test_workloads_are_apart_and_clear_forgets_every_one() -> None:
    memo = PublishedRecommendations(6 * HOUR)
    memo.published(rec(), T)
    assert memo.due(rec("shop/Deployment/web"), T)  # another workload, never published
    memo.clear("a", "receiver's", sender="arguments")  # a Faust signal's call
    assert len(memo) == 0 and memo.due(rec(), T)


def test_refresh_zero_publishes_every_one_and_remembers_nothing() -> None:
    memo = PublishedRecommendations(0)
    memo.published(rec(), T)
    assert memo.due(rec(), T) and len(memo) == 0
    with pytest.raises(ValueError, match="refresh_seconds"):
        PublishedRecommendations(-1)


def test_the_memo_is_bounded_stale_entries_first_then_all() -> None:
    memo = PublishedRecommendations(6 * HOUR, max_entries=3)
    for i in range(3):
        memo.published(rec(f"shop/Deployment/w{i}"), T + i * 4 * HOUR)  # w0 is stale by w2's
    memo.published(rec("shop/Deployment/w3"), T + 8 * HOUR)
    assert len(memo) == 3 and memo.due(rec("shop/Deployment/w0"), T + 8 * HOUR)
    assert not memo.due(rec("shop/Deployment/w2"), T + 8 * HOUR)
    # none stale: the bound is kept by forgetting all (each is published once more)
    memo.published(rec("shop/Deployment/w4"), T + 8 * HOUR)
    assert len(memo) == 1
    assert not memo.due(rec("shop/Deployment/w4"), T + 8 * HOUR)
