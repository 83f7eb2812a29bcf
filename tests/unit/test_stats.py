"""The stats API's definitions (engine.core.stats) on hand-made records."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core import stats
from engine.core.model import MetricsBatch
from engine.core.usage import ContainerUsage

DAY = 86400.0


def rec(wid: str, rid: str, current: float, recommended: float, **extra: object) -> dict:
    return {
        "id": rid,
        "workload_id": wid,
        "namespace": wid.split("/")[0],
        "savings": {
            "currency": "EUR",
            "current_monthly": current,
            "recommended_monthly": recommended,
            "monthly_delta": recommended - current,
            "monthly_savings": max(0.0, current - recommended),
            "monthly_increase": max(0.0, recommended - current),
        },
        "containers": extra.get("containers", []),
    }


def test_fleet_pending_and_realised() -> None:
    recs = [rec("a/D/x", "r1", 100, 60), rec("a/D/y", "r2", 50, 40), rec("b/D/z", "r3", 10, 30)]
    latest = {
        "a/D/x": {"id": "d1", "action": "apply", "recommendation_id": "r1"},  # executed
        "a/D/y": {"id": "d2", "action": "apply", "recommendation_id": "r2"},  # not executed yet
        "b/D/z": {"id": "d3", "action": "hold", "recommendation_id": "r3"},
    }
    applied = [
        {"id": "d0", "savings": {"monthly_savings": 7.5}},  # an earlier change of x
        {"id": "d1", "savings": {"monthly_savings": 40.0}},
        {"id": "d2", "savings": {"monthly_savings": 10.0}},
    ]
    executions = [
        {"decision_ids": ["d0"], "outcome": "pushed"},
        {"decision_ids": ["d1"], "outcome": "committed"},
        {"decision_ids": ["d2"], "outcome": "failed"},
    ]
    doc = stats.fleet(recs, latest, applied, executions)
    assert doc["currency"] == "EUR" and doc["workloads"] == 3
    assert doc["cost"] == {"current_monthly": 160, "recommended_monthly": 130, "delta_monthly": -30}
    # x is done; y's apply failed so it is still pending; z is held: pending, saves nothing
    assert doc["savings"] == {
        "pending_monthly": 10.0,
        "realised_monthly": 47.5,
        "applied_changes": 2,
    }


def test_counts_top_risks_cycles_and_links() -> None:
    rows = [{"_id": "hold", "n": 2}, {"_id": "apply", "n": 5}, {"_id": "skip", "n": 2}]
    assert stats.counts(rows) == {"apply": 5, "hold": 2, "skip": 2}
    under = {
        "name": "app",
        "cpu_request": 0.8,
        "memory_request": 100.0,
        "current": {"requests": {"cpu": 0.5, "memory": 100.0}, "last_oom_at": 1000.0},
        "confidence": "high",
    }
    recs = [rec("a/D/x", "r1", 100, 60), rec("a/D/u", "r2", 5, 9, containers=[under])]
    assert stats.top_opportunities(recs) == [
        {"workload_id": "a/D/x", "monthly_savings": 40, "monthly_delta": -40, "confidence": []}
    ]
    risks = stats.risks(recs, now=1000.0 + DAY)
    assert [(r["kind"], r.get("resource")) for r in risks] == [
        ("under-provisioned", "cpu"),
        ("oom", None),
    ]
    assert (
        stats.risks(recs, now=1000.0 + 8 * DAY)[-1]["kind"] == "under-provisioned"
    )  # OOM aged out
    cycles = stats.cycles(
        [
            {
                "cycle": "c2",
                "outcome": "pushed",
                "executed_at": 130.0,
                "workload_ids": ["a"],
                "decision_ids": ["d"],
            }
        ],
        {"c2": 100.0},
    )
    assert cycles[0]["duration_seconds"] == 30.0 and cycles[0]["workloads"] == 1
    assert stats.commit_url("https://git.example.com/org/gitops.git", "abc") == (
        "https://git.example.com/org/gitops/commit/abc"
    )
    assert stats.commit_url("file:///tmp/repo", "abc") is None


def test_daily_usage_is_one_point_per_window() -> None:
    cu = ContainerUsage(window_seconds=int(DAY))
    rng = np.random.default_rng(3)
    values = {}
    for day in range(3):
        ts = (day + 1) * DAY + np.arange(0, DAY, 60)
        cpu = rng.uniform(0.1, 1.0, ts.size)
        values[day] = cpu
        batch = MetricsBatch(
            namespace="a", kind="Deployment", workload="x", container="app",
            start=(day + 1) * DAY - 60, end=(day + 2) * DAY - 60,
            samples={"cpu": list(zip(ts.tolist(), cpu.tolist(), strict=True)), "memory": []},
        )  # fmt: skip
        cu.ingest(batch, history_seconds=14 * DAY, window_seconds=int(DAY))
    daily = stats.daily_usage(cu)
    assert [p["count"] for p in daily["cpu"]] == [1440, 1440, 1440]
    for day, point in enumerate(daily["cpu"]):
        assert point["max"] == pytest.approx(values[day].max())
        assert point["p95"] == pytest.approx(np.percentile(values[day], 95), rel=0.02)
        assert point["p50"] == pytest.approx(np.percentile(values[day], 50), rel=0.02)
    assert daily["memory"] == []


def test_verification_counts_by_outcome_and_cause() -> None:
    out = stats.verification_counts(
        [
            {"_id": "healthy", "n": 3},
            {"_id": "live", "n": 1},
            {"_id": "pending", "n": 1},
            {"_id": "reverted", "n": 2},
        ],
        [{"_id": None, "n": 5}, {"_id": "oom", "n": 2}],
    )
    assert out == {
        "total": 7,
        "watching": 2,
        "by_outcome": {"healthy": 3, "reverted": 2, "live": 1, "pending": 1},
        "by_cause": {"oom": 2},
    }
