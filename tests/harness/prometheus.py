"""A real Prometheus over a backfilled TSDB holding a synthetic, deterministic cluster.

The generator writes OpenMetrics text (timestamps in seconds, ``# EOF`` at the end) shaped like
what kube-prometheus-stack scrapes: cAdvisor usage (``container_cpu_usage_seconds_total``,
``container_memory_working_set_bytes``, including the pod-level ``container=""`` and the
``POD`` pause-container series a collector must skip) and kube-state-metrics 2.x series
(requests/limits with ``resource``/``unit``, owners, replicas, HPA, OOMKilled, restarts, labels).

``promtool tsdb create-blocks-from openmetrics`` turns it into blocks once; the blocks are cached
under ``~/.cache/kubefinops-tests`` keyed by generator version and day, and copied into a fresh
TSDB for each session.  The ground truth (every raw sample) is exposed so tests can compare.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pytest

from tests.harness.proc import Server, free_port, wait_until

GENERATOR_VERSION = 6
SCRAPE = 30  # cAdvisor samples every 30 s
KSM_SCRAPE = 120  # kube-state-metrics: slow-moving, every 2 min (< 5 min lookback)
DAYS = 3
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkloadDef:
    namespace: str
    kind: str  # Deployment | StatefulSet | DaemonSet
    name: str
    pods: int
    containers: tuple[tuple[str, str, float, float, float, float], ...]
    # (name, image, cpu base cores, mem base MiB, cpu request cores, mem limit MiB)
    labels: dict[str, str] = field(default_factory=dict)
    hpa_metric: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)  # only allow-listed ones


CLUSTER: tuple[WorkloadDef, ...] = (
    WorkloadDef(
        "smarthealth",
        "Deployment",
        "patient-api",
        3,
        (
            ("app", "ghcr.io/smarthealth/patient-api:1.4", 0.25, 300, 0.5, 512),
            ("istio-proxy", "docker.io/istio/proxyv2:1.22", 0.03, 60, 0.1, 128),
        ),
        {"app": "patient-api", "team": "care"},
        hpa_metric="cpu",
    ),
    WorkloadDef(
        "smarthealth",
        "Deployment",
        "billing",
        2,
        (("billing", "eclipse-temurin:21-jre", 0.4, 900, 1.0, 1536),),
        {"app": "billing", "team": "finance"},
    ),
    WorkloadDef(
        "smarthealth",
        "StatefulSet",
        "records-db",
        2,
        (("postgres", "postgres:16", 0.6, 1800, 1.0, 4096),),
        {"app": "records-db", "team": "data"},
    ),
    WorkloadDef(
        "smarthealth",
        "Deployment",
        "notifier",
        2,
        (("notifier", "ghcr.io/smarthealth/notifier:0.9", 0.02, 80, 0.25, 256),),
        {"app": "notifier", "team": "care"},
        annotations={"kubefinops.io/exclude": "true"},
    ),
    WorkloadDef(
        "payments",
        "Deployment",
        "gateway",
        3,
        (("gateway", "ghcr.io/acme/gateway:2.1", 0.15, 200, 0.5, 400),),
        {"app": "gateway", "team": "payments"},
        hpa_metric="memory",
    ),
    WorkloadDef(
        "payments",
        "StatefulSet",
        "ledger",
        2,
        (("ledger", "openjdk:17", 0.3, 1100, 0.5, 2048),),
        {"app": "ledger", "team": "payments"},
    ),
    WorkloadDef(
        "kube-system",
        "DaemonSet",
        "node-exporter",
        2,
        (("node-exporter", "quay.io/prometheus/node-exporter:1.8", 0.01, 25, 0.1, 64),),
        {"app": "node-exporter"},
    ),
    WorkloadDef(
        "kube-system",
        "Deployment",
        "coredns",
        2,
        (("coredns", "registry.k8s.io/coredns:1.11", 0.005, 20, 0.1, 170),),
        {"k8s-app": "kube-dns"},
    ),
)
# billing's first pod was OOMKilled halfway through (its cpu counter resets too)
OOM_POD = ("smarthealth", "billing")


@dataclass
class Truth:
    """Raw samples per (namespace, pod, container): cpu counter and memory working set."""

    cpu_counter: dict[tuple[str, str, str], list[tuple[int, float]]] = field(default_factory=dict)
    memory: dict[tuple[str, str, str], list[tuple[int, float]]] = field(default_factory=dict)
    # (namespace, pod) -> (kind, name)
    pod_owner: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    workloads: tuple[WorkloadDef, ...] = CLUSTER
    oom_at: float = 0.0
    oom_pod: tuple[str, str, str] = ("", "", "")

    def memory_max(
        self, namespace: str, kind: str, name: str, container: str, start: float, end: float
    ) -> float:
        best = 0.0
        for (ns, pod, cont), values in self.memory.items():
            if ns == namespace and cont == container and self.pod_owner[(ns, pod)] == (kind, name):
                best = max([best, *(v for t, v in values if start < t <= end)])
        return best


@dataclass(frozen=True)
class PromInfo:
    url: str
    tsdb_dir: Path
    truth: Truth
    start_ts: int
    end_ts: int
    server: Server
    blocks_dir: Path  # the cached, read-only blocks: copy them to start another Prometheus
    query_log: Path | None = None  # Prometheus's query log (JSON lines, one per query)


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _pod_names(rng: random.Random, wl: WorkloadDef) -> tuple[list[str], str | None]:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    if wl.kind == "StatefulSet":
        return [f"{wl.name}-{i}" for i in range(wl.pods)], None
    suffix = lambda n: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    if wl.kind == "Deployment":
        rs = f"{wl.name}-{suffix(10)}"
        return [f"{rs}-{suffix(5)}" for _ in range(wl.pods)], rs
    return [f"{wl.name}-{suffix(5)}" for _ in range(wl.pods)], None


def generate(
    start: int,
    end: int,
    seed: int = 42,
    out: TextIO | None = None,
    workloads: tuple[WorkloadDef, ...] = CLUSTER,
) -> Truth:
    """The ground truth for ``[start, end]``, deterministic per seed; with ``out``, also
    streams the OpenMetrics text there (hundreds of MB: never held in memory)."""
    rng = random.Random(seed)
    truth = Truth(workloads=workloads)
    ts_cad = range(start, end + 1, SCRAPE)
    ts_ksm = range(start, end + 1, KSM_SCRAPE)
    truth.oom_at = float(start + (end - start) // 2 // SCRAPE * SCRAPE)

    def series(name: str, labels: str, points: list[tuple[int, float]]) -> None:
        if out is not None:
            out.writelines(f"{name}{labels} {v!r} {t}\n" for t, v in points)

    def const(name: str, value: float, **labels: str) -> None:
        series(name, _labels(**labels), [(t, value) for t in ts_ksm])

    for wl in workloads:
        pods, rs = _pod_names(rng, wl)
        ns = wl.namespace
        kind_key = wl.kind.lower()
        lbl = {f"label_{k.replace('-', '_')}": v for k, v in wl.labels.items()}
        const(f"kube_{kind_key}_labels", 1, namespace=ns, **{kind_key: wl.name}, **lbl)
        if wl.annotations:
            ann = {
                "annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                for k, v in wl.annotations.items()
            }
            const(f"kube_{kind_key}_annotations", 1, namespace=ns, **{kind_key: wl.name}, **ann)
        if wl.kind == "Deployment":
            const("kube_deployment_spec_replicas", wl.pods, namespace=ns, deployment=wl.name)
            const(
                "kube_replicaset_owner",
                1,
                namespace=ns,
                replicaset=str(rs),
                owner_kind="Deployment",
                owner_name=wl.name,
                owner_is_controller="true",
            )
        elif wl.kind == "StatefulSet":
            const("kube_statefulset_replicas", wl.pods, namespace=ns, statefulset=wl.name)
        else:
            const(
                "kube_daemonset_status_desired_number_scheduled",
                wl.pods,
                namespace=ns,
                daemonset=wl.name,
            )
        if wl.hpa_metric:
            hpa = f"{wl.name}-hpa"
            const(
                "kube_horizontalpodautoscaler_info",
                1,
                namespace=ns,
                horizontalpodautoscaler=hpa,
                scaletargetref_api_version="apps/v1",
                scaletargetref_kind=wl.kind,
                scaletargetref_name=wl.name,
            )
            const(
                "kube_horizontalpodautoscaler_spec_target_metric",
                70,
                namespace=ns,
                horizontalpodautoscaler=hpa,
                metric_name=wl.hpa_metric,
                metric_target_type="utilization",
            )
            const(
                "kube_horizontalpodautoscaler_spec_min_replicas",
                2,
                namespace=ns,
                horizontalpodautoscaler=hpa,
            )
            const(
                "kube_horizontalpodautoscaler_spec_max_replicas",
                6,
                namespace=ns,
                horizontalpodautoscaler=hpa,
            )
        for p_idx, pod in enumerate(pods):
            owner_kind, owner_name = (
                ("ReplicaSet", str(rs)) if wl.kind == "Deployment" else (wl.kind, wl.name)
            )
            truth.pod_owner[(ns, pod)] = (wl.kind, wl.name)
            const(
                "kube_pod_owner",
                1,
                namespace=ns,
                pod=pod,
                owner_kind=owner_kind,
                owner_name=owner_name,
                owner_is_controller="true",
                uid=f"uid-{pod}",
            )
            node = f"node-{p_idx % 2}"
            pod_cpu_total = [0.0] * len(ts_cad)
            pod_mem_total = [0.0] * len(ts_cad)
            for c_name, image, cpu_base, mem_base, cpu_req, mem_lim in wl.containers:
                key = (ns, pod, c_name)
                oomed = (ns, wl.name) == OOM_POD and p_idx == 0 and c_name == wl.containers[0][0]
                for res, unit, req, lim in (
                    ("cpu", "core", cpu_req, cpu_req * 2),
                    ("memory", "byte", mem_lim * MIB * 0.75, mem_lim * MIB),
                ):
                    const(
                        "kube_pod_container_resource_requests",
                        req,
                        namespace=ns,
                        pod=pod,
                        container=c_name,
                        node=node,
                        resource=res,
                        unit=unit,
                    )
                    const(
                        "kube_pod_container_resource_limits",
                        lim,
                        namespace=ns,
                        pod=pod,
                        container=c_name,
                        node=node,
                        resource=res,
                        unit=unit,
                    )
                const(
                    "kube_pod_container_info",
                    1,
                    namespace=ns,
                    pod=pod,
                    container=c_name,
                    image=image,
                    image_spec=image,
                    container_id=f"containerd://{pod}{c_name}",
                )
                if oomed:
                    truth.oom_pod = key
                    after = [(t, 1.0) for t in ts_ksm if t >= truth.oom_at]
                    series(
                        "kube_pod_container_status_last_terminated_reason",
                        _labels(namespace=ns, pod=pod, container=c_name, reason="OOMKilled"),
                        after,
                    )
                    series(
                        "kube_pod_container_status_last_terminated_timestamp",
                        _labels(namespace=ns, pod=pod, container=c_name),
                        [(t, truth.oom_at) for t, _ in after],
                    )
                series(
                    "kube_pod_container_status_restarts_total",
                    _labels(namespace=ns, pod=pod, container=c_name),
                    [(t, 1.0 if oomed and t >= truth.oom_at else 0.0) for t in ts_ksm],
                )
                counter, cpu_points, mem_points = 0.0, [], []
                phase = rng.uniform(0, 6.28)
                mem = mem_base * MIB
                for i, t in enumerate(ts_cad):
                    day = 0.5 + 0.5 * math.sin((t % 86400) / 86400 * 6.283 + phase)
                    spike = 3.0 if rng.random() < 0.01 else 1.0
                    rate = max(0.0005, cpu_base * (0.4 + day) * spike * rng.uniform(0.8, 1.2))
                    if oomed and t == truth.oom_at:
                        counter = 0.0  # container restarted: the counter resets
                        mem = mem_base * MIB * 0.5
                    else:
                        counter += rate * SCRAPE
                    # a mean-reverting walk around the base (a leak before the OOM), plus rare
                    # transient spikes: a working set that neither drifts off nor compounds
                    mem = max(
                        mem_base * MIB * 0.3,
                        mem
                        + 0.02 * (mem_base * MIB - mem)
                        + rng.gauss(0, mem_base * MIB * 0.01)
                        + (mem_base * MIB * 0.002 if oomed and t < truth.oom_at else 0.0),
                    )
                    seen = mem * 1.3 if rng.random() < 0.002 else mem
                    cpu_points.append((t, round(counter, 4)))
                    mem_points.append((t, float(int(seen))))
                    pod_cpu_total[i] += counter
                    pod_mem_total[i] += seen
                truth.cpu_counter[key] = cpu_points
                truth.memory[key] = mem_points
                cad = {
                    "namespace": ns,
                    "pod": pod,
                    "container": c_name,
                    "image": image,
                    "job": "kubelet",
                    "metrics_path": "/metrics/cadvisor",
                    "node": node,
                }
                series("container_cpu_usage_seconds_total", _labels(**cad), cpu_points)
                series("container_memory_working_set_bytes", _labels(**cad), mem_points)
            # pod-level cgroup (container="") and the pause container: a collector must skip both
            for cont, scale in (("", 1.0), ("POD", 0.0)):
                cad = {
                    "namespace": ns,
                    "pod": pod,
                    "container": cont,
                    "job": "kubelet",
                    "metrics_path": "/metrics/cadvisor",
                    "node": node,
                }
                series(
                    "container_cpu_usage_seconds_total",
                    _labels(**cad),
                    [
                        (t, round(v * scale + 0.001 * i, 4))
                        for i, (t, v) in enumerate(zip(ts_cad, pod_cpu_total, strict=True))
                    ],
                )
                series(
                    "container_memory_working_set_bytes",
                    _labels(**cad),
                    [
                        (t, float(int(v * scale + 1 * MIB)))
                        for t, v in zip(ts_cad, pod_mem_total, strict=True)
                    ],
                )
    if out is not None:
        out.write("# EOF\n")
    return truth


def render(start: int, end: int, seed: int = 42) -> tuple[str, Truth]:
    """OpenMetrics text and truth in memory (small windows only)."""
    buf = io.StringIO()
    truth = generate(start, end, seed, buf)
    return buf.getvalue(), truth


def promtool_backfill(openmetrics: str | Path, tsdb_dir: Path) -> None:
    """Write TSDB blocks from OpenMetrics text (or a file path) into ``tsdb_dir``."""
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(openmetrics, str) and "\n" not in openmetrics and Path(openmetrics).is_file():
        openmetrics = Path(openmetrics)
    if isinstance(openmetrics, str) and not openmetrics.rstrip().endswith("# EOF"):
        raise ValueError("OpenMetrics input must end with '# EOF'")
    if isinstance(openmetrics, str):
        src = tsdb_dir.parent / f"{tsdb_dir.name}.om"
        src.write_text(openmetrics, encoding="utf-8")
    else:
        src = openmetrics
    try:
        done = subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=24h",
                str(src),
                str(tsdb_dir),
            ],
            capture_output=True,
            timeout=600,
            check=False,
        )
    finally:
        if isinstance(openmetrics, str):
            src.unlink()
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"promtool backfill failed: {err}")


def cluster_window(now: float | None = None) -> tuple[int, int]:
    """``DAYS`` of data ending at the last UTC midnight (stable within a day: cacheable)."""
    end = int((now if now is not None else time.time()) // 86400 * 86400)
    return end - DAYS * 86400, end


def build_cluster_tsdb(cache_root: Path, now: float | None = None) -> tuple[Path, Truth, int, int]:
    start, end = cluster_window(now)
    digest = hashlib.sha256(f"{GENERATOR_VERSION}:{start}:{end}".encode()).hexdigest()[:16]
    blocks = cache_root / f"prom-{digest}"
    if not (blocks / "done").exists():
        if blocks.exists():
            shutil.rmtree(blocks)
        tmp = cache_root / f"prom-{digest}.tmp{time.monotonic_ns()}"
        source = cache_root / f"{tmp.name}.om"
        with source.open("w", encoding="utf-8") as fh:
            truth = generate(start, end, out=fh)
        try:
            promtool_backfill(source, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            source.unlink()
        (tmp / "done").write_text(json.dumps({"start": start, "end": end}))
        try:
            tmp.rename(blocks)
        except OSError:  # another session won the race
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        truth = generate(start, end)
    return blocks, truth, start, end


def start_prometheus(
    tsdb_dir: Path,
    workdir: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    binary: str = "prometheus",
) -> tuple[Server, str]:
    """A Prometheus on ``tsdb_dir`` logging every query; ``binary`` is the Debian package's 2.42
    unless told otherwise (``scripts/prometheus3.sh`` builds a 3.x for the one-shot bench)."""
    port = port or free_port()
    config = workdir / "prometheus.yml"
    # Prometheus's own query log: what every query cost it (stats.samples.totalQueryableSamples)
    config.write_text(
        "global:\n  scrape_interval: 30s\n"
        f"  query_log_file: {workdir / 'query.log'}\nscrape_configs: []\n"
    )
    server = Server(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb_dir}",
            "--storage.tsdb.retention.time=30d",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-admin-api",
            *extra_args,
        ],
        log=workdir / "prometheus.log",
    ).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)

    wait_until(ready, 30, "prometheus", server.log)
    return server, url


@dataclass(frozen=True)
class QueryCost:
    queries: int
    samples: int  # sum of stats.samples.totalQueryableSamples
    exprs: tuple[str, ...]
    seconds: float = 0.0  # sum of stats.timings.execTotalTime: Prometheus's own time
    # sum of stats.samples.samplesRead (Prometheus >= 3.13: storage reads, each sample once per
    # selector however many windows reuse it); None when the server does not report it
    samples_read: int | None = None


def query_log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def query_cost(log: Path, since: int = 0) -> QueryCost:
    """What the queries logged after byte ``since`` of Prometheus's query log cost it."""
    if not log.exists():
        return QueryCost(0, 0, ())
    with log.open("rb") as fh:
        fh.seek(since)
        entries = [json.loads(line) for line in fh.read().splitlines() if line.strip()]
    read = [e["stats"]["samples"].get("samplesRead") for e in entries]
    return QueryCost(
        len(entries),
        sum(int(e["stats"]["samples"]["totalQueryableSamples"]) for e in entries),
        tuple(str(e["params"]["query"]) for e in entries),
        sum(float(e["stats"]["timings"].get("execTotalTime", 0.0)) for e in entries),
        sum(int(r) for r in read) if read and None not in read else None,
    )


def instant(url: str, expr: str, at: float) -> list[dict[str, object]]:
    """Instant query through the plain HTTP API (the harness's independent check)."""
    data = urllib.parse.urlencode({"query": expr, "time": str(at)}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=data, timeout=30) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromInfo]:
    cache = Path.home() / ".cache" / "kubefinops-tests"
    cache.mkdir(parents=True, exist_ok=True)
    blocks, truth, start, end = build_cluster_tsdb(cache)
    work = tmp_path_factory.mktemp("prometheus")
    tsdb = work / "tsdb"
    shutil.copytree(blocks, tsdb, ignore=shutil.ignore_patterns("done"))
    server, url = start_prometheus(tsdb, work)
    try:
        yield PromInfo(
            url=url,
            tsdb_dir=tsdb,
            truth=truth,
            start_ts=start,
            end_ts=end,
            server=server,
            blocks_dir=blocks,
            query_log=work / "query.log",
        )
    finally:
        server.stop()
