"""Every query of the "FinOps Overview" dashboard returns data from a real Prometheus.

A real ``prometheus`` (Debian 2.42) scrapes the worker's metrics endpoint every second, the way
the chart's ServiceMonitor does (``honorLabels: true``, target labels namespace/pod/container),
and holds three hours of kube-state-metrics / cAdvisor history backfilled with
``promtool tsdb create-blocks-from openmetrics``. Each panel target (Grafana variables replaced)
is sent to ``/api/v1/query`` and must return at least one finite sample.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import start_http_server

from engine import metrics
from engine.core.model import Action
from tests.harness.proc import Server, free_port, wait_until
from tests.unit.test_dashboard import dashboard_queries

pytestmark = pytest.mark.integration

WORKLOAD_NS = "smarthealth"
# (workload, container, cpu request, cpu rec, cpu p95, mem request, mem rec, mem p95)
WORKLOADS = [
    ("patient-api", "api", 1.0, 0.4, 0.31, 2 * 2**30, 1.2 * 2**30, 0.9 * 2**30),
    ("billing-worker", "worker", 0.5, 0.6, 0.52, 1 * 2**30, 0.7 * 2**30, 0.55 * 2**30),
]
# cAdvisor / kube-state-metrics pods: (pod, container, cores, bytes, req cpu, req mem)
PODS = [
    ("patient-api-7c9d8-x2k4p", "api", 0.30, 0.85 * 2**30, 1.0, 2 * 2**30),
    ("patient-api-7c9d8-q8w1z", "api", 0.28, 0.80 * 2**30, 1.0, 2 * 2**30),
    ("billing-worker-5b6f-m3n7c", "worker", 0.45, 0.50 * 2**30, 0.5, 1 * 2**30),
]
HISTORY_SECONDS = 3 * 3600
STEP_SECONDS = 30


def _record_state() -> None:
    """Values an autopilot cycle would have set (through the objects in engine.metrics)."""
    for name, container, cpu, cpu_rec, cpu_p95, mem, mem_rec, mem_p95 in WORKLOADS:
        labels = {"namespace": WORKLOAD_NS, "kind": "Deployment", "workload": name}
        for resource, cur, rec, p95 in (
            ("cpu", cpu, cpu_rec, cpu_p95),
            ("memory", mem, mem_rec, mem_p95),
        ):
            full = {**labels, "container": container, "resource": resource}
            metrics.REQUEST_CURRENT.labels(**full).set(cur)
            metrics.REQUEST_RECOMMENDED.labels(**full).set(rec)
            metrics.USAGE_P95.labels(**full).set(p95)
        hours = 730
        metrics.MONTHLY_COST_CURRENT.labels(**labels).set(
            hours * (cpu * 0.031611 + mem / 2**30 * 0.004237)
        )
        metrics.MONTHLY_COST_RECOMMENDED.labels(**labels).set(
            hours * (cpu_rec * 0.031611 + mem_rec / 2**30 * 0.004237)
        )
    metrics.REPORTS_PENDING.set(1)


def _tick(n: int) -> None:
    """Steady activity so that every rate()/increase() over the scrape window is non-zero."""
    metrics.RECORDS_PROCESSED.labels(agent="aggregate").inc(50)
    metrics.RECORDS_PROCESSED.labels(agent="decide").inc(2)
    metrics.SAMPLES_INGESTED.labels(resource="cpu").inc(600)
    metrics.SAMPLES_INGESTED.labels(resource="memory").inc(600)
    metrics.SAMPLES_DUPLICATE.inc(3)
    metrics.DEAD_LETTERS.labels(agent="aggregate", reason="invalid_record").inc()
    metrics.CYCLE_DURATION.labels(agent="collect").observe(0.8 + (n % 5) * 0.3)
    metrics.CYCLE_DURATION.labels(agent="report").observe(0.2)
    metrics.CYCLE_FAILURES.labels(agent="collect", dependency="prometheus").inc()
    metrics.PROMETHEUS_QUERIES.labels(outcome="ok").inc(4)
    metrics.PROMETHEUS_SAMPLES_READ.inc(2400)
    metrics.GIT_PUSHES.labels(outcome="ok").inc()
    metrics.GIT_PUSHES.labels(outcome="failed").inc()
    metrics.REPORTS_WRITTEN.labels(outcome="ok").inc()
    metrics.SAVINGS_REALISED.inc(4.25)
    for action, guardrail in (
        (Action.APPLY, "none"),
        (Action.HOLD, "cooldown"),
        (Action.SKIP, "hpa"),
    ):
        metrics.DECISIONS.labels(action=action.value, guardrail=guardrail).inc()
    for partition in range(2):
        metrics.CONSUMER_LAG.labels(topic="kubefinops.metrics", partition=str(partition)).set(
            10 * (n % 7) + partition
        )


@pytest.fixture(scope="module")
def worker_metrics_endpoint() -> Iterator[str]:
    """host:port serving engine.metrics.REGISTRY; values recorded through the metric objects."""
    _record_state()
    _tick(0)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    stop = threading.Event()

    def ticker() -> None:
        n = 1
        while not stop.wait(0.25):
            _tick(n)
            n += 1

    worker = threading.Thread(target=ticker, daemon=True)
    worker.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        worker.join(5)
        server.shutdown()
        server.server_close()


def _openmetrics_history(end: int) -> str:
    """kube-state-metrics and cAdvisor series for PODS, HISTORY_SECONDS up to ``end`` (seconds)."""
    times = range(end - HISTORY_SECONDS, end + 1, STEP_SECONDS)
    lines = ["# TYPE container_cpu_usage_seconds counter"]
    for pod, container, cores, _, _, _ in PODS:
        labels = f'namespace="{WORKLOAD_NS}",pod="{pod}",container="{container}"'
        used = 0.0
        for i, t in enumerate(times):
            used += cores * STEP_SECONDS * (1 + 0.2 * math.sin(i / 9))  # a counter: cumulative
            lines.append(f"container_cpu_usage_seconds_total{{{labels}}} {used:.3f} {t}")
    lines.append("# TYPE container_memory_working_set_bytes gauge")
    for pod, container, _, mem, _, _ in PODS:
        labels = f'namespace="{WORKLOAD_NS}",pod="{pod}",container="{container}"'
        for i, t in enumerate(times):
            value = mem * (1 + 0.1 * math.sin(i / 7))
            lines.append(f"container_memory_working_set_bytes{{{labels}}} {value:.0f} {t}")
    lines.append("# TYPE kube_pod_container_resource_requests gauge")
    for pod, container, _, _, req_cpu, req_mem in PODS:
        base = f'namespace="{WORKLOAD_NS}",pod="{pod}",container="{container}",node="k3s-1"'
        for resource, unit, value in (("cpu", "core", req_cpu), ("memory", "byte", req_mem)):
            for t in times:
                lines.append(
                    f'kube_pod_container_resource_requests{{{base},resource="{resource}",unit="{unit}"}}'
                    f" {value} {t}"
                )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _get(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data = json.loads(resp.read())
    assert isinstance(data, dict)
    return data


def query(base: str, expr: str) -> list[dict[str, Any]]:
    data = _get(base, "/api/v1/query", query=expr, time=f"{time.time():.3f}")
    assert data["status"] == "success", data
    result = data["data"]["result"]
    assert isinstance(result, list)
    return result


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


@pytest.fixture(scope="module")
def prometheus(
    worker_metrics_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus with backfilled cluster history, scraping the worker endpoint."""
    work = tmp_path_factory.mktemp("dashboard-prometheus")
    tsdb = work / "tsdb"
    tsdb.mkdir()
    history = work / "cluster.om"
    history.write_text(_openmetrics_history(int(time.time()) - 60))
    subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=24h",
            str(history),
            str(tsdb),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = work / "prometheus.yml"
    # Target labels as a ServiceMonitor would attach them; honor_labels keeps the metrics' own.
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: kubefinops\n"
        "    honor_labels: true\n"
        "    static_configs:\n"
        f"      - targets: ['{worker_metrics_endpoint}']\n"
        "        labels: {namespace: kubefinops, pod: kubefinops-5d8c7-abcde, container: worker}\n"
    )
    port = free_port()
    server = Server(
        name="prometheus",
        argv=[
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            "--storage.tsdb.retention.time=30d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log=work / "prometheus.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), 30, "prometheus", server.log)
        wait_until(
            lambda: (
                bool(
                    finite(
                        query(
                            base,
                            "histogram_quantile(0.95, sum by (le) "
                            "(rate(kubefinops_cycle_duration_seconds_bucket[5m])))",
                        )
                    )
                )
                and bool(query(base, "container_memory_working_set_bytes"))
            ),
            60,
            "worker scrapes and backfilled history",
            server.log,
        )
        yield base
    finally:
        server.stop()


def _ready(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
        return resp.status == 200


QUERIES = dashboard_queries()


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_dashboard_query_returns_data(prometheus: str, where: str, expr: str) -> None:
    result = query(prometheus, expr)
    assert result, f"{where}: no series for {expr}"
    assert finite(result), f"{where}: only NaN/Inf for {expr}: {result}"


def test_workload_labels_survive_the_scrape(prometheus: str) -> None:
    """honorLabels: the workload's namespace/container win over the scrape target's labels."""
    series = query(prometheus, 'kubefinops_request_current{resource="cpu"}')
    assert {s["metric"]["namespace"] for s in series} == {WORKLOAD_NS}
    assert {s["metric"]["container"] for s in series} == {c for _, c, *_ in WORKLOADS}


def test_money_panels_match_the_recorded_values(prometheus: str) -> None:
    queries = dict(dashboard_queries())
    (current,) = [q for w, q in queries.items() if "Monthly cost at current requests" in w]
    (pending,) = [q for w, q in queries.items() if "Pending savings" in w]
    expected_current = sum(
        730 * (cpu * 0.031611 + mem / 2**30 * 0.004237) for _, _, cpu, _, _, mem, _, _ in WORKLOADS
    )
    expected_rec = sum(
        730 * (rec * 0.031611 + mrec / 2**30 * 0.004237)
        for _, _, _, rec, _, _, mrec, _ in WORKLOADS
    )
    assert finite(query(prometheus, current)) == [pytest.approx(expected_current)]
    assert finite(query(prometheus, pending)) == [pytest.approx(expected_current - expected_rec)]


def test_cluster_history_is_queryable(prometheus: str) -> None:
    """The backfilled cAdvisor history answers the 1-day P95 subquery per container."""
    (p95,) = [q for w, q in dashboard_queries() if "P95 over 1d" in w]
    values = {r["metric"]["pod"]: float(r["value"][1]) for r in query(prometheus, p95)}
    assert set(values) == {p for p, *_ in PODS}
    for pod, _, cores, *_ in PODS:
        # usage oscillates +-20% around `cores`: its P95 sits just under the top
        assert cores * 1.1 <= values[pod] <= cores * 1.21
