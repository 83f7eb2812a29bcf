"""Figures of a backtest run: per workload and in total, and the ``--export`` document (pure).

* **saving vs provisioned** = 1 - cost of the requests in force / cost of the provisioned
  requests, over the scored container-days (OpenCost prices, :mod:`engine.core.cost`);
* **CPU samples above request** = share of scored samples whose CPU usage exceeds the request
  in force;
* **memory samples above request** = share of scored samples whose memory (as used, uncapped)
  exceeds the memory request in force -- not a failure: with request < limit (QoS Burstable)
  it is the time a container is first in line for eviction under node memory pressure;
* **OOM workload-days** = share of scored container-days whose peak memory exceeded the limit
  in force;
* **rollouts** = applies per workload per 30 days of its presence in the window (median over
  workloads), **settle days** = days from its first cycle to its last apply (median), and
  **still changing** = share of workloads with an apply in the window's last 7 days;
* **increases / decreases** = applies that raised / lowered the workload's monthly cost.

A container-day is scored when it has at least ``min_day_samples`` samples.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from engine.core.backtest import DAY, StrategyRun

SETTLED_TAIL_DAYS = 7.0


@dataclass(frozen=True)
class WorkloadFigures:
    workload_id: str
    container_days: int
    saving: float
    cpu_above: float
    memory_above: float
    oom_days: int
    applies: int
    rollouts_per_30d: float
    settle_days: float
    increases: int
    decreases: int


@dataclass(frozen=True)
class Figures:
    strategy: str
    workloads: int
    container_days: int
    samples: int
    cost: float  # sum of hourly costs per sample: relative figures only
    provisioned_cost: float
    saving: float
    cpu_above: float
    memory_above: float
    oom_days: int
    oom_share: float
    applies: int
    rollouts_median_per_30d: float
    rollouts_p90_per_30d: float
    settle_days_median: float
    still_changing: float
    increases: int
    decreases: int
    guardrails: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _p90(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * (len(ordered) - 1) + 0.5))]


def figures(run: StrategyRun, *, start: float, end: float) -> tuple[Figures, list[WorkloadFigures]]:
    per_wl: dict[str, dict[str, float]] = {}
    for key, _day, s in run.scored():
        wid = key.rsplit("/", 1)[0]
        acc = per_wl.setdefault(
            wid,
            {"days": 0, "samples": 0, "above": 0, "mem": 0, "oom": 0, "cost": 0.0, "prov": 0.0},
        )
        acc["days"] += 1
        acc["samples"] += s.samples
        acc["above"] += s.cpu_above
        acc["mem"] += s.memory_above
        acc["oom"] += int(s.oom)
        acc["cost"] += s.cost
        acc["prov"] += s.provisioned_cost
    rows = []
    for wid in sorted(per_wl):
        acc = per_wl[wid]
        state = run.workloads[wid]
        begin = max(start, state.first_seen)
        present = max((end - begin) / DAY, 1.0)
        applies = [t for t in state.applies if start <= t < end]
        rows.append(
            WorkloadFigures(
                workload_id=wid,
                container_days=int(acc["days"]),
                saving=1 - _share(acc["cost"], acc["prov"]) if acc["prov"] else 0.0,
                cpu_above=_share(acc["above"], acc["samples"]),
                memory_above=_share(acc["mem"], acc["samples"]),
                oom_days=int(acc["oom"]),
                applies=len(applies),
                rollouts_per_30d=len(applies) / present * 30.0,
                settle_days=(max(applies) - begin) / DAY if applies else 0.0,
                increases=state.increases,
                decreases=state.decreases,
            )
        )
    days = sum(r.container_days for r in rows)
    samples = int(sum(a["samples"] for a in per_wl.values()))
    cost = sum(a["cost"] for a in per_wl.values())
    prov = sum(a["prov"] for a in per_wl.values())
    oom = sum(r.oom_days for r in rows)
    guardrails: dict[str, int] = {}
    for wid in per_wl:
        for g, n in run.workloads[wid].guardrails.items():
            guardrails[g] = guardrails.get(g, 0) + n
    tail = end - SETTLED_TAIL_DAYS * DAY
    changing = sum(1 for wid in per_wl if any(tail <= t < end for t in run.workloads[wid].applies))
    rollouts = [r.rollouts_per_30d for r in rows]
    total = Figures(
        strategy=run.name,
        workloads=len(rows),
        container_days=days,
        samples=samples,
        cost=cost,
        provisioned_cost=prov,
        saving=1 - _share(cost, prov) if prov else 0.0,
        cpu_above=_share(sum(a["above"] for a in per_wl.values()), samples),
        memory_above=_share(sum(a["mem"] for a in per_wl.values()), samples),
        oom_days=oom,
        oom_share=_share(oom, days),
        applies=sum(r.applies for r in rows),
        rollouts_median_per_30d=statistics.median(rollouts) if rollouts else 0.0,
        rollouts_p90_per_30d=_p90(rollouts),
        settle_days_median=statistics.median([r.settle_days for r in rows]) if rows else 0.0,
        still_changing=_share(changing, len(rows)),
        increases=sum(r.increases for r in rows),
        decreases=sum(r.decreases for r in rows),
        guardrails=dict(sorted(guardrails.items())),
    )
    return total, rows


ExportDoc = dict[str, dict[str, dict[str, float | None]]]


def export(run: StrategyRun) -> ExportDoc:
    """``{day_epoch: {"ns/kind/name/container": {cpu_request, memory_request, memory_limit}}}``:
    the values in force on every day a container had samples in the window."""
    doc: ExportDoc = {}
    for key in sorted(run.days):
        for day, s in sorted(run.days[key].items()):
            doc.setdefault(str(day), {})[key] = {
                "cpu_request": s.in_force.cpu_request,
                "memory_request": s.in_force.memory_request,
                "memory_limit": s.in_force.memory_limit,
            }
    return dict(sorted(doc.items(), key=lambda kv: int(kv[0])))
