"""``kubefinops recommend --once`` as a real subprocess against a real, backfilled Prometheus.

The expected numbers come from the harness's ground truth (raw counter and working-set samples),
not from the engine: CPU rates are recomputed from the counters the way PromQL's ``rate`` does
over the collector's window, pooled over the pods of each container, and the P95 x 1.15 target
is rounded up to millicores after the default policy's step and floor rules.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ruamel.yaml import YAML

from engine.adapters.prometheus import Collector, PrometheusClient
from engine.core.collect import plan_chunks
from engine.core.estimators import adaptive_candidates, cpu_request_base
from engine.core.model import UsageSummary
from engine.core.policy import DEFAULT_POLICY
from engine.core.quantity import ceil_cpu
from engine.core.render import CSV_COLUMNS
from engine.core.samples import validate_batch
from engine.core.usage import ContainerUsage
from engine.oneshot import (
    ONESHOT_CHUNK_SECONDS,
    Fold,
    collect,
    oneshot_step,
    rate_steps,
    recommend_all,
)
from engine.settings import Settings, load_settings
from tests.harness.proc import free_port
from tests.harness.prometheus import CLUSTER, PromInfo, query_cost, query_log_size

pytestmark = pytest.mark.integration

HISTORY_DAYS = 3
ROOT = Path(__file__).resolve().parents[2]
ALL_CONTAINERS = {f"{w.namespace}/{w.kind}/{w.name}/{c[0]}" for w in CLUSTER for c in w.containers}
# No price is configured: the run prices requests at OpenCost's defaults (per core-hour, GiB-hour)
CPU_CORE_HOUR, MEMORY_GIB_HOUR, HOURS_PER_MONTH = 0.031611, 0.004237, 730.0


def run_cli(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "recommend",
        "--once",
        "--prometheus-url",
        url,
        "--history-days",
        str(HISTORY_DAYS),
        *args,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def settings(url: str) -> Settings:
    return load_settings(
        prometheus_url=url, history_days=HISTORY_DAYS, kafka_security_protocol="PLAINTEXT"
    )


def window(s: Settings, now: float) -> tuple[float, float]:
    """The ``(start, end]`` the one-shot run read, recomputed from its ``generated_at``."""
    chunks = plan_chunks(
        None,
        now,
        scrape_lag=s.scrape_lag_seconds,
        history=s.history_seconds,
        chunk=ONESHOT_CHUNK_SECONDS,
        step=oneshot_step(s),
    )
    return chunks[0][0], chunks[-1][1]


def truth_rates(
    prom: PromInfo, start: float, end: float, step: int, window: int
) -> dict[str, list[float]]:
    """Per container id, every pod's CPU rate over ``(t - window, t]`` at the step-aligned times
    in ``(start, end]``: the counter's increase (a decrease is a reset, the increase is the
    value after it, as PromQL's ``rate``) scrape by scrape over the window."""
    truth = prom.truth
    out: dict[str, list[float]] = defaultdict(list)
    for (ns, pod, cont), points in truth.cpu_counter.items():
        kind, name = truth.pod_owner[(ns, pod)]
        times = [t for t, _ in points]
        values = [v for _, v in points]
        index = {t: i for i, t in enumerate(times)}
        first_t = start - start % step + step
        for t in np.arange(first_t, end + 1, step):
            lo = float(t - window)
            if lo < prom.start_ts or t > prom.end_ts:
                continue
            i, j = index[lo], index[float(t)]
            increase = sum(b - a if b >= a else b for a, b in itertools.pairwise(values[i : j + 1]))
            out[f"{ns}/{kind}/{name}/{cont}"].append(increase / window)
    return out


# The sketch's quantiles are within ~1.5 % of the exact ones (docs/recommendations.md), at a rank
# within RANK_SLACK percentile points: in a sparse tail neighbouring order statistics differ by
# more than the sketch's value error, and "the P99" depends on the rank convention.
SKETCH_ERROR = 0.015
RANK_SLACK = 0.1


def expected_cpus(rates: list[float], current: float | None) -> set[float]:
    """The default policy's chain for CPU on the ground-truth quantiles: the (adaptive)
    percentile x (1 + headroom), max step, millicores, floor.

    The adaptive rule picks the percentile with the lowest ``value x (1 + headroom) + burst cost
    x share above``.  When two percentiles score within the sketch's error of each other (the
    exact P99 of a sparse tail moves by a few % as the window slides a minute), either is the
    right answer for quantiles known to ~1 %: every such percentile's target is returned, for
    the exact quantiles and those RANK_SLACK points either side."""
    return set().union(
        *(_expected_cpus(rates, current, shift) for shift in (-RANK_SLACK, 0, RANK_SLACK))
    )


def _expected_cpus(rates: list[float], current: float | None, shift: float) -> set[float]:
    params = DEFAULT_POLICY.estimator
    q = np.percentile(rates, [min(100.0, p + shift) for p in (50, 90, 95, 99)], method="lower")
    truth = UsageSummary(
        p50=q[0],
        p90=q[1],
        p95=q[2],
        p99=q[3],
        max=max(rates),
        count=len(rates),
        first_ts=0.0,
        last_ts=float(params.min_history),
    )
    best = cpu_request_base(truth, params).value or 0.0
    candidates = {best}
    if params.cpu_percentile_mode == "adaptive":
        scored = [
            (score, value * (1 + params.cpu_headroom))
            for score, value, _ in adaptive_candidates(truth, params)
        ]
        low = min(score + SKETCH_ERROR * target for score, target in scored)
        candidates |= {t for score, t in scored if score - SKETCH_ERROR * t <= low}

    def chain(target: float) -> float:
        if current and params.max_step:
            target = min(max(target, current / params.max_step), current * params.max_step)
        return max(ceil_cpu(target), params.cpu_floor)

    return {chain(t) for t in candidates}


@pytest.fixture(scope="module")
def full_run(prometheus: PromInfo) -> tuple[list[dict[str, Any]], str]:
    done = run_cli(prometheus.url, "--output", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr


def containers(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{r['workload_id']}/{c['name']}": c for r in recs for c in r["containers"]}


def expected_costs(rec: dict[str, Any]) -> tuple[float, float, float]:
    """(current monthly cost, savings, increase) of a JSON recommendation, recomputed from its
    requests: cores and GiB x unit price x replicas x 730 h, each container resource that goes
    down a saving and each that goes up an increase (a missing request costs 0)."""
    current = saved = increased = 0.0
    for c in rec["containers"]:
        for resource, price in (("cpu", CPU_CORE_HOUR), ("memory", MEMORY_GIB_HOUR / 1024**3)):
            now = c["current"]["requests"][resource] or 0.0
            target = c[f"{resource}_request"]
            new = now if target is None else target
            per_unit = price * rec["replicas"] * HOURS_PER_MONTH
            current += now * per_unit
            saved += max(0.0, (now - new) * per_unit)
            increased += max(0.0, (new - now) * per_unit)
    return current, saved, increased


def test_json_covers_every_workload_with_savings(
    full_run: tuple[list[dict[str, Any]], str],
) -> None:
    recs, stderr = full_run
    assert set(containers(recs)) == ALL_CONTAINERS
    # piped: no progress at all (at most the note that the data ends before the window does)
    assert "chunk" not in stderr and len(stderr.splitlines()) <= 1, stderr
    for rec in recs:
        s = rec["savings"]
        assert s["monthly_delta"] == pytest.approx(
            s["recommended_monthly"] - s["current_monthly"], abs=1e-5
        )
        current, saved, increased = expected_costs(rec)
        assert (s["current_monthly"], s["monthly_savings"], s["monthly_increase"]) == (
            pytest.approx((current, saved, increased), abs=1e-5)
        ), rec["workload_id"]
    assert any(r["savings"]["monthly_savings"] > 0 for r in recs)  # a saving was checked


def test_cpu_requests_are_p95_of_the_ground_truth_plus_headroom(
    prometheus: PromInfo,
    full_run: tuple[list[dict[str, Any]], str],
) -> None:
    recs, _ = full_run
    s = settings(prometheus.url)
    start, end = window(s, recs[0]["generated_at"])
    step = oneshot_step(s)
    rates = truth_rates(prometheus, start, end, step, step * rate_steps(s))
    unbound = 0
    for cid, c in containers(recs).items():
        assert c["confidence"] != "none", (cid, c["reasons"])
        p95 = float(np.percentile(rates[cid], 95))
        current = c["current"]["requests"]["cpu"]
        wants = expected_cpus(rates[cid], current)
        ok = any(abs(c["cpu_request"] - w) <= SKETCH_ERROR * w + 0.001 for w in wants)
        assert ok, (cid, c["cpu_request"], sorted(wants), c["reasons"])
        assert c["usage"]["cpu"]["p95"] == pytest.approx(p95, rel=0.015), cid
        if not any("max step: cpu" in r for r in c["reasons"]):
            unbound += 1
    assert unbound >= 3  # the P95 rule itself, not only the step rule, was checked


def test_memory_limit_never_below_the_observed_peak(
    prometheus: PromInfo,
    full_run: tuple[list[dict[str, Any]], str],
) -> None:
    recs, _ = full_run
    start, end = window(settings(prometheus.url), recs[0]["generated_at"])
    for cid, c in containers(recs).items():
        ns, kind, name, cont = cid.split("/")
        peak = prometheus.truth.memory_max(ns, kind, name, cont, start, end)
        assert peak > 0
        # QoS Burstable by default: the limit (what kills) covers the peak, the request (what
        # costs) is the P99 + 10% and may be below it, never above the limit
        assert c["memory_limit"] >= peak, cid
        assert c["memory_limit"] >= c["memory_request"] > 0
        assert c["usage"]["memory"]["max"] >= peak


def test_gate_notes_travel_with_the_recommendation(
    full_run: tuple[list[dict[str, Any]], str],
) -> None:
    recs, _ = full_run
    by_id = containers(recs)
    notifier = by_id["smarthealth/Deployment/notifier/notifier"]["reasons"]
    assert any(r.startswith("excluded (annotation kubefinops.io/exclude") for r in notifier)
    api = by_id["smarthealth/Deployment/patient-api/app"]["reasons"]
    assert any("scales on cpu: it would change memory only" in r for r in api)
    gateway = by_id["payments/Deployment/gateway/gateway"]["reasons"]
    assert any("scales on memory: it would not change this workload" in r for r in gateway)
    ledger = by_id["payments/StatefulSet/ledger/ledger"]["reasons"]
    assert not any("autopilot" in r or "HPA" in r for r in ledger)


def test_namespace_filter_and_yaml(prometheus: PromInfo) -> None:
    done = run_cli(
        prometheus.url, "--namespace", "payments", "--namespace", "kube-system", "--output", "yaml"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    recs = YAML(typ="safe", pure=True).load(done.stdout)
    assert {r["namespace"] for r in recs} == {"payments", "kube-system"}
    assert set(containers(recs)) == {
        c for c in ALL_CONTAINERS if c.split("/")[0] in ("payments", "kube-system")
    }


def test_csv_has_a_header_and_one_row_per_container(prometheus: PromInfo) -> None:
    done = run_cli(prometheus.url, "--output", "csv")
    assert done.returncode == 0, done.stderr[-2000:]
    table = list(csv.reader(io.StringIO(done.stdout)))
    assert tuple(table[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]]
    assert len(body) == len(ALL_CONTAINERS)
    assert {
        f"{r['namespace']}/{r['kind']}/{r['workload']}/{r['container']}" for r in body
    } == ALL_CONTAINERS
    assert all(float(r["recommended_cpu_request"]) > 0 for r in body)


def test_table_shows_the_totals(prometheus: PromInfo) -> None:
    done = run_cli(prometheus.url, "--namespace", "smarthealth")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["WORKLOAD", "CONTAINER"]
    assert "CPU LIMIT" in lines[0] and "MEM LIMIT" in lines[0] and "REASON" in lines[0]
    assert sum(1 for line in lines if line.startswith("smarthealth/")) == 5
    assert any(line.startswith("Total monthly savings:") for line in lines)
    assert any(line.startswith("Total monthly increases:") for line in lines)
    assert "Notes:" in lines
    assert any(line.startswith("  smarthealth/Deployment/notifier: excluded") for line in lines)


def test_closed_port_exits_4_with_one_line() -> None:
    done = run_cli(
        f"http://127.0.0.1:{free_port()}",
        "--output",
        "json",
        env={"KUBEFINOPS_LOG_LEVEL": "warning"},
    )
    assert done.returncode == 4
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kubefinops: Prometheus at http://127.0.0.1:")
    assert "Traceback" not in done.stderr


def test_selection_is_pushed_into_promql(prometheus: PromInfo) -> None:
    """Prometheus's own query log: a namespace loads fewer samples than the whole cluster, and
    every usage query names the namespace; a label selector names exactly the pods."""
    log = prometheus.query_log
    assert log is not None
    costs = {}
    for name, args in (
        ("all", ()),
        ("payments", ("--namespace", "payments")),
        ("team=care", ("--selector", "team=care")),
    ):
        before = query_log_size(log)
        done = run_cli(prometheus.url, *args, "--output", "json")
        assert done.returncode == 0, done.stderr[-2000:]
        costs[name] = (query_cost(log, before), json.loads(done.stdout))
    everything, payments, care = (costs[k][0] for k in ("all", "payments", "team=care"))
    assert 0 < payments.samples < everything.samples
    assert 0 < care.samples < everything.samples
    usage = [q for q in payments.exprs if "usage_seconds" in q or "working_set" in q]
    assert usage and all('namespace="payments"' in q for q in usage), usage
    recs = costs["team=care"][1]
    assert {r["workload_id"] for r in recs} == {
        "smarthealth/Deployment/patient-api",
        "smarthealth/Deployment/notifier",
    }
    care_pods = {
        pod for (ns, pod), owner in prometheus.truth.pod_owner.items()
        if (ns, *owner) in {("smarthealth", "Deployment", "patient-api"),
                            ("smarthealth", "Deployment", "notifier")}
    }  # fmt: skip
    for q in (q for q in care.exprs if "usage_seconds" in q or "working_set" in q):
        assert all(pod in q for pod in care_pods), q
    # the samples scale with the selection: payments holds 5 of the 18 pods
    assert payments.samples < everything.samples * 0.5


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--namespace", "no-such-namespace"), 'namespace "no-such-namespace"'),
        (("--namespace", "payments", "--selector", "team=care"), 'selector "team=care"'),
    ],
)
def test_a_selection_matching_nothing_is_one_line_and_exit_5(
    prometheus: PromInfo, args: tuple[str, ...], named: str
) -> None:
    done = run_cli(prometheus.url, *args)
    assert done.returncode == 5
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubefinops: no workloads match"), done.stderr
    assert named in lines[0]


@pytest.mark.parametrize("left_open", [False, True], ids=["raw-memory", "memory-peaks"])
def test_the_recommendation_is_the_workers(prometheus: PromInfo, left_open: bool) -> None:
    """The one-shot's targets and usage percentiles equal the worker's (its collector's queries,
    chunks and step, folded by the aggregator's checks and ingest) on the same Prometheus and
    window, within the sketch's relative accuracy (1%) and the rounding to 1m / 1Mi.

    Both memory reads: the raw samples peaked client-side (what it reads from Prometheus 2.x,
    the harness's server) and the worker's own peak query (what it reads from Prometheus 3,
    whose left-open windows read each raw sample once)."""
    s = load_settings(
        prometheus_url=prometheus.url,
        history_days=HISTORY_DAYS,
        scrape_lag_seconds=0,
        kafka_security_protocol="PLAINTEXT",
    )
    now = float(prometheus.end_ts)

    async def worker() -> list[Any]:
        fold = Fold(history_seconds=s.history_seconds, window_seconds=s.usage_window_seconds)
        async with PrometheusClient(s) as client:
            collector = Collector(client, s)
            for start, end in plan_chunks(
                None,
                now,
                scrape_lag=0,
                history=s.history_seconds,
                chunk=s.prometheus_chunk_seconds,
                step=s.prometheus_step_seconds,
            ):
                for batch in await collector.collect_chunk(start, end):
                    checked = validate_batch(batch, now=now)
                    usage = fold.usage.setdefault(
                        checked.batch.container_id, ContainerUsage(s.usage_window_seconds)
                    )
                    usage.ingest(
                        checked.batch,
                        arrays=checked.arrays,
                        history_seconds=s.history_seconds,
                        window_seconds=s.usage_window_seconds,
                    )
            specs = await collector.collect_specs(now)
        return recommend_all(specs, fold, s, now=now)[0]

    async def oneshot() -> list[Any]:
        fold = Fold(history_seconds=s.history_seconds, window_seconds=s.usage_window_seconds)
        async with PrometheusClient(s, compress=False) as client:
            specs = await collect(s, fold, now=now, client=client, left_open=left_open)
        return recommend_all(specs, fold, s, now=now)[0]

    def by_container(recs: list[Any]) -> dict[str, Any]:
        return {f"{r.workload_id}/{c.name}": c for r in recs for c in r.containers}

    theirs, ours = by_container(asyncio.run(worker())), by_container(asyncio.run(oneshot()))
    assert set(ours) == set(theirs) == ALL_CONTAINERS
    for cid, want in theirs.items():
        got = ours[cid]
        assert got.confidence == want.confidence, cid
        assert got.cpu_request == pytest.approx(want.cpu_request, rel=0.01, abs=0.001), cid
        for field in ("memory_request", "memory_limit"):
            assert getattr(got, field) == pytest.approx(
                getattr(want, field), rel=0.01, abs=2**20
            ), (cid, field)
        for resource in ("cpu", "memory"):
            for q in ("p50", "p95", "p99", "max", "count"):
                assert got.usage[resource][q] == pytest.approx(want.usage[resource][q], rel=0.01), (
                    cid,
                    resource,
                    q,
                )
