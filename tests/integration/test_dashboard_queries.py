"""Every "FinOps Overview" dashboard query returns data from a real Prometheus scraping a RUNNING
``kubefinops worker`` (a subprocess on the session Kafka with SASL/SCRAM, MongoDB policies, the
Git remote over HTTP and S3), driven through one realistic cycle for three SmartHealth workloads
of smarthealth-gitops: usage batches and one malformed record go to ``<prefix>.metrics``, an
autopilot policy is PUT through the REST API, then the cycle-end markers follow; the test waits
for the bot's commit on the remote and the cycle report in S3. Its collector runs every 5 s
against a second, empty Prometheus (a cluster with nothing else to collect): its queries succeed
and its cycles are timed, without adding workloads of its own to the fed ones.

A real ``prometheus`` (Debian 2.42) scrapes the worker's ``/metrics`` every second, the way the
chart's ServiceMonitor does (``honorLabels: true``, target labels namespace/pod/container), and
holds three hours of kube-state-metrics / cAdvisor history backfilled with
``promtool tsdb create-blocks-from openmetrics``. Prometheus scrapes the worker before the cycle
starts, so increases of the cycle's counters are real. Each panel target (Grafana variables
replaced) is sent to ``/api/v1/query`` and must return at least one finite sample.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from engine.core.model import ContainerSpec, CycleEnd, MetricsBatch, ResourcePair, WorkloadSpec
from tests.harness.git_http import GitRemote
from tests.harness.kafka import KafkaInfo
from tests.harness.proc import Server, free_port, wait_for, wait_until
from tests.harness.prometheus import start_prometheus
from tests.harness.s3 import S3Info, unique_bucket
from tests.integration.workers import Deployment, consume_all, http_json, produce
from tests.unit.test_dashboard import dashboard_queries

pytestmark = pytest.mark.integration

TOKEN = "dashboard-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 2**20
WORKLOAD_NS = "smarthealth"
# SmartHealth workloads as in smarthealth-gitops/base: (kind, name, replicas, container,
# cpu request, memory request, cpu limit, memory limit, typical cores, typical MiB).
WORKLOADS = [
    ("Deployment", "billing", 2, "app", 0.75, 768 * MiB, 1.5, 768 * MiB, 0.08, 180),
    ("Deployment", "frontend", 2, "nginx", 0.2, 128 * MiB, 0.5, 256 * MiB, 0.01, 30),
    ("StatefulSet", "patients-db", 1, "postgres", 1.0, 2048 * MiB, None, 2048 * MiB, 0.3, 900),
]
USAGE_HOURS = 8
# cAdvisor / kube-state-metrics pods: (pod, container, cores, bytes, req cpu, req mem)
PODS = [
    ("billing-7c9d8f6b5-x2k4p", "app", 0.08, 180 * MiB, 0.75, 768 * MiB),
    ("billing-7c9d8f6b5-q8w1z", "app", 0.09, 190 * MiB, 0.75, 768 * MiB),
    ("frontend-5b6f4d7c9-m3n7c", "nginx", 0.01, 30 * MiB, 0.2, 128 * MiB),
    ("patients-db-0", "postgres", 0.30, 900 * MiB, 1.0, 2048 * MiB),
]
HISTORY_SECONDS = 3 * 3600
STEP_SECONDS = 30


def _spec(kind: str, name: str, replicas: int, container: str, *res: float | None) -> WorkloadSpec:
    cpu, mem, cpu_limit, mem_limit = res
    box = ContainerSpec(
        name=container,
        requests=ResourcePair(cpu=cpu, memory=mem),
        limits=ResourcePair(cpu=cpu_limit, memory=mem_limit),
    )
    return WorkloadSpec(
        namespace=WORKLOAD_NS,
        kind=kind,
        name=name,
        replicas=replicas,
        containers=[box],
        labels={"app": name},
        observed_at=time.time(),
    )


def _usage(rng: np.random.Generator) -> tuple[list[MetricsBatch], list[CycleEnd]]:
    """Hourly chunks of minute samples per pod for every workload, and its cycle-end marker."""
    end = math.floor(time.time() / 60) * 60 - 120
    start = end - USAGE_HOURS * 3600
    batches, markers = [], []
    for kind, name, replicas, container, cpu, mem, cpu_lim, mem_lim, cores, mib in WORKLOADS:
        for h in range(USAGE_HOURS):
            t0, t1 = start + h * 3600, start + (h + 1) * 3600
            ts = np.arange(t0 + 60, t1 + 1, 60, dtype=float).tolist()
            cpu_s: list[tuple[float, float]] = []
            mem_s: list[tuple[float, float]] = []
            for _ in range(replicas):
                used = rng.lognormal(math.log(cores), 0.4, size=len(ts)).tolist()
                rss = (rng.uniform(0.9, 1.1, size=len(ts)) * mib * MiB).tolist()
                cpu_s += list(zip(ts, used, strict=True))
                mem_s += list(zip(ts, rss, strict=True))
            samples = {"cpu": cpu_s, "memory": mem_s}
            batches.append(
                MetricsBatch(
                    namespace=WORKLOAD_NS,
                    kind=kind,
                    workload=name,
                    container=container,
                    start=t0,
                    end=t1,
                    samples=samples,
                )
            )
        spec = _spec(kind, name, replicas, container, cpu, mem, cpu_lim, mem_lim)
        markers.append(CycleEnd(cycle="dashboard-c1", spec=spec))
    return batches, markers


def _records(items: list[MetricsBatch] | list[CycleEnd]) -> list[tuple[bytes, bytes]]:
    out = []
    for item in items:
        wid = item.workload_id if isinstance(item, MetricsBatch) else item.spec.workload_id
        out.append((wid.encode(), item.model_dump_json().encode()))
    return out


@dataclass
class Worker:
    dep: Deployment
    server: Server
    port: int
    remote: GitRemote
    bucket: str


@pytest.fixture(scope="module")
def worker(
    kafka: KafkaInfo,
    mongo: Any,
    git_remote: GitRemote,
    s3: S3Info,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    """A real ``kubefinops worker``; its collector reads an empty Prometheus every 5 s."""
    work = tmp_path_factory.mktemp("dashboard-worker")
    remote = git_remote.fresh("dashboard")
    bucket = unique_bucket("dashboard")
    (work / "collector-tsdb").mkdir()
    collector_prometheus, collector_url = start_prometheus(work / "collector-tsdb", work)
    dep = Deployment(
        kafka=kafka,
        workdir=work,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": collector_url,
            "KUBEFINOPS_COLLECT_INTERVAL_SECONDS": "5",
            "KUBEFINOPS_SCRAPE_LAG_SECONDS": "0",
            "KUBEFINOPS_HISTORY_DAYS": "1",
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": f"dashboard{int(time.time() * 1000)}",
            "KUBEFINOPS_API_TOKEN": TOKEN,
            "KUBEFINOPS_GIT_REMOTE_URL": remote.url,
            "KUBEFINOPS_GIT_USERNAME": remote.username,
            "KUBEFINOPS_GIT_TOKEN": remote.token,
            "KUBEFINOPS_GIT_WORKDIR": str(work / "clone"),
            "KUBEFINOPS_S3_ENDPOINT_URL": s3.endpoint_url,
            "KUBEFINOPS_S3_ACCESS_KEY": s3.access_key,
            "KUBEFINOPS_S3_SECRET_KEY": s3.secret_key,
            "KUBEFINOPS_S3_BUCKET": bucket,
        },
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server)
        yield Worker(dep, server, port, remote, bucket)
    finally:
        dep.stop_all()
        collector_prometheus.stop()


@pytest.fixture(scope="module")
def worker_metrics_endpoint(worker: Worker) -> str:
    """host:port of the running worker's ``/metrics``."""
    return f"127.0.0.1:{worker.port}"


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
            series = f'{{{base},resource="{resource}",unit="{unit}"}}'
            lines += [f"kube_pod_container_resource_requests{series} {value} {t}" for t in times]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def query(base: str, expr: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "time": f"{time.time():.3f}"})
    with urllib.request.urlopen(f"{base}/api/v1/query?{params}", timeout=10) as resp:
        data = json.loads(resp.read())
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
    argv = ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h"]
    subprocess.run([*argv, str(history), str(tsdb)], check=True, capture_output=True, timeout=120)
    config = work / "prometheus.yml"
    port = free_port()
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
        # The worker is scraped (its counters at their start values) before the cycle runs.
        exprs = (
            'up{job="kubefinops"} == 1',
            "kubefinops_savings_realised_monthly_total",
            "container_memory_working_set_bytes",
        )
        wait_until(
            lambda: all(query(base, e) for e in exprs),
            60,
            "first scrape of the worker and backfilled history",
            server.log,
        )
        yield base
    finally:
        server.stop()


def _ready(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
        return resp.status == 200


def s3_keys(s3: S3Info, bucket: str) -> list[str]:
    client = s3.boto3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]
    except client.exceptions.NoSuchBucket:
        return []


@dataclass
class Cycle:
    recommendations: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    seeded: int  # commits on the remote before the cycle
    commits: list[str]
    reports: list[str]


@pytest.fixture(scope="module")
def cycle(prometheus: str, worker: Worker, kafka: KafkaInfo, s3: S3Info) -> Cycle:
    """One autopilot cycle through the running worker, seen by Prometheus afterwards."""
    dep, log = worker.dep, worker.server.log
    base = f"http://127.0.0.1:{worker.port}"
    seeded = worker.remote.log()
    batches, markers = _usage(np.random.default_rng(7))
    malformed = [(b"smarthealth/Deployment/billing", b"{not json")]
    asyncio.run(produce(kafka, dep.topic("metrics"), malformed + _records(batches)))

    policy = {
        "name": "smarthealth autopilot",
        "priority": 5,
        "mode": "autopilot",
        "selectors": {"namespaces": [WORKLOAD_NS]},
        # steps of at most 2x: over-provisioned workloads get a step short of their target
        "estimator": {"max_step": 2.0},
    }
    status, body = http_json(f"{base}/api/policies/smarthealth-autopilot", "PUT", policy, AUTH)
    assert status == 200, body

    def listed() -> list[str]:
        return [p["id"] for p in http_json(f"{base}/api/policies", headers=AUTH)[1]["policies"]]

    wait_for(lambda: listed() == ["smarthealth-autopilot"], 30, "the policy listed", log)
    asyncio.run(produce(kafka, dep.topic("metrics"), _records(markers)))

    commits = wait_for(
        lambda: (c := worker.remote.log()) != seeded and c,
        90,
        "the bot's commit on the remote",
        log,
    )
    reports = wait_for(
        lambda: [k for k in s3_keys(s3, worker.bucket) if k.endswith("report.json")],
        60,
        "the report in S3",
        log,
    )
    recs, decisions = (
        [
            json.loads(v)
            for _, v in asyncio.run(
                consume_all(kafka, dep.topic(t), expect=len(WORKLOADS), timeout=30)
            )
            if v
        ]
        for t in ("recommendations", "decisions")
    )
    assert {r["workload_id"] for r in recs} == {f"{WORKLOAD_NS}/{k}/{n}" for k, n, *_ in WORKLOADS}
    assert any(d["action"] == "apply" for d in decisions), decisions
    changed = worker.remote.changed_files()
    assert changed and all("overlays/production/kubefinops/" in f for f in changed), changed
    # Prometheus has scraped the results of the whole cycle.
    for expr in (
        'kubefinops_git_pushes_total{outcome="ok"} > 0',
        'kubefinops_reports_written_total{outcome="written"} > 0',
        "kubefinops_savings_realised_monthly_total > 0",
        "kubefinops_dead_letters_total",
        'kubefinops_cycle_duration_seconds_count{agent="executor"}',
        'kubefinops_prometheus_queries_total{outcome="ok"} > 0',
        "histogram_quantile(0.95, sum by (le) "
        '(rate(kubefinops_cycle_duration_seconds_bucket{agent="collector"}[5m])))',
    ):
        wait_for(lambda e=expr: finite(query(prometheus, e)), 30, f"Prometheus: {expr}", log)
    return Cycle(recs, decisions, len(seeded), commits, reports)


def _params() -> list[Any]:
    return [pytest.param(where, expr, id=where) for where, expr in dashboard_queries()]


@pytest.mark.parametrize(("where", "expr"), _params())
def test_dashboard_query_returns_data(prometheus: str, cycle: Cycle, where: str, expr: str) -> None:
    result = query(prometheus, expr)
    assert result, f"{where}: no series for {expr}"
    assert finite(result), f"{where}: only NaN/Inf for {expr}: {result}"


def test_workload_labels_survive_the_scrape(prometheus: str, cycle: Cycle) -> None:
    """honorLabels: the workload's namespace/container win over the scrape target's labels."""
    series = query(prometheus, 'kubefinops_request_current{resource="cpu"}')
    assert {s["metric"]["namespace"] for s in series} == {WORKLOAD_NS}
    assert {s["metric"]["container"] for s in series} == {w[3] for w in WORKLOADS}


def test_money_panels_match_the_recommendations(prometheus: str, cycle: Cycle) -> None:
    """The cost panels add up the costs of the recommendations the worker published: pending
    savings at the next step (``savings``) and at the target (``target_savings``, or the step's
    when the step reaches the target)."""
    queries = dict(dashboard_queries())
    (current,) = [q for w, q in queries.items() if "Monthly cost at current requests" in w]
    (pending,) = [q for w, q in queries.items() if "Pending savings (net" in w]
    (at_step,) = [q for w, q in queries.items() if "next step vs target/A" in w]
    (at_target,) = [q for w, q in queries.items() if "next step vs target/B" in w]
    latest = {r["workload_id"]: r for r in cycle.recommendations}
    expected_current = sum(r["savings"]["current_monthly"] for r in latest.values())
    expected_rec = sum(r["savings"]["recommended_monthly"] for r in latest.values())
    expected_target = sum(
        (r["target_savings"] or r["savings"])["recommended_monthly"] for r in latest.values()
    )
    # the max step holds the step back: the target saves more (both figures are checked)
    assert expected_current > expected_rec > expected_target > 0
    assert finite(query(prometheus, current)) == [pytest.approx(expected_current)]
    assert finite(query(prometheus, pending)) == [pytest.approx(expected_current - expected_rec)]
    assert finite(query(prometheus, at_step)) == [pytest.approx(expected_current - expected_rec)]
    assert finite(query(prometheus, at_target)) == [
        pytest.approx(expected_current - expected_target)
    ]


def test_realised_savings_match_the_pushed_decisions(
    prometheus: str, cycle: Cycle, worker: Worker
) -> None:
    """The savings counter adds up the applied decisions; one push per bot commit."""
    applied = [d for d in cycle.decisions if d["action"] == "apply"]
    expected = sum(max(0.0, -d["savings"]["monthly_delta"]) for d in applied)
    assert expected > 0
    (value,) = finite(query(prometheus, "kubefinops_savings_realised_monthly_total"))
    assert value == pytest.approx(expected)
    pushes = query(prometheus, "kubefinops_git_pushes_total")
    bot_commits = len(worker.remote.log()) - cycle.seeded
    assert bot_commits >= 1
    by_outcome = {s["metric"]["outcome"]: float(s["value"][1]) for s in pushes}
    assert by_outcome == {"ok": float(bot_commits), "rejected": 0.0, "error": 0.0}


def test_failure_panels_show_zero_and_the_dead_letter(prometheus: str, cycle: Cycle) -> None:
    """Failure counters exist at 0 (the cycle had no failure); the malformed record is counted."""
    failures = query(prometheus, "kubefinops_cycle_failures_total")
    expected = {("collector", "prometheus"), ("executor", "git"), ("reporter", "s3")}
    assert {(s["metric"]["agent"], s["metric"]["dependency"]) for s in failures} >= expected
    assert finite(failures) == [0.0] * len(failures)
    dead = query(prometheus, "kubefinops_dead_letters_total")
    assert sum(finite(dead)) == 1.0, dead


def test_cluster_history_is_queryable(prometheus: str) -> None:
    """The backfilled cAdvisor history answers the 1-day P95 subquery per container."""
    (p95,) = [q for w, q in dashboard_queries() if "P95 over 1d" in w]
    values = {r["metric"]["pod"]: float(r["value"][1]) for r in query(prometheus, p95)}
    assert set(values) == {p for p, *_ in PODS}
    for pod, _, cores, *_ in PODS:
        # usage oscillates +-20% around `cores`: its P95 sits just under the top
        assert cores * 1.1 <= values[pod] <= cores * 1.21
