"""``recommend --once`` vs KRR's query set, side by side on one Prometheus (its own query log).

The Prometheus is the test harness's synthetic cluster (kube-state-metrics + cAdvisor at 30 s,
``tests/harness/prometheus.py``, 3 days ending at the last UTC midnight), started here with
``query_log_file`` so every query's ``stats.samples.totalQueryableSamples`` is read from
Prometheus's own log, not from our counters.

Baseline — KRR's "simple" strategy, reproduced per workload and container with its default 75 s
step over the same window and the workload's pods (KRR lists them from the API server; here from
the harness's ground truth)::

    quantile_over_time(0.95, max(rate(container_cpu_usage_seconds_total{S}[75s]))
                             by (container, pod, job)[Dd:75s])
    max_over_time(max(container_memory_working_set_bytes{S}) by (container, pod, job)[Dd:75s])
    count_over_time(max(container_cpu_usage_seconds_total{S}) by (container, pod, job)[Dd:75s])

with ``S`` = ``namespace="N",pod=~"P1|P2",container="C"``.

Prometheus 2.x (and 3.x before 3.16) counts only a subquery's output points in
``totalQueryableSamples``, not the samples its inner ``rate()`` windows read: the bench also runs
each KRR subquery's inner expression as the equivalent range query (same steps, same windows) and
reports that count as "KRR unrolled" — what KRR's queries really make Prometheus read.  Both are
printed.  ``--prometheus PATH`` runs another server binary on the same blocks:
``--prometheus "$(scripts/prometheus3.sh)"`` builds Prometheus 3.16, whose own
``totalQueryableSamples`` counts subqueries' inner samples (prometheus#19165) and whose
``samplesRead`` counts storage reads (each sample once per selector); both are printed for both
sides.

Prometheus and the client each get a core of their own (``os.sched_setaffinity``: the server
inherits CPU 0, the bench then moves to CPU 1) when the machine has two or more, as in a
cluster, where Prometheus runs on its node and ``recommend --once`` (or KRR) on an operator's
machine; on a shared core the side that computes client-side (the one-shot) pays for the
server's time as well, and the one that asks Prometheus to compute (KRR) does not.
``--no-pin`` shares the cores as before.

Both sides run with the same concurrency (3 queries in flight, the one-shot's prefetch), in
alternating order (KRR first on even runs).  Wall time and Prometheus's own exec time: min /
median / max over ``--repeat`` runs, and the per-run ratio's range; the first run of each side
warms the page cache and is discarded.  The load average is printed before and after: the
machine is shared, compare ratios, not seconds.

    .venv/bin/python bench/bench_oneshot.py [--namespace smarthealth] [--repeat 5]
        [--prometheus "$(scripts/prometheus3.sh)"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.adapters.prometheus import PrometheusClient  # noqa: E402
from engine.oneshot import PREFETCH, run_once  # noqa: E402
from engine.settings import load_settings  # noqa: E402
from tests.harness.prometheus import (  # noqa: E402
    DAYS,
    QueryCost,
    build_cluster_tsdb,
    query_cost,
    query_log_size,
    start_prometheus,
)

KRR_STEP = 75


def krr_queries(truth: object, namespace: str | None, days: int) -> list[tuple[str, str]]:
    """(subquery, its inner expression) for every workload container, KRR's shapes."""
    pods: dict[tuple[str, str, str], list[str]] = {}
    for (ns, pod), (kind, name) in truth.pod_owner.items():  # type: ignore[attr-defined]
        if namespace is None or ns == namespace:
            pods.setdefault((ns, kind, name), []).append(pod)
    out = []
    for wl in truth.workloads:  # type: ignore[attr-defined]
        key = (wl.namespace, wl.kind, wl.name)
        if key not in pods:
            continue
        regex = "|".join(sorted(pods[key]))
        for container, *_ in wl.containers:
            sel = f'namespace="{wl.namespace}",pod=~"{regex}",container="{container}"'
            by = "by (container, pod, job)"
            rng = f"[{days}d:{KRR_STEP}s]"
            cpu_inner = f"max(rate(container_cpu_usage_seconds_total{{{sel}}}[{KRR_STEP}s])) {by}"
            mem_inner = f"max(container_memory_working_set_bytes{{{sel}}}) {by}"
            count_inner = f"max(container_cpu_usage_seconds_total{{{sel}}}) {by}"
            out += [
                (f"quantile_over_time(0.95, {cpu_inner}{rng})", cpu_inner),
                (f"max_over_time({mem_inner}{rng})", mem_inner),
                (f"count_over_time({count_inner}{rng})", count_inner),
            ]
    return out


async def run_krr(url: str, queries: list[str], at: float) -> None:
    settings = load_settings(prometheus_url=url, kafka_security_protocol="PLAINTEXT")
    gate = asyncio.Semaphore(PREFETCH)
    async with PrometheusClient(settings) as client:

        async def one(q: str) -> None:
            async with gate:
                await client.query(q, at)

        await asyncio.gather(*(one(q) for q in queries))


async def run_unrolled(url: str, inners: list[str], at: float, days: int) -> None:
    settings = load_settings(prometheus_url=url, kafka_security_protocol="PLAINTEXT")
    start = (at - days * 86400) // KRR_STEP * KRR_STEP + KRR_STEP
    async with PrometheusClient(settings) as client:
        for q in inners:
            await client.query_range(q, start, at, KRR_STEP)


def measure(log: Path, run: object) -> tuple[float, QueryCost]:
    before = query_log_size(log)
    started = time.perf_counter()
    asyncio.run(run())  # type: ignore[operator]
    seconds = time.perf_counter() - started
    time.sleep(0.2)  # the query log is written after the answer
    return seconds, query_cost(log, before)


def server_version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/api/v1/status/buildinfo", timeout=5) as resp:
        return str(json.loads(resp.read())["data"].get("version") or "?")


def read_count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "n/a"


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="smarthealth")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--prometheus",
        default="prometheus",
        help="server binary (default: Debian 2.42 on PATH; scripts/prometheus3.sh builds 3.16)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="share the cores between server and client"
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2

    cache = Path.home() / ".cache" / "kubefinops-tests"
    cache.mkdir(parents=True, exist_ok=True)
    blocks, truth, _, end_ts = build_cluster_tsdb(cache)
    work = Path(tempfile.mkdtemp(prefix="kfo-bench-oneshot-"))
    shutil.copytree(blocks, work / "tsdb", ignore=shutil.ignore_patterns("done"))
    if pinned:
        os.sched_setaffinity(0, {cpus[0]})  # the server (a child) inherits it
    server, url = start_prometheus(work / "tsdb", work, binary=args.prometheus)
    if pinned:
        os.sched_setaffinity(0, {cpus[1]})
    log = work / "query.log"
    version = server_version(url)
    days = DAYS
    settings = load_settings(
        prometheus_url=url,
        history_days=days,
        scrape_lag_seconds=0,
        kafka_security_protocol="PLAINTEXT",
    )
    now = float(end_ts)  # the window is exactly the data: (end - days, end]
    load_before = load_avg()
    try:
        rows = []
        for ns in (args.namespace, None):
            label = ns or "whole cluster"
            krr = krr_queries(truth, ns, days)
            namespaces = [ns] if ns else []

            def ours(namespaces: list[str] = namespaces) -> object:
                return run_once(settings, namespaces=namespaces, output="json", now=now)

            def theirs(krr: list[tuple[str, str]] = krr) -> object:
                return run_krr(url, [q for q, _ in krr], now)

            def unrolled(krr: list[tuple[str, str]] = krr) -> object:
                return run_unrolled(url, [i for _, i in krr], now, days)

            o_times, k_times, o_prom, k_prom = [], [], [], []
            o = k = QueryCost(0, 0, ())
            for i in range(args.repeat + 1):  # run 0 warms the page cache
                # alternating order: neither side always runs right after the other
                for side in ("ours", "theirs") if i % 2 else ("theirs", "ours"):
                    if side == "ours":
                        t, o = measure(log, ours)
                        if i:
                            o_times.append(t)
                            o_prom.append(o.seconds)
                    else:
                        t, k = measure(log, theirs)
                        if i:
                            k_times.append(t)
                            k_prom.append(k.seconds)
            _, u = measure(log, unrolled)
            rows.append((label, o, k, u, o_times, k_times, o_prom, k_prom))
        print(
            f"Prometheus {version}, {days} days of the harness cluster at 30 s, {args.repeat} runs"
        )
        where = f"server on CPU {cpus[0]}, client on CPU {cpus[1]}" if pinned else "shared"
        print(f"cores: {where}")
        print(f"load average: {load_before} before, {load_avg()} after")
        for label, o, k, u, o_t, k_t, o_p, k_p in rows:
            o_s, k_s, u_s = o.samples, k.samples, u.samples
            print(f"\n== {label}   (min / median / max)")
            print(
                f"  one-shot       samples {o_s:>10,}  queries {o.queries:>4}  wall s {spread(o_t)}"
            )
            print(
                f"  KRR (logged)   samples {k_s:>10,}  queries {k.queries:>4}  wall s {spread(k_t)}"
            )
            print(f"  KRR (unrolled) samples {u_s:>10,}  (the same windows as range queries)")
            print(
                f"  samplesRead (storage reads, Prometheus >= 3.13): one-shot "
                f"{read_count(o.samples_read)}, KRR {read_count(k.samples_read)}, KRR unrolled "
                f"{read_count(u.samples_read)}"
            )
            print(
                f"  Prometheus exec time, summed over queries (s): one-shot {spread(o_p)}, "
                f"KRR {spread(k_p)}"
            )
            pairs = list(zip(o_t, k_t, strict=True))
            per_run = sorted(o / k for o, k in pairs)
            prom_run = sorted(o / k for o, k in zip(o_p, k_p, strict=True))
            print(
                f"  ratio one-shot/KRR: samples {o_s / k_s:.2f} logged, {o_s / u_s:.2f} of KRR "
                "unrolled (the one-shot asks no subquery: its logged samples are all it reads)"
            )
            if o.samples_read is not None and k.samples_read:
                print(f"    samplesRead: {o.samples_read / k.samples_read:.2f}")
            print(
                f"    wall time: medians {statistics.median(o_t) / statistics.median(k_t):.2f}, "
                f"per run {per_run[0]:.2f}-{per_run[-1]:.2f}; Prometheus exec: medians "
                f"{statistics.median(o_p) / statistics.median(k_p):.2f}, per run "
                f"{prom_run[0]:.2f}-{prom_run[-1]:.2f}"
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
