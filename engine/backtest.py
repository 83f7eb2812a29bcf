"""``kubefinops backtest``: score strategies in closed loop on recorded usage (no Kafka).

Input comes from a samples file (:mod:`engine.adapters.samples_file`) or from Prometheus through
the collector's own queries (:func:`load_prometheus`); the loop itself is pure
(:mod:`engine.core.backtest`), the figures are :mod:`engine.core.backtest_score`'s.  This module
wires them, renders the figures (rich table or JSON) and writes the export and HTML report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from engine.core.backtest import (
    ContainerHistory,
    Strategy,
    StrategyRun,
)
from engine.core.backtest_score import Figures, WorkloadFigures
from engine.core.cost import DEFAULT_PRICES, Prices
from engine.core.policy import validate_policy
from engine.core.strategies import AUTOPILOT_DEFAULT, Autopilot, KrrSimple, Replay, VpaLike
from engine.errors import ConfigError

STRATEGIES: dict[str, str] = {
    "kubefinops": "the autopilot: the real recommender and gate (policy or built-in autopilot)",
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
        if name == "kubefinops":
            policies = [load_policy(policy_file)] if policy_file else []
            out.append(Autopilot(policies, default=AUTOPILOT_DEFAULT, prices=prices))
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
    console = Console(width=width, record=True, file=open_null())
    console.print(figures_table(results))
    return console.export_text()


def open_null() -> Any:
    import io

    return io.StringIO()


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


ProgressFn = Callable[[int, int], None]
__all__ = [
    "STRATEGIES",
    "ContainerHistory",
    "StrategyRun",
    "figures_json",
    "figures_table",
    "load_policy",
    "make_strategies",
    "render_figures",
]
