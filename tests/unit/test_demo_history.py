"""The demo's in-memory history answers the stats API like MongoDB would (engine.demo.history)."""

from __future__ import annotations

import asyncio

from engine.core.model import Action, Decision, Execution, Mode, Recommendation, Savings
from engine.demo.history import MemoryHistory, matches
from engine.settings import load_settings
from engine.stats import StatsService


def rec(name: str, at: float, current: float, recommended: float) -> Recommendation:
    return Recommendation(
        id=f"r-{name}-{at}", workload_id=f"shop/Deployment/{name}", namespace="shop",
        kind="Deployment", name=name, replicas=1, containers=[], generated_at=at,
        savings=Savings(current_monthly=current, recommended_monthly=recommended,
                        monthly_delta=recommended - current,
                        monthly_savings=max(0.0, current - recommended)),
    )  # fmt: skip


def decision(r: Recommendation, action: Action, at: float) -> Decision:
    return Decision(
        id=f"d-{r.id}", recommendation_id=r.id, workload_id=r.workload_id, namespace="shop",
        kind="Deployment", name=r.name, action=action, guardrail="autopilot", reason="x",
        mode=Mode.AUTOPILOT, savings=r.savings, decided_at=at,
        collection_cycle="20261130T100000Z",
    )  # fmt: skip


def test_matches_the_query_shapes_the_stats_api_uses() -> None:
    doc = {"id": "a", "at": 5.0, "workload_ids": ["w1", "w2"], "action": "apply"}
    assert matches(doc, {"action": "apply", "workload_ids": "w2", "id": {"$in": ["a", "b"]}})
    assert not matches(doc, {"at": {"$lt": 5.0}})
    assert not matches(doc, {"workload_ids": "w3"})


def test_a_cursor_of_time_and_id_pages_through_decisions_decided_at_one_instant() -> None:
    async def run() -> list[list[str]]:
        history = MemoryHistory(clock=lambda: 0.0)
        base = rec("api", 1.0, 100, 80)
        for i, at in enumerate([3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0]):
            r = base.model_copy(update={"id": f"r{i}"})
            await history.save_decision(decision(r, Action.HOLD, at))
        svc = StatsService(load_settings(kafka_security_protocol="PLAINTEXT"), history)
        pages, cursor = [], {}
        for _ in range(10):
            page = await svc.decisions(limit=2, **cursor)
            pages.append([d["id"] for d in page["items"]])
            if page["next_before"] is None:
                break
            cursor = {"before": page["next_before"], "before_id": page["next_before_id"]}
        return pages

    pages = asyncio.run(run())
    assert pages == [["d-r0", "d-r5"], ["d-r4", "d-r3"], ["d-r2", "d-r1"], ["d-r6"]]
    assert matches({"at": 2.0, "id": "b"}, {"$or": [{"at": {"$lt": 2.0}}, {"at": 2.0, "id": "b"}]})
    assert not matches({"at": 2.0, "id": "c"}, {"$or": [{"at": {"$lt": 2.0}}, {"id": "b"}]})


def test_stats_over_the_memory_history() -> None:
    async def run() -> dict:
        history = MemoryHistory(clock=lambda: 0.0)
        old, new, other = rec("api", 1.0, 100, 80), rec("api", 2.0, 100, 60), rec("db", 2.0, 50, 50)
        for r in (old, new, other):
            await history.save_recommendation(r)
        applied = decision(new, Action.APPLY, 3.0)
        await history.save_decision(decision(old, Action.HOLD, 1.5))
        await history.save_decision(applied)
        await history.save_decision(decision(other, Action.HOLD, 3.0))
        done = Execution(
            id="e1", cycle="c1", workload_ids=[new.workload_id], decision_ids=[applied.id],
            outcome="pushed", commit_sha="abc1234", executed_at=1796032810.0,
        )  # fmt: skip
        await history.save_execution(done)
        svc = StatsService(load_settings(kafka_security_protocol="PLAINTEXT"), history)

        async def no_kafka() -> dict:
            return {"lag": {}, "dead_letters": {}}

        svc.pipeline = no_kafka  # type: ignore[method-assign]
        stats = await svc.stats()
        page = await svc.decisions(limit=2)
        rest = await svc.decisions(limit=2, before=page["next_before"])
        return {"stats": stats, "page": page, "rest": rest, "recs": await svc.recommendations()}

    out = asyncio.run(run())
    s = out["stats"]
    assert s["cost"] == {"current_monthly": 150, "recommended_monthly": 110, "delta_monthly": -40}
    assert s["savings"]["realised_monthly"] == 40 and s["savings"]["pending_monthly"] == 0
    assert s["decisions"]["by_action"] == {"hold": 2, "apply": 1}
    assert s["cycles"][0]["cycle"] == "c1" and s["cycles"][0]["duration_seconds"] == 10.0
    assert [d["decided_at"] for d in out["page"]["items"]] == [3.0, 3.0]
    assert [d["decided_at"] for d in out["rest"]["items"]] == [1.5]
    assert [r["id"] for r in out["recs"]["items"]] == ["r-api-2.0", "r-db-2.0"]
