"""``kubefinops backtest``: score strategies in closed loop on recorded usage (no Kafka).

Input comes from a samples file (:mod:`engine.adapters.samples_file`) or from Prometheus through
the collector's own queries (:func:`load_prometheus`); the loop itself is pure
(:mod:`engine.core.backtest`), the figures are :mod:`engine.core.backtest_score`'s.  This module
wires them, renders the figures (rich table or JSON) and writes the export and HTML report.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from engine.adapters.prometheus import Collector, PrometheusClient
from engine.core.backtest import (
    DAY,
    Backtest,
    BacktestParams,
    ContainerHistory,
    Strategy,
    StrategyRun,
)
from engine.core.backtest_score import Figures, WorkloadFigures, export, figures
from engine.core.collect import plan_chunks
from engine.core.cost import DEFAULT_PRICES, Prices
from engine.core.model import WorkloadSpec
from engine.core.policy import validate_policy
from engine.core.strategies import (
    AUTOPILOT_CLASSIC,
    AUTOPILOT_DEFAULT,
    Autopilot,
    KrrSimple,
    Replay,
    VpaLike,
)
from engine.core.verified_backtest import VerifiedApply
from engine.errors import ConfigError
from engine.settings import Settings

# The backtest folds every sample of its window as a tuple (collect_chunk): it keeps the
# chunk length the collector had before the point budget (settings.prometheus_chunk_seconds is
# now a day), so one answer is not four times the memory it was.
BACKTEST_CHUNK_SECONDS = 6 * 3600

STRATEGIES: dict[str, str] = {
    "kubefinops": "the autopilot: the real recommender and gate (policy or built-in autopilot)",
    "kubefinops-classic": "the autopilot with the estimator settings before the backtest tuning",
    "kubefinops-verified": "kubefinops + verified apply: an OOM within a day after lowering "
    "memory reverts the change and holds decreases for 7 d (docs/verification.md)",
    "krr-simple": "KRR simple: CPU P95 over 14 d, memory max x 1.15, floors 10m / 100Mi",
    "vpa-like": "VPA recommender: CPU P90 (24 h half-life), memory P90 of daily peaks, +15%",
}


def load_policy(path: Path) -> Any:
    """A policy document (JSON or YAML, as the API takes it), validated."""
    try:
        doc = YAML(typ="safe").load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from None
    except Exception as exc:  # ruamel's parser errors have no common public base
        raise ConfigError(f"policy {path} is not JSON/YAML: {exc}") from None
    return validate_policy(doc)


def make_strategies(
    names: Sequence[str],
    *,
    policy_file: Path | None = None,
    prices: Prices = DEFAULT_PRICES,
    replay: Path | None = None,
) -> list[Strategy]:
    out: list[Strategy] = []
    for name in names:
        if name in ("kubefinops", "kubefinops-verified"):
            policies = [load_policy(policy_file)] if policy_file else []
            out.append(Autopilot(policies, default=AUTOPILOT_DEFAULT, prices=prices, name=name))
        elif name == "kubefinops-classic":
            out.append(Autopilot([], default=AUTOPILOT_CLASSIC, prices=prices, name=name))
        elif name == "krr-simple":
            out.append(KrrSimple())
        elif name == "vpa-like":
            out.append(VpaLike())
        else:
            raise ConfigError(f"unknown strategy {name!r} (one of {', '.join(STRATEGIES)})")
    if replay is not None:
        try:
            doc = json.loads(replay.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read export {replay}: {exc}") from None
        out.append(Replay(doc, name=f"replay:{replay.name}"))
    return out


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else "-"


def figures_table(results: Sequence[Figures]) -> Table:
    t = Table(title="Closed-loop backtest", show_lines=False)
    for col in (
        "strategy",
        "workloads",
        "container-days",
        "saving vs provisioned",
        "CPU samples > request",
        "OOM days",
        "rollouts / 30 d (median, p90)",
        "settle days (median)",
        "still changing (last 7 d)",
        "increases / decreases",
    ):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for f in results:
        t.add_row(
            f.strategy,
            str(f.workloads),
            f"{f.container_days:,}",
            _pct(f.saving),
            _pct(f.cpu_above),
            f"{_pct(f.oom_share)} ({f.oom_days})",
            f"{f.rollouts_median_per_30d:.1f}, {f.rollouts_p90_per_30d:.1f}",
            f"{f.settle_days_median:.1f}",
            _pct(f.still_changing),
            f"{f.increases} / {f.decreases}",
        )
    return t


def render_figures(results: Sequence[Figures], width: int = 160) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(figures_table(results))
    return console.export_text()


def figures_json(
    results: Sequence[tuple[Figures, list[WorkloadFigures]]], meta: dict[str, Any]
) -> str:
    doc = {
        **meta,
        "strategies": [
            {**f.as_dict(), "workloads_detail": [w.__dict__ for w in rows]} for f, rows in results
        ],
    }
    return json.dumps(doc, indent=2, sort_keys=False)


# --- inputs --------------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO-8601 date/time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not a time: {text!r} (Unix seconds or ISO-8601)") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _chunks(histories: Sequence[ContainerHistory]) -> tuple[float, float]:
    first = min(float(h.ts[0]) for h in histories)
    last = max(float(h.ts[-1]) for h in histories)
    return first, last


def default_window(
    histories: Sequence[ContainerHistory], start: float | None, end: float | None
) -> tuple[float, float]:
    """``start``: the first midnight UTC >= 7 days after the first sample (warm-up), or the
    first midnight after it when the data is shorter; ``end``: just after the last sample."""
    if not histories:
        raise ConfigError("no samples to backtest")
    first, last = _chunks(histories)
    if start is None:
        start = math.floor((first + 7 * DAY) / DAY) * DAY + DAY
        if start >= last:
            start = math.floor(first / DAY) * DAY + DAY
    if end is None:
        end = last + 1.0
    if end <= start:
        raise ConfigError("the decision window is empty: --end must be after --start")
    return start, end


def select(
    histories: Sequence[ContainerHistory], namespaces: Sequence[str]
) -> list[ContainerHistory]:
    if not namespaces:
        return list(histories)
    return [h for h in histories if h.namespace in namespaces]


async def load_prometheus(
    settings: Settings,
    *,
    since: float,
    until: float,
    namespaces: Sequence[str] = (),
    selector: Mapping[str, str] | None = None,
    client: PrometheusClient | None = None,
) -> tuple[list[ContainerHistory], dict[str, WorkloadSpec]]:
    """Usage in ``(since, until]`` through the collector's queries and chunks, and the specs
    (requests/limits, HPA, labels) in force at ``since``: the starting point of the replay."""
    step = settings.prometheus_step_seconds
    chunks = plan_chunks(
        None,
        until,
        scrape_lag=0,
        history=max(until - since, step),
        chunk=min(settings.prometheus_chunk_seconds, BACKTEST_CHUNK_SECONDS),
        step=step,
    )
    owned = client is None
    client = client or PrometheusClient(settings)
    acc: dict[str, dict[str, list[tuple[float, float]]]] = {}
    meta: dict[str, tuple[str, str, str, str]] = {}
    try:
        collector = Collector(client, settings)
        for lo, hi in chunks:
            for b in await collector.collect_chunk(lo, hi):
                if namespaces and b.namespace not in namespaces:
                    continue
                meta[b.container_id] = (b.namespace, b.kind, b.workload, b.container)
                slot = acc.setdefault(b.container_id, {"cpu": [], "memory": []})
                for r in ("cpu", "memory"):
                    slot[r].extend(b.samples.get(r, []))
        specs = await collector.collect_specs(chunks[0][1] if chunks else since)
        if not specs:
            specs = await collector.collect_specs(until)
    finally:
        if owned:
            await client.close()
    by_id = {s.workload_id: s for s in specs}
    wanted = {
        wid: s
        for wid, s in by_id.items()
        if not selector or all(s.labels.get(k) == v for k, v in selector.items())
    }
    out = []
    for cid in sorted(acc):
        ns, kind, workload, container = meta[cid]
        spec = wanted.get(f"{ns}/{kind}/{workload}")
        if spec is None and (selector or by_id):
            continue
        cpu = dict(acc[cid]["cpu"])
        mem = dict(acc[cid]["memory"])
        ts = np.asarray(sorted(set(cpu) & set(mem)), dtype=np.float64)
        if ts.size == 0:
            continue
        out.append(
            ContainerHistory(
                namespace=ns,
                kind=kind,
                workload=workload,
                container=container,
                ts=ts,
                cpu=np.asarray([cpu[t] for t in ts.tolist()], dtype=np.float64),
                memory=np.asarray([mem[t] for t in ts.tolist()], dtype=np.float64),
                replicas=spec.replicas if spec else 1,
            )
        )
    return out, wanted


# --- running and writing -------------------------------------------------------------------------


@dataclass
class Result:
    params: BacktestParams
    runs: list[StrategyRun]
    figures: list[tuple[Figures, list[WorkloadFigures]]]
    histories: list[ContainerHistory]
    seconds: float


def run_backtest(
    histories: Sequence[ContainerHistory],
    strategies: Sequence[Strategy],
    params: BacktestParams,
    *,
    specs: Mapping[str, WorkloadSpec] | None = None,
    progress: ProgressFn | None = None,
) -> Result:
    started = time.perf_counter()
    verified = VerifiedApply(frozenset({"kubefinops-verified"}))
    runs = Backtest(histories, params, specs=specs, hooks=[verified]).run(
        strategies, progress=progress
    )
    figs = [figures(r, start=params.start, end=params.end) for r in runs]
    return Result(params, runs, figs, list(histories), time.perf_counter() - started)


def result_json(result: Result) -> str:
    p = result.params
    meta = {
        "window": {"start": p.start, "end": p.end, "interval_s": p.interval},
        "containers": len(result.histories),
        "seconds": round(result.seconds, 3),
    }
    return figures_json(result.figures, meta)


def write_export(result: Result, path: Path) -> None:
    """The values in force per day of the first strategy (``--export``)."""
    doc = export(result.runs[0])
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


ProgressFn = Callable[[int, int], None]
