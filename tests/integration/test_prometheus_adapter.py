"""The Prometheus adapter against a real Prometheus over a backfilled synthetic cluster.

The faults a real Prometheus cannot be made to give on demand — a proxy's HTML page, an answer
cut short, 5xx then success, an answer slower than the client's timeout, a 30,000-series answer
of a known size, requests held to count how many are in flight — come from a scripted HTTP
server on a real socket (``flaky``, ``tests/harness/local_http.serving``): the client's own
retry, timeout, parse and concurrency paths, end to end over HTTP, not a mock of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from engine.adapters.prometheus import BadQuery, Collector, PrometheusClient
from engine.core.collect import (
    OWNER_METRICS,
    Owners,
    build_specs,
    count_samples,
    cpu_expr,
    memory_expr,
    owner_expr,
    plan_chunks,
    spec_expr,
    spec_queries,
    split_range,
)
from engine.core.model import MetricsBatch, MetricsChunk, parse_metrics_record
from engine.core.samples import validate_chunk
from engine.core.selection import left_open_ranges
from engine.errors import AnswerTooLarge, AuthenticationFailed, DependencyUnavailable
from engine.metrics import PROMETHEUS_QUERIES
from engine.settings import Settings, load_settings
from tests.harness.local_http import serving
from tests.harness.proc import free_port
from tests.harness.prometheus import CLUSTER, MIB, PromInfo, instant, start_prometheus

pytestmark = pytest.mark.integration

STEP = 60
DAY = 86400
H = 3600


def _settings(url: str, **extra: Any) -> Settings:
    return load_settings(
        prometheus_url=url,
        kafka_username=None,
        prometheus_step_seconds=STEP,
        prometheus_chunk_seconds=6 * H,
        scrape_lag_seconds=120,
        prometheus_timeout_seconds=10,
        **extra,
    )


def _client(url: str, attempts: int = 3) -> PrometheusClient:
    return PrometheusClient(
        _settings(url), attempts=attempts, backoff_initial=0.01, backoff_max=0.05
    )


def _merge(batches: list[MetricsBatch]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for b in batches:
        slot = out.setdefault(b.container_id, {"cpu": [], "memory": []})
        for resource, samples in b.samples.items():
            slot[resource].extend(v for _, v in samples)
    return out


@pytest.fixture(scope="module")
async def two_days(prometheus: PromInfo) -> tuple[list[MetricsBatch], float, int]:
    """The last two days of the dataset collected chunk by chunk, as the collector agent would."""
    now = prometheus.end_ts + 120  # the scrape lag puts the horizon exactly on the data's end
    chunks = plan_chunks(None, now, scrape_lag=120, history=2 * DAY, chunk=6 * H, step=STEP)
    assert chunks[-1][1] == prometheus.end_ts
    async with _client(prometheus.url) as client:
        collector = Collector(client, step=STEP)
        batches = [b for s, e in chunks for b in await collector.collect_chunk(s, e)]
        return batches, float(prometheus.end_ts), collector.samples_read


async def test_p95_cpu_and_max_memory_agree_with_promql(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    batches, end, _ = two_days
    merged = _merge(batches)
    expected_ids = {
        f"{w.namespace}/{w.kind}/{w.name}/{c[0]}" for w in CLUSTER for c in w.containers
    }
    assert set(merged) == expected_ids  # no "POD", no "" container, sidecar included
    # pooled over pods: the same per-pod points evaluated by a Prometheus subquery
    sub = instant(prometheus.url, f"({cpu_expr(2 * STEP)})[2d:{STEP}s]", end)
    p95_q = instant(
        prometheus.url, f"quantile_over_time(0.95, ({cpu_expr(2 * STEP)})[2d:{STEP}s])", end
    )
    mem_q = instant(
        prometheus.url,
        "max by (namespace, pod, container) (max_over_time("
        'container_memory_working_set_bytes{container!="",container!="POD"}[2d]))',
        end,
    )
    owner = prometheus.truth.pod_owner
    pooled: dict[str, list[float]] = {}
    pod_p95: dict[str, list[float]] = {}
    pod_max: dict[str, float] = {}

    def cid(metric: Any) -> str:
        kind, name = owner[(metric["namespace"], metric["pod"])]
        return f"{metric['namespace']}/{kind}/{name}/{metric['container']}"

    for s in sub:
        pooled.setdefault(cid(s["metric"]), []).extend(float(v) for _, v in s["values"])
    for s in p95_q:
        pod_p95.setdefault(cid(s["metric"]), []).append(float(s["value"][1]))
    for s in mem_q:
        pod_max[cid(s["metric"])] = max(pod_max.get(cid(s["metric"]), 0.0), float(s["value"][1]))
    assert set(pooled) == set(pod_p95) == set(pod_max) == expected_ids
    for container, usage in merged.items():
        ours = float(np.percentile(usage["cpu"], 95))
        assert ours == pytest.approx(float(np.percentile(pooled[container], 95)), rel=0.02)
        # pooled P95 lies between the per-pod P95s PromQL computes
        assert min(pod_p95[container]) * 0.98 <= ours <= max(pod_p95[container]) * 1.02
        assert max(usage["memory"]) == pytest.approx(pod_max[container], rel=0.02)
        ns, kind, name, cont = container.split("/")
        truth_max = prometheus.truth.memory_max(ns, kind, name, cont, end - 2 * DAY, end)
        assert max(usage["memory"]) == truth_max  # exact: max_over_time per step tiles the window


async def test_cpu_mean_matches_ground_truth_counters(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    """Mean of the collected rates == counter increase / time, from the generator's own numbers."""
    batches, end, _ = two_days
    merged = _merge(batches)
    truth = prometheus.truth
    per_container: dict[str, list[float]] = {}
    for (ns, pod, cont), points in truth.cpu_counter.items():
        kind, name = truth.pod_owner[(ns, pod)]
        window = [v for t, v in points if end - 2 * DAY <= t <= end]
        per_container.setdefault(f"{ns}/{kind}/{name}/{cont}", []).append(
            (window[-1] - window[0]) / (2 * DAY)
        )
    oom_ns, oom_pod, oom_cont = truth.oom_pod
    oom_kind, oom_name = truth.pod_owner[(oom_ns, oom_pod)]
    skip = f"{oom_ns}/{oom_kind}/{oom_name}/{oom_cont}"  # its counter reset: delta is not usage
    assert set(per_container) == set(merged)
    for container, means in per_container.items():
        cpu = merged[container]["cpu"]
        assert len(cpu) == len(means) * 2 * DAY // STEP
        if container != skip:
            assert float(np.mean(cpu)) == pytest.approx(float(np.mean(means)), rel=0.02)


async def test_recollecting_a_window_gives_identical_batches(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    batches, end, _ = two_days
    start = end - 6 * H
    async with _client(prometheus.url) as client:
        again = await Collector(client, step=STEP).collect_chunk(start, end)
    assert again == [b for b in batches if b.start == start and b.end == end]
    assert again and all(b.samples["cpu"] and b.samples["memory"] for b in again)


async def test_namespace_shards_give_the_records_of_one_query(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    """The collector sizes its chunks by the series per namespace and may ask a chunk in
    namespace shards: the shards' records are exactly the one query's, and the count per
    namespace is what an answer holds (no pod churn in the synthetic cluster's last hour)."""
    _, end, _ = two_days
    start = end - 6 * H
    async with _client(prometheus.url) as client:
        collector = Collector(client, step=STEP)
        counted = await collector.series_by_namespace(end)
        whole = await collector.collect_records(start, end)
        first = sorted(counted)[0]
        shards = [f'namespace=~"{first}"', f'namespace!~"{first}"']
        parts = [await collector.collect_records(start, end, m) for m in shards]
        answer = await client.query_range_arrays(memory_expr(STEP), end - H + STEP, end, STEP)
    assert len(counted) >= 2 and all(n > 0 for n in counted.values())
    per_namespace: dict[str, int] = {}
    for series in answer:
        ns = series.labels["namespace"]
        per_namespace[ns] = per_namespace.get(ns, 0) + 1
    assert counted == per_namespace
    assert parts[0] and parts[1] and {r.namespace for r in parts[0]} == {first}
    assert sorted(r.encode() for p in parts for r in p) == sorted(r.encode() for r in whole)


def _samples(records: list[MetricsChunk], end: float) -> list[tuple[str, str, float, float]]:
    """Every (container, resource, ts, value) the records hold, as the aggregator reads them."""
    out = []
    for record in records:
        checked = validate_chunk(record, now=end)
        assert checked.reasons == []
        for container, arrays in checked.arrays.items():
            for resource, (ts, values) in arrays.items():
                out += [
                    (f"{record.workload_id}/{container}", resource, t, v)
                    for t, v in zip(ts.tolist(), values.tolist(), strict=True)
                ]
    return sorted(out)


async def test_an_answer_over_the_point_budget_is_refused_and_its_halves_hold_its_samples(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    """Read with a cap below its size, an answer raises AnswerTooLarge after one request (not
    retried: the same query gives the same answer); the two halves the collector asks instead
    hold exactly its samples; a cap it fits changes nothing."""
    _, end, _ = two_days
    start = end - 6 * H
    refused = PROMETHEUS_QUERIES.labels(outcome="too-large")
    async with _client(prometheus.url) as client:
        collector = Collector(client, step=STEP)
        whole = await collector.collect_records(start, end)
        points = sum(1 for _, resource, _, _ in _samples(whole, end) if resource == "cpu")
        fits = await collector.collect_records(start, end, max_points=10**9)
        assert [r.encode() for r in fits] == [r.encode() for r in whole]
        before = refused._value.get()
        with pytest.raises(AnswerTooLarge, match="over the bound"):
            # a cap of 24 bytes a point: under the ~36 Prometheus writes
            await collector.collect_records(start, end, max_points=points // 2)
        assert refused._value.get() == before + 1
        halves = split_range(start, end, STEP)
        assert halves is not None
        parts = [await collector.collect_records(a, b) for a, b in halves]
    assert parts[0] and parts[1]
    assert _samples([r for p in parts for r in p], end) == _samples(whole, end)


async def test_columnar_records_carry_the_samples_of_the_batches(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    """What the collector sends (one columnar record per workload, every pod on the query grid)
    holds exactly the samples of the per-container batches of the same chunk."""
    batches, end, _ = two_days
    start = end - 6 * H
    async with _client(prometheus.url) as client:
        records = await Collector(client, step=STEP).collect_records(start, end)
    mine = [b for b in batches if b.start == start and b.end == end]
    assert {r.workload_id for r in records} == {b.workload_id for b in mine}
    for record in records:
        wire = parse_metrics_record(record.encode())
        assert isinstance(wire, MetricsChunk) and wire.step == STEP
        checked = validate_chunk(wire, now=end)
        assert checked.reasons == []
        for b in (b for b in mine if b.workload_id == record.workload_id):
            for resource, pairs in b.samples.items():
                ts, values = checked.arrays[b.container][resource]
                got = sorted(zip(ts.tolist(), values.tolist(), strict=True))
                assert got == sorted(pairs)


async def test_specs_reflect_the_cluster(prometheus: PromInfo) -> None:
    async with _client(prometheus.url) as client:
        specs = {
            s.workload_id: s
            for s in await Collector(client, step=STEP).collect_specs(float(prometheus.end_ts))
        }
    assert set(specs) == {f"{w.namespace}/{w.kind}/{w.name}" for w in CLUSTER}
    for w in CLUSTER:
        spec = specs[f"{w.namespace}/{w.kind}/{w.name}"]
        assert spec.replicas == w.pods
        assert [c.name for c in spec.containers] == sorted(c[0] for c in w.containers)
        assert spec.labels == {k.replace("-", "_"): v for k, v in w.labels.items()}
        assert spec.annotations == w.annotations
        hpa_metrics = spec.hpa.metrics if spec.hpa else None
        assert hpa_metrics == ([w.hpa_metric] if w.hpa_metric else None)
        for c in w.containers:
            got = next(x for x in spec.containers if x.name == c[0])
            assert got.requests.cpu == c[4] and got.limits.memory == c[5] * MIB
    billing = specs["smarthealth/Deployment/billing"].containers[0]
    assert billing.last_oom_at == prometheus.truth.oom_at
    assert billing.oom_limit_bytes == 1536 * MIB and billing.restarts == 1 and billing.is_jvm
    assert specs["payments/StatefulSet/ledger"].containers[0].is_jvm
    assert specs["smarthealth/Deployment/patient-api"].containers[0].last_oom_at is None


async def test_specs_asked_metric_by_metric_and_by_shard_are_those_of_one_selector(
    prometheus: PromInfo,
) -> None:
    """The collector asks the spec metrics one at a time with only the labels a spec reads
    (``spec_queries``), per namespace shard: the specs are exactly those built from the one
    selector with every label, and the shards' together those of the whole cluster."""
    at = float(prometheus.end_ts)
    async with _client(prometheus.url) as client:
        collector = Collector(client, step=STEP)
        one = build_specs(await client.query(spec_expr(), at), at)
        asked = await collector.collect_specs(at)
        first = sorted({s.namespace for s in one})[0]
        parts = [
            await collector.collect_specs(at, m)
            for m in (f'namespace=~"{first}"', f'namespace!~"{first}"')
        ]
        rs_all = await client.query("kube_replicaset_owner", at)
        rs_asked = await client.query(dict(spec_queries())["kube_replicaset_owner"], at)
    assert one and [s.model_dump() for s in asked] == [s.model_dump() for s in one]
    assert parts[0] and parts[1] and {s.namespace for s in parts[0]} == {first}
    together = sorted((s.model_dump() for p in parts for s in p), key=lambda d: str(d))
    assert together == sorted((s.model_dump() for s in one), key=lambda d: str(d))
    # only the ReplicaSets that own a pod now, each with the five labels a spec reads
    assert 0 < len(rs_asked) <= len(rs_all)
    assert all(
        set(s.labels)
        == {"namespace", "replicaset", "owner_kind", "owner_name", "owner_is_controller"}
        for s in rs_asked
    )


async def test_owners_asked_lean_resolve_every_pod_as_with_every_label(
    prometheus: PromInfo,
) -> None:
    """The owners the collector asks (``owner_expr``: the labels an owner needs, ReplicaSets
    that owned a pod in the window, per shard) resolve every pod of the chunk to the workload
    the raw ``last_over_time`` answers give."""
    end, window = float(prometheus.end_ts), 2 * DAY
    async with _client(prometheus.url) as client:
        raw = Owners.build(
            *[await client.query(f"last_over_time({m}[{window}s])", end) for m in OWNER_METRICS]
        )
        lean = Owners.build(
            *[await client.query(owner_expr(m, window), end) for m in OWNER_METRICS]
        )
        first = sorted({ns for ns, _ in raw.pods})[0]
        shard = Owners.build(
            *[
                await client.query(owner_expr(m, window, f'namespace=~"{first}"'), end)
                for m in OWNER_METRICS
            ]
        )
    assert raw.pods and lean.pods == raw.pods and lean.jobs == raw.jobs
    assert len(lean.replicasets) <= len(raw.replicasets)
    assert {p: lean.resolve(*p) for p in raw.pods} == {p: raw.resolve(*p) for p in raw.pods}
    mine = [p for p in raw.pods if p[0] == first]
    assert mine and {p: shard.resolve(*p) for p in mine} == {p: raw.resolve(*p) for p in mine}
    assert all(ns == first for ns, _ in shard.pods)


async def test_hourly_cycle_reads_a_fraction_of_a_full_requery(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    _, end, _ = two_days
    now = end + 120
    async with _client(prometheus.url) as client:  # what a collector without a watermark reads
        full = Collector(client, step=STEP)
        batches = []
        for s, e in plan_chunks(None, now, scrape_lag=120, history=2 * DAY, chunk=6 * H, step=STEP):
            batches.extend(await full.collect_chunk(s, e))
        specs = await full.collect_specs(now)
    wm = end - H
    async with _client(prometheus.url) as client:
        collector = Collector(client, step=STEP)
        for s, e in plan_chunks(
            wm, end + 120, scrape_lag=120, history=2 * DAY, chunk=6 * H, step=STEP
        ):
            await collector.collect_chunk(s, e)
    per_day = full.samples_read / 2
    print(
        f"\nsamples read: hourly incremental cycle {collector.samples_read}, "
        f"full 2-day re-query {full.samples_read}, 14-day re-query ~{int(per_day * 14)} "
        f"(x{per_day * 14 / collector.samples_read:.0f})"
    )
    assert count_samples(batches) == full.samples_read
    assert collector.samples_read * 40 < full.samples_read
    assert len(specs) == len(CLUSTER)


async def test_build_version_reads_buildinfo_or_says_none(
    prometheus: PromInfo, flaky: tuple[str, list[str], dict[str, Any]]
) -> None:
    """The real server's version (the harness runs Debian's 2.x: closed range windows); a
    server without the endpoint and a closed port both give None, never an error."""
    async with _client(prometheus.url) as client:
        version = await client.build_version()
    assert version is not None and re.match(r"\d+\.\d+\.\d+", version), version
    assert left_open_ranges(version) is (int(version.split(".")[0]) >= 3)
    async with _client(flaky[0]) as client:
        assert await client.build_version() is None
    async with _client(f"http://127.0.0.1:{free_port()}") as client:
        assert await client.build_version() is None


async def test_bad_query_is_permanent(prometheus: PromInfo) -> None:
    async with _client(prometheus.url) as client:
        with pytest.raises(BadQuery, match="rejected"):
            await client.query("sum(", float(prometheus.end_ts))


async def test_unreachable_prometheus_raises_dependency_unavailable_without_secrets() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # basic auth from its settings, never in the URL
    settings = _settings(url, prometheus_username="bot", prometheus_password="s3cr3t-pw")
    plan = plan_chunks(None, 10 * DAY, scrape_lag=120, history=DAY, chunk=6 * H, step=STEP)
    watermarks: dict[str, float] = {}
    async with PrometheusClient(
        settings, attempts=3, backoff_initial=0.01, backoff_max=0.02
    ) as client:
        with pytest.raises(DependencyUnavailable, match="after 3 attempts") as info:
            for s, e in plan:
                await Collector(client, step=STEP).collect_chunk(s, e)
                watermarks["usage"] = e  # as the collector agent: after the chunk
    assert "s3cr3t" not in str(info.value) and "bot" not in str(info.value)
    assert watermarks == {}  # no chunk done: the next run plans the whole window again


async def test_prometheus_stopping_mid_plan_keeps_the_watermark_at_the_last_good_chunk(
    prometheus: PromInfo, tmp_path: Any
) -> None:
    tsdb = tmp_path / "tsdb"
    shutil.copytree(prometheus.blocks_dir, tsdb, ignore=shutil.ignore_patterns("done"))
    server, url = start_prometheus(tsdb, tmp_path)
    now = prometheus.end_ts + 120
    plan = plan_chunks(
        prometheus.end_ts - DAY, now, scrape_lag=120, history=2 * DAY, chunk=6 * H, step=STEP
    )
    watermarks: dict[str, float] = {"usage": prometheus.end_ts - DAY}
    try:
        async with _client(url) as client:
            collector = Collector(client, step=STEP)
            with pytest.raises(DependencyUnavailable):
                for i, (s, e) in enumerate(plan):
                    if i == 2:
                        server.stop()
                    assert await collector.collect_chunk(s, e)
                    watermarks["usage"] = e  # as the collector agent: after the chunk
    finally:
        server.stop()
    assert watermarks["usage"] == plan[1][1]
    assert (
        plan_chunks(
            watermarks["usage"], now, scrape_lag=120, history=2 * DAY, chunk=6 * H, step=STEP
        )
        == plan[2:]
    )


# --- a tiny misbehaving server -------------------------------------------------------------
@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[str], dict[str, Any]]]:
    """Serves queued (status, body) answers; records each request's query."""
    script: dict[str, Any] = {"answers": []}
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(str(form.get("query")))
        status, body = script["answers"].pop(0) if script["answers"] else (200, "garbage")
        if status == "slow":
            await asyncio.sleep(2)
            status = 200
        return web.Response(status=status, text=body, content_type="application/json")

    async with serving({"/api/v1/query": handle, "/api/v1/query_range": handle}) as url:
        yield url, seen, script


GOOD = (
    '{"status":"success","data":{"resultType":"vector",'
    '"result":[{"metric":{"a":"b"},"value":[1,"2"]}]}}'
)


@pytest.mark.parametrize(
    "garbage",
    [
        "<html>502 Bad Gateway</html>",
        '{"status":"success","data":{"resultType":"vector"}}',
        '{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}',
        "[1, 2, 3]",
    ],
)
async def test_malformed_json_is_retried_then_unavailable(
    flaky: tuple[str, list[str], dict[str, Any]], garbage: str
) -> None:
    url, seen, script = flaky
    script["answers"] = [(200, garbage)] * 3
    async with _client(url, attempts=3) as client:
        with pytest.raises(DependencyUnavailable, match="after 3 attempts"):
            await client.query("up", 1.0)
    assert len(seen) == 3


async def test_transient_errors_then_success(flaky: tuple[str, list[str], dict[str, Any]]) -> None:
    url, seen, script = flaky
    script["answers"] = [(503, "overloaded"), (200, "{not json"), (200, GOOD)]
    async with _client(url, attempts=4) as client:
        [series] = await client.query("up", 1.0)
    assert series.labels == {"a": "b"} and series.values == [(1.0, 2.0)]
    assert len(seen) == 3


async def test_client_error_is_not_retried(flaky: tuple[str, list[str], dict[str, Any]]) -> None:
    url, seen, script = flaky
    script["answers"] = [(400, '{"status":"error","error":"parse error at char 5"}')]
    async with _client(url, attempts=4) as client:
        with pytest.raises(BadQuery, match="parse error"):
            await client.query("sum(", 1.0)
    assert len(seen) == 1


async def test_too_many_samples_is_an_answer_too_large_when_the_caller_bounds_it(
    flaky: tuple[str, list[str], dict[str, Any]],
) -> None:
    """Prometheus' own bound (``query.max-samples``, HTTP 422): for a caller that bounds its
    answers, AnswerTooLarge (ask for less), after one request; for any other, a bad query."""
    url, seen, script = flaky
    too_many = (
        '{"status":"error","errorType":"execution","error":"query processing would load too '
        'many samples into memory in query execution"}'
    )
    script["answers"] = [(422, too_many), (422, too_many)]
    async with _client(url, attempts=4) as client:
        with pytest.raises(AnswerTooLarge, match="too many samples"):
            await client.query_range_arrays("up", 60.0, 3600.0, 60, max_bytes=1 << 20)
        assert len(seen) == 1
        with pytest.raises(BadQuery, match="too many samples"):
            await client.query_range_arrays("up", 60.0, 3600.0, 60)
    assert len(seen) == 2


def _vector(series: int) -> str:
    items = ",".join(
        f'{{"metric":{{"pod":"p{i}","namespace":"n{i % 7}"}},"value":[1,"{i}.5"]}}'
        for i in range(series)
    )
    return f'{{"status":"success","data":{{"resultType":"vector","result":[{items}]}}}}'


async def test_a_large_answer_is_parsed_off_the_event_loop(
    flaky: tuple[str, list[str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer over ``PARSE_IN_THREAD_BYTES`` is parsed in a worker thread (the loop keeps
    serving heartbeats and probes meanwhile), a small one on the loop; either way the same
    series, and a large malformed answer is still retried, then unavailable."""
    import threading

    import engine.adapters.prometheus as adapter

    threads: list[str] = []
    parse = adapter.parse_result

    def recording(doc: Any, expect: str) -> Any:
        threads.append(threading.current_thread().name)
        return parse(doc, expect)

    monkeypatch.setattr(adapter, "parse_result", recording)
    url, seen, script = flaky
    large = _vector(30_000)
    assert len(large) > adapter.PARSE_IN_THREAD_BYTES
    broken = large[:-200]  # cut short: not JSON
    script["answers"] = [(200, large), (200, _vector(3)), (200, broken), (200, broken)]
    loop_thread = threading.current_thread().name
    async with _client(url, attempts=2) as client:
        big = await client.query("up", 1.0)
        small = await client.query("up", 1.0)
        with pytest.raises(DependencyUnavailable, match="after 2 attempts"):
            await client.query("up", 1.0)
    assert len(big) == 30_000 and big[29_999].values == [(1.0, 29_999.5)]
    assert big[5].labels == {"pod": "p5", "namespace": "n5"}
    assert [x.values for x in small] == [[(1.0, 0.5)], [(1.0, 1.5)], [(1.0, 2.5)]]
    assert threads[0] != loop_thread and threads[1] == loop_thread
    assert len(seen) == 4


async def test_slow_answers_time_out_and_are_retried(
    flaky: tuple[str, list[str], dict[str, Any]],
) -> None:
    url, seen, script = flaky
    script["answers"] = [("slow", GOOD), (200, GOOD)]
    settings = load_settings(
        prometheus_url=url, kafka_username=None, prometheus_timeout_seconds=0.3
    )
    async with PrometheusClient(
        settings, attempts=3, backoff_initial=0.01, backoff_max=0.02
    ) as client:
        [series] = await client.query("up", 1.0)
    assert series.values == [(1.0, 2.0)] and len(seen) == 2


async def test_usage_state_fed_by_the_collector_agrees_with_promql(
    prometheus: PromInfo, two_days: tuple[list[MetricsBatch], float, int]
) -> None:
    """End to end with the aggregator's state (engine/core/usage.py): sketch P95 and exact max."""
    usage_mod = pytest.importorskip("engine.core.usage")
    batches, end, _ = two_days
    states: dict[str, Any] = {}
    for b in batches:
        states.setdefault(b.container_id, usage_mod.ContainerUsage()).ingest(b)
    p95 = {}
    for s in instant(prometheus.url, f"({cpu_expr(2 * STEP)})[2d:{STEP}s]", end):
        kind, name = prometheus.truth.pod_owner[(s["metric"]["namespace"], s["metric"]["pod"])]
        cid = f"{s['metric']['namespace']}/{kind}/{name}/{s['metric']['container']}"
        p95.setdefault(cid, []).extend(float(v) for _, v in s["values"])
    merged = _merge(batches)
    for cid, state in states.items():
        cpu = state.summary("cpu")
        # 2.x subqueries are left-closed: one extra point per pod at ``end - 2d``
        assert 0 <= len(p95[cid]) - cpu.count <= 3
        assert cpu.p95 == pytest.approx(float(np.percentile(p95[cid], 95)), rel=0.02)
        assert state.summary("memory").max == max(merged[cid]["memory"])
        before = state.summary("cpu")
        for b in (b for b in batches if b.container_id == cid):  # re-delivery changes nothing
            assert state.ingest(b).duplicates == count_samples([b])
        assert state.summary("cpu") == before


async def test_max_in_flight_bounds_the_requests_awaiting_the_server() -> None:
    """``max_in_flight``: however many queries are asked for at once, at most that many await
    the server together (the one-shot's pipeline); every one is answered, in order of asking."""
    active = peak = 0
    order: list[str] = []
    # Every request is held until ``want`` are in flight together, then all go (a latch, not a
    # sleep: how fast the host is never decides the peak).  A client letting fewer through
    # never opens it: the 5 s wait runs out and its peak says how many it let through.
    want = 0
    opened = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal active, peak
        form = await request.post()
        order.append(str(form.get("query")))
        active += 1
        peak = max(peak, active)
        if active >= want:
            opened.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), 5)
        active -= 1
        return web.Response(text=GOOD, content_type="application/json")

    async with serving({"/api/v1/query": handle}) as url:
        for limit, want in ((2, 2), (None, 6)):
            active = peak = 0
            order.clear()
            opened.clear()
            async with PrometheusClient(_settings(url), max_in_flight=limit) as client:
                answers = await asyncio.gather(*(client.query(f"up{i}", 1.0) for i in range(6)))
            assert [a[0].values for a in answers] == [[(1.0, 2.0)]] * 6
            assert peak == want, (limit, peak)
            assert sorted(order) == [f"up{i}" for i in range(6)]
            if limit is not None:  # bounded: sent in the order they were asked for
                assert order == [f"up{i}" for i in range(6)]


async def test_basic_auth_comes_from_its_settings_and_never_shows() -> None:
    """A Prometheus behind a proxy with basic auth: the user and the password (a secret setting,
    never in the URL) go in the Authorization header of every request; a 401 says so without
    them."""
    import base64

    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if len(seen) > 1:
            return web.Response(status=401, text="nope")
        return web.Response(text=GOOD, content_type="application/json")

    password = "Pr0m-pass-7x"
    async with serving({"/api/v1/query": handle}) as url:
        settings = _settings(url, prometheus_username="bot", prometheus_password=password)
        async with PrometheusClient(settings, attempts=2, backoff_initial=0.01) as client:
            (series,) = await client.query("up", 1.0)
            assert series.values == [(1.0, 2.0)]
            with pytest.raises(AuthenticationFailed) as caught:
                await client.query("up", 1.0)
    expected = "Basic " + base64.b64encode(f"bot:{password}".encode()).decode()
    assert seen == [expected, expected]
    assert password not in str(caught.value) and "bot" not in str(caught.value)
