"""The Grafana "FinOps Overview" dashboard: structure, metric names, and PromQL syntax (promtool).

No Grafana server exists here, so the JSON is checked structurally and every panel query is
checked by ``promtool check rules`` (each expression becomes a recording rule). The queries are
run against a real Prometheus in tests/integration/test_dashboard_queries.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from engine import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "kubefinops" / "dashboards" / "finops-overview.json"

# Grafana's variables replaced by what Grafana would send to Prometheus.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*"}
KSM_CADVISOR = {
    "kube_pod_container_resource_requests",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
}


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with variables substituted) for every target."""
    return [
        (f"{p['id']}:{p['title']}/{t['refId']}", substitute(t["expr"]))
        for p in query_panels(load_dashboard())
        for t in p["targets"]
    ]


def exported_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Sample names exported by engine.metrics -> (type, label names)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name, kind, labels = obj._name, obj._type, tuple(obj._labelnames)
        if kind == "counter":
            out[f"{name}_total"] = (kind, labels)
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = (kind, (*labels, "le") if suffix == "_bucket" else labels)
        else:
            out[name] = (kind, labels)
    for family in metrics.GcCollector().collect():  # a collector's families, read at scrape
        for sample in family.samples:
            out[sample.name] = (family.type, tuple(sample.labels))
    return out


def test_dashboard_identity() -> None:
    dash = load_dashboard()
    assert dash["title"] == "FinOps Overview"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names[0] == "datasource" and dash["templating"]["list"][0]["query"] == "prometheus"
    assert "namespace" in names


def test_panels_are_well_formed() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and all(isinstance(v, int) for v in grid.values())
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"panel {panel['id']} overlaps another"
        cells |= covered
    for panel in query_panels(dash):
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_dashboard_covers_the_brief() -> None:
    text = " ".join(p["title"].lower() for p in query_panels(load_dashboard()))
    for topic in (
        "current",
        "recommended",
        "monthly cost",
        "pending savings",
        "pending savings: next step vs target",
        "realised savings",
        "decisions by outcome and guardrail",
        "p95",
        "consumer lag",
        "cycle duration",
        "dead letters",
        "git pushes",
    ):
        assert topic in text, topic


def test_every_kubefinops_metric_exists_and_labels_match() -> None:
    exported = exported_metrics()
    used: set[str] = set()
    for where, expr in dashboard_queries():
        for name, matchers in re.findall(r"\b(kubefinops_[a-z0-9_]+)(?:\{([^}]*)\})?", expr):
            assert name in exported, f"{where}: {name} is not in engine/metrics.py"
            used.add(name)
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[name][1], f"{where}: {name} has no label {label}"
    # every metric family shows up somewhere on the dashboard
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    missing = {f for f in families if not any(u.startswith(f) for u in used)}
    assert not missing, f"metrics not on the dashboard: {sorted(missing)}"


def test_cluster_metrics_are_the_kube_state_metrics_and_cadvisor_names() -> None:
    names = {
        n
        for _, expr in dashboard_queries()
        for n in re.findall(r"\b((?:kube|container)_[a-z0-9_]+)\b", expr)
    }
    assert names == KSM_CADVISOR


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "finops-overview",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool missing: apt-get install -y prometheus")
    return found


@pytest.mark.usefixtures("promtool")
def test_every_query_passes_promtool(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    result = promtool_check([q for _, q in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


@pytest.mark.usefixtures("promtool")
def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    result = promtool_check(
        ["sum by (agent (rate(kubefinops_records_processed_total[5m]))"], tmp_path
    )
    assert result.returncode != 0
