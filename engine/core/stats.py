"""The stats API's numbers, shaped from plain records (pure; the I/O lives in engine/stats.py).

Every fleet figure is computed from the *global* record — MongoDB's recommendation, decision and
execution history and Kafka's committed offsets — never from one worker's partitions, so any
worker answers the same (docs/api.md).  Definitions:

* ``cost``: Σ current and recommended monthly cost of each workload's latest recommendation.
* ``savings.pending_monthly``: Σ monthly savings of latest recommendations not applied yet (the
  workload's newest decision is not an ``apply`` of that recommendation that was executed).
* ``savings.realised_monthly``: Σ monthly savings of every ``apply`` decision whose execution
  was committed or pushed (each change saves relative to the spec before it, so they add up).
* ``cycles``: duration from the start of the collection cycle behind the decisions (its id is
  its start time) to the execution.
* ``risks``: latest recommendations that raise a request (under-provisioned: the increase is a
  risk removed, not a saving) or whose container was OOMKilled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from engine.core.model import RESOURCES
from engine.core.usage import ContainerUsage

Doc = dict[str, Any]
EXECUTED = ("committed", "pushed")
DAILY_QUANTILES = (0.5, 0.95)


def daily_usage(usage: ContainerUsage) -> dict[str, list[Doc]]:
    """Per resource, one point per usage window (a day by default), oldest first:
    ``{"start", "p50", "p95", "max", "count"}`` from that window's sketch and exact max."""
    out: dict[str, list[Doc]] = {}
    for res in RESOURCES:
        wu = usage.resources.get(res)
        points: list[Doc] = []
        if wu is not None:
            for start, window in sorted(wu.windows.items()):
                if window.count == 0:
                    continue
                p50, p95 = window.sketch.quantiles(list(DAILY_QUANTILES))
                points.append(
                    {
                        "start": float(start),
                        "p50": min(max(p50 or 0.0, window.min), window.max),
                        "p95": min(max(p95 or 0.0, window.min), window.max),
                        "max": window.max,
                        "count": window.count,
                    }
                )
        out[res] = points
    return out


def _savings(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("savings") or {}


def _money(value: float) -> float:
    return round(value, 2)


def fleet(
    latest_recs: Sequence[Doc],
    latest_decisions: Mapping[str, Doc],
    applied: Sequence[Doc],
    executions: Sequence[Doc],
) -> Doc:
    """Cost, pending and realised savings from the latest recommendation and decision of each
    workload, the apply decisions and the executions (see the module docstring)."""
    executed_ids = {
        d for e in executions if e.get("outcome") in EXECUTED for d in e.get("decision_ids", [])
    }
    current = sum(float(_savings(r).get("current_monthly", 0.0)) for r in latest_recs)
    recommended = sum(float(_savings(r).get("recommended_monthly", 0.0)) for r in latest_recs)
    pending = 0.0
    for rec in latest_recs:
        decision = latest_decisions.get(rec["workload_id"])
        done = (
            decision is not None
            and decision.get("action") == "apply"
            and decision.get("recommendation_id") == rec.get("id")
            and decision.get("id") in executed_ids
        )
        if not done:
            pending += float(_savings(rec).get("monthly_savings", 0.0))
    realised = sum(
        float(_savings(d).get("monthly_savings", 0.0)) for d in applied if d["id"] in executed_ids
    )
    currency = next((str(_savings(r).get("currency")) for r in latest_recs if _savings(r)), "USD")
    return {
        "currency": currency,
        "workloads": len(latest_recs),
        "cost": {
            "current_monthly": _money(current),
            "recommended_monthly": _money(recommended),
            "delta_monthly": _money(recommended - current),
        },
        "savings": {
            "pending_monthly": _money(pending),
            "realised_monthly": _money(realised),
            "applied_changes": sum(1 for d in applied if d["id"] in executed_ids),
        },
    }


def counts(rows: Iterable[Doc]) -> dict[str, int]:
    """``{value: n}``, most frequent first, from ``[{"_id": value, "n": n}]`` (a ``$group``)."""
    out: Counter[str] = Counter()
    for row in rows:
        out[str(row["_id"])] += int(row["n"])
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def verification_counts(by_phase: Iterable[Doc], by_cause: Iterable[Doc]) -> Doc:
    """Pushed changes by their verification's latest outcome, and regressions by first cause
    (docs/verification.md): ``watching`` = pending or live."""
    phases = counts(by_phase)
    return {
        "total": sum(phases.values()),
        "watching": phases.get("pending", 0) + phases.get("live", 0),
        "by_outcome": phases,
        "by_cause": counts(r for r in by_cause if r["_id"] is not None),
    }


def top_opportunities(latest_recs: Sequence[Doc], n: int = 10) -> list[Doc]:
    """The biggest monthly savings among the latest recommendations."""
    ranked = sorted(
        (r for r in latest_recs if float(_savings(r).get("monthly_savings", 0.0)) > 0),
        key=lambda r: (-float(_savings(r)["monthly_savings"]), r["workload_id"]),
    )
    return [
        {
            "workload_id": r["workload_id"],
            "monthly_savings": _money(float(_savings(r)["monthly_savings"])),
            "monthly_delta": _money(float(_savings(r).get("monthly_delta", 0.0))),
            "confidence": sorted({c.get("confidence", "none") for c in r.get("containers", [])}),
        }
        for r in ranked[:n]
    ]


def risks(latest_recs: Sequence[Doc], now: float, oom_lookback: float = 7 * 86400) -> list[Doc]:
    """Containers whose recommended request is above the current one (under-provisioned), and
    containers OOMKilled within ``oom_lookback``."""
    out: list[Doc] = []
    for rec in latest_recs:
        for c in rec.get("containers", []):
            current = (c.get("current") or {}).get("requests") or {}
            for res, key in (("cpu", "cpu_request"), ("memory", "memory_request")):
                target, now_value = c.get(key), current.get(res)
                if target is not None and now_value and target > now_value * 1.1:
                    out.append(
                        {
                            "workload_id": rec["workload_id"],
                            "container": c["name"],
                            "kind": "under-provisioned",
                            "resource": res,
                            "current": now_value,
                            "recommended": target,
                        }
                    )
            oom = (c.get("current") or {}).get("last_oom_at")
            if oom is not None and now - float(oom) <= oom_lookback:
                out.append(
                    {
                        "workload_id": rec["workload_id"],
                        "container": c["name"],
                        "kind": "oom",
                        "at": float(oom),
                    }
                )
    return out


def collection_start(cycle_id: str) -> float | None:
    """The start time of a collection cycle from its id (``20261130T094000Z``), or None."""
    try:
        when = datetime.strptime(cycle_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return when.timestamp()


def cycles(executions: Sequence[Doc], started: Mapping[str, float]) -> list[Doc]:
    """Last cycles, newest first, with ``duration_seconds`` from the start of the collection
    behind its decisions (``started``: cycle -> that time) to its execution."""
    out = []
    for e in executions:
        begin = started.get(str(e.get("cycle")))
        at = float(e.get("executed_at", 0.0))
        out.append(
            {
                "cycle": e.get("cycle"),
                "outcome": e.get("outcome"),
                "executed_at": at,
                "workloads": len(e.get("workload_ids", [])),
                "decisions": len(e.get("decision_ids", [])),
                "commit_sha": e.get("commit_sha"),
                "duration_seconds": round(at - begin, 3) if begin is not None else None,
            }
        )
    return out


def commit_url(remote: str | None, sha: str | None) -> str | None:
    """A browsable link to a commit of an http(s) Git remote (GitHub/GitLab/Gitea layout)."""
    if not remote or not sha:
        return None
    parts = urlsplit(remote)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    path = parts.path.removesuffix(".git").rstrip("/")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{path}/commit/{sha}"
