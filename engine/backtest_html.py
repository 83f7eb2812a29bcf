"""The backtest's HTML report: one self-contained file, charts drawn with the vendored uPlot.

Per strategy: saving vs risk (saving, CPU samples above request, OOM days, rollouts).  Per
workload (the ``max_workloads`` with the most OOM days, then the largest provisioned cost):
daily CPU P95 and max against each strategy's CPU request in force, and daily peak memory
against each strategy's memory limit in force.  The library is inlined (no CDN: reports are
read offline); the data travels as one JSON block.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.backtest import DAY
from engine.static import UPLOT_CSS, UPLOT_JS, asset

if TYPE_CHECKING:
    from engine.backtest import Result

_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];
function pct(v) { return v == null ? '' : (v * 100).toFixed(1) + '%'; }
function width(el) { return Math.max(480, Math.min(1100, el.clientWidth || 900)); }
(function summary() {
  const el = document.getElementById('summary-chart');
  const names = DATA.strategies.map(s => s.strategy);
  const xs = names.map((_, i) => i);
  const bars = uPlot.paths.bars({size: [0.6, 60]});
  const metrics = [
    ['saving vs provisioned', s => s.saving],
    ['CPU samples above request', s => s.cpu_above],
    ['OOM container-days', s => s.oom_share],
  ];
  metrics.forEach(([label, get], m) => {
    const div = document.createElement('div');
    div.className = 'chart';
    el.appendChild(div);
    new uPlot({
      title: label, width: width(el) / 3 - 20, height: 260,
      scales: {x: {time: false, range: [-0.5, names.length - 0.5]},
               y: {range: (u, lo, hi) => [0, Math.max(hi || 0, 0.01) * 1.1]}},
      axes: [{values: (u, vals) => vals.map(v => names[v] ?? '')},
             {size: 64, values: (u, v) => v.map(pct)}],
      series: [{}, {label: label, stroke: COLORS[m], fill: COLORS[m] + '88', paths: bars,
                    value: (u, v) => pct(v)}],
      legend: {show: false},
    }, [xs, DATA.strategies.map(get)], div);
  });
})();
(function workloads() {
  const host = document.getElementById('workloads');
  DATA.workloads.forEach(w => {
    const box = document.createElement('section');
    box.innerHTML = '<h3></h3>';
    box.querySelector('h3').textContent = w.key;
    host.appendChild(box);
    const charts = [['cpu', 'CPU (cores)', 'request'], ['memory', 'memory (GiB)', 'limit']];
    charts.forEach(([r, t, what]) => {
      const div = document.createElement('div');
      div.className = 'chart';
      box.appendChild(div);
      const u = w[r];
      const series = [{}, {label: 'usage max', stroke: '#999999', dash: [4, 4]}];
      const data = [w.days, u.max];
      if (u.p95) { series.push({label: 'usage p95', stroke: '#555555'}); data.push(u.p95); }
      DATA.strategies.forEach((s, i) => {
        series.push({label: s.strategy + ' ' + what, stroke: COLORS[i], width: 2,
                     paths: uPlot.paths.stepped({align: 1})});
        data.push(u.in_force[s.strategy]);
      });
      new uPlot({title: t, width: width(host), height: 240, series: series,
                 scales: {y: {range: (u, lo, hi) => [0, (hi || 1) * 1.1]}}}, data, div);
    });
  });
})();
"""


def _daily(ts: np.ndarray, values: np.ndarray, days: np.ndarray) -> tuple[list[Any], list[Any]]:
    idx = ((ts // DAY) * DAY).astype(np.int64)
    p95: list[Any] = []
    peak: list[Any] = []
    for d in days.tolist():
        v = values[idx == d]
        p95.append(round(float(np.percentile(v, 95)), 6) if v.size else None)
        peak.append(round(float(v.max()), 6) if v.size else None)
    return p95, peak


def report_data(result: Result, max_workloads: int = 24) -> dict[str, Any]:
    strategies = [f.as_dict() for f, _ in result.figures]
    for s in strategies:
        s.pop("guardrails", None)
    runs = result.runs
    oom: dict[str, int] = {}
    cost: dict[str, float] = {}
    for key, scored in runs[0].days.items():
        oom[key] = sum(1 for r in runs for s in r.days.get(key, {}).values() if s.oom)
        cost[key] = sum(s.provisioned_cost for s in scored.values())
    chosen = sorted(cost, key=lambda k: (-oom[k], -cost[k], k))[:max_workloads]
    by_key = {h.key: h for h in result.histories}
    out = []
    for key in chosen:
        h = by_key[key]
        day_keys = sorted(runs[0].days[key])
        days = np.asarray(day_keys, dtype=np.int64)
        cpu_p95, cpu_max = _daily(h.ts, h.cpu, days)
        _, mem_max = _daily(h.ts, h.memory / 2**30, days)
        in_force_cpu: dict[str, list[Any]] = {}
        in_force_mem: dict[str, list[Any]] = {}
        for r in runs:
            scores = r.days.get(key, {})
            in_force_cpu[r.name] = [
                scores[d].in_force.cpu_request if d in scores else None for d in day_keys
            ]
            in_force_mem[r.name] = [
                (lim / 2**30 if (lim := scores[d].in_force.memory_limit) is not None else None)
                if d in scores
                else None
                for d in day_keys
            ]
        out.append(
            {
                "key": key,
                "days": day_keys,
                "cpu": {"p95": cpu_p95, "max": cpu_max, "in_force": in_force_cpu},
                "memory": {"max": mem_max, "in_force": in_force_mem},
            }
        )
    return {"strategies": strategies, "workloads": out}


def _table(result: Result) -> str:
    head = (
        "<tr><th>strategy</th><th>saving</th><th>CPU &gt; request</th><th>OOM days</th>"
        "<th>rollouts / 30 d (median)</th><th>settle days</th><th>increases / decreases</th></tr>"
    )
    rows = [
        f"<tr><td>{html.escape(f.strategy)}</td><td>{f.saving:.1%}</td><td>{f.cpu_above:.1%}</td>"
        f"<td>{f.oom_share:.2%} ({f.oom_days})</td><td>{f.rollouts_median_per_30d:.1f}</td>"
        f"<td>{f.settle_days_median:.1f}</td><td>{f.increases} / {f.decreases}</td></tr>"
        for f, _ in result.figures
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(result: Result, max_workloads: int = 24) -> str:
    data = json.dumps(report_data(result, max_workloads), separators=(",", ":"))
    data = data.replace("</", "<\\/")
    p = result.params
    window = f"{p.start:.0f} .. {p.end:.0f} (Unix s), one cycle per {p.interval / 3600:g} h"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>KubeFinOps backtest</title>
<style>{asset(UPLOT_CSS)}
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .chart{{display:inline-block;margin:6px}}
</style></head><body>
<h1>Closed-loop backtest</h1>
<p>Decision window {html.escape(window)}; {len(result.histories)} containers.</p>
{_table(result)}
<h2>Saving vs risk, per strategy</h2><div id="summary-chart"></div>
<h2>Workloads: usage and the values in force</h2>
<p>The workloads with the most OOM days, then the largest provisioned cost.</p>
<div id="workloads"></div>
<script id="data" type="application/json">{data}</script>
<script>{asset(UPLOT_JS)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(result: Result, path: Path, max_workloads: int = 24) -> None:
    path.write_text(render_html(result, max_workloads), encoding="utf-8")
