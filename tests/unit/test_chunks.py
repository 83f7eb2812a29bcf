"""The columnar metrics record (MetricsChunk): same state, same reasons, same marks as the
per-container MetricsBatch it replaces, and the old format still ingested identically.

The oracle everywhere is the other path, not a hard-coded answer: the same samples sent as
MetricsBatch records (the format before chunks, whose behaviour tests/unit/test_samples.py and
test_usage.py pin down) must give the same state and the same dead-letter reasons.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import aggregator
from agents.runtime import Runtime
from engine.core.bounds import MAX_SAMPLES
from engine.core.collect import (
    CHUNK_CHOICES,
    Owners,
    QueryPlan,
    Series,
    SeriesArrays,
    answer_bytes_cap,
    build_batches,
    build_chunks,
    chunk_for,
    chunks_from_batches,
    grid_rows,
    plan_queries,
    split_chunk,
    split_range,
)
from engine.core.model import MetricsBatch, MetricsChunk, parse_metrics_record
from engine.core.samples import validate_batch, validate_chunk
from engine.errors import InvalidRecord
from tests.fakes import dead_letters, runtime

NOW = 1_800_000_000.0
STEP = 60
START = NOW - 6 * 3600 - 120  # a multiple of 60: the grid starts at START + 60
END = START + 6 * 3600
WID = "shop/Deployment/api"


def _series(
    rng: np.random.Generator, pods: int, gaps: float = 0.1
) -> tuple[list[Series], list[Series]]:
    """Prometheus-shaped answers: per pod and container a cpu and a memory series on the grid,
    with random gaps (a pod that started late, missed scrapes)."""
    ts = np.arange(START + STEP, END + 1, STEP, dtype=float)
    cpu, mem = [], []
    for p in range(pods):
        for container in ("app", "sidecar"):
            labels = {"namespace": "shop", "pod": f"api-{p}", "container": container}
            keep = rng.random(ts.size) >= gaps
            c = rng.lognormal(math.log(0.2), 0.6, ts.size)
            m = rng.uniform(2e8, 6e8, ts.size).round()
            cpu.append(Series(labels, list(zip(ts[keep].tolist(), c[keep].tolist(), strict=True))))
            mem.append(Series(labels, list(zip(ts[keep].tolist(), m[keep].tolist(), strict=True))))
    return cpu, mem


OWNERS = Owners(
    pods={("shop", f"api-{p}"): ("ReplicaSet", "api-7d9") for p in range(8)},
    replicasets={("shop", "api-7d9"): ("Deployment", "api")},
)


def _ingest(rt: Runtime, records: list[bytes], key: bytes = WID.encode()) -> None:
    async def run() -> None:
        for raw in records:
            await aggregator.ingest(rt, key, raw)

    asyncio.run(run())


def _state(rt: Runtime, container: str) -> dict[str, Any]:
    usage = rt.tables.usage.get(f"{WID}/{container}")
    assert usage is not None
    return usage.to_dict()


def test_one_record_per_workload_holds_every_container_and_pod_on_the_grid() -> None:
    cpu, mem = _series(np.random.default_rng(1), pods=3)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    batches = build_batches(cpu, mem, OWNERS, START, END)
    assert chunk.workload_id == WID and set(chunk.containers) == {"app", "sidecar"}
    assert chunk.t0 == START + STEP and chunk.n == 360
    assert all(len(rows) == 3 for res in chunk.containers.values() for rows in res.values())
    # the same samples as the per-container batches, nulls where a pod had none
    assert chunk.sample_count() == sum(len(v) for b in batches for v in b.samples.values())
    wire = parse_metrics_record(chunk.encode())
    assert isinstance(wire, MetricsChunk) and wire.sample_count() == chunk.sample_count()
    assert b"null" in chunk.encode() and b"NaN" not in chunk.encode()


def _as_arrays(series: list[Series]) -> list[SeriesArrays]:
    return [
        SeriesArrays(
            s.labels,
            np.asarray([t for t, _ in s.values], dtype=np.float64),
            np.asarray([v for _, v in s.values], dtype=np.float64),
        )
        for s in series
    ]


@pytest.mark.parametrize("pods", [1, 3])
def test_the_collectors_arrays_give_the_records_of_the_tuples(pods: int) -> None:
    """The collector reads answers as numpy arrays; the records are those the tuples give, byte
    for byte (one pod, several, a pod's series repeating a time, samples outside the chunk)."""
    cpu, mem = _series(np.random.default_rng(20 + pods), pods=pods, gaps=0.2)
    # a merged series with a repeated time (two rows), and samples before and after the chunk
    doubled = [*cpu[0].values, cpu[0].values[3]]
    cpu[0] = Series(cpu[0].labels, [(START, 0.5), *doubled, (END + STEP, 0.5)])
    old = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    new = build_chunks(_as_arrays(cpu), _as_arrays(mem), OWNERS, START, END, STEP)
    assert [c.encode() for c in new] == [c.encode() for c in old] and old
    assert len(new[0].containers["app"]["cpu"]) == pods + 1  # the repetition's own row


def test_a_day_per_chunk_while_the_answer_fits_the_point_budget() -> None:
    day = 86_400
    assert chunk_for(2_000, longest=day, budget=3_000_000, step=60) == day  # 2.88 M points
    assert chunk_for(2_100, longest=day, budget=3_000_000, step=60) == 43_200
    assert chunk_for(20_000, longest=day, budget=3_000_000, step=60) == 7_200  # 2.4 M
    assert chunk_for(10**9, longest=day, budget=3_000_000, step=60) == CHUNK_CHOICES[-1]
    # never longer than the setting, which is tried first even when it is not a choice
    assert chunk_for(1, longest=6 * 3600, budget=3_000_000, step=60) == 6 * 3600
    assert chunk_for(1, longest=5_000, budget=3_000_000, step=60) == 5_000
    assert chunk_for(100, longest=5_000, budget=5_000, step=60) == 1_800  # 100 x 83 > 5,000
    # nothing known (or an empty cluster): the setting
    assert chunk_for(None, longest=day, budget=10, step=60) == day
    assert chunk_for(0, longest=day, budget=10, step=60) == day
    with pytest.raises(ValueError, match="positive"):
        chunk_for(1, longest=day, budget=0, step=60)
    # every choice divides a day: chunk boundaries stay on UTC midnights whatever is chosen
    assert all(day % c == 0 for c in CHUNK_CHOICES)


def _shard_names(matcher: str) -> tuple[bool, set[str]]:
    found = re.fullmatch(r'namespace(=~|!~)"([^"]*)"', matcher)
    assert found, matcher
    return found.group(1) == "=~", set(found.group(2).split("|"))


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
        st.integers(1, 5_000),
        min_size=1,
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_namespace_shards_cover_every_namespace_once_within_the_budget(
    series: dict[str, int],
) -> None:
    budget, day = 3_000_000, 86_400
    plan = plan_queries(series, longest=day, budget=budget, step=60)
    points = plan.chunk // 60
    whole = chunk_for(sum(series.values()), longest=day, budget=budget, step=60)
    if plan.shards == ("",):  # one query: the whole cluster's own chunk
        assert plan.chunk == whole
        return
    assert plan.chunk > whole  # sharding only when it makes the records longer
    *named, rest = (_shard_names(m) for m in plan.shards)
    assert all(inside for inside, _ in named) and not rest[0]
    listed = [ns for _, names in named for ns in names]
    assert len(listed) == len(set(listed)) and rest[1] == set(listed)  # the rest: all others
    for _, names in [*named, (True, set(series) - set(listed))]:
        assert sum(series[ns] for ns in names) * points <= budget or len(names) == 1


def test_one_query_when_it_fits_or_when_a_namespace_is_too_large_to_shard() -> None:
    day = 86_400
    assert plan_queries({"a": 1_000, "b": 1_000}, longest=day, budget=3_000_000, step=60) == (
        QueryPlan(day)
    )
    # 10,000 workloads in 50 namespaces: a day per chunk in shards of <= 2,083 series
    fleet = {f"ns-{i}": 400 for i in range(50)}
    plan = plan_queries(fleet, longest=day, budget=3_000_000, step=60)
    assert plan.chunk == day and len(plan.shards) == 10  # 5 namespaces (2,000 series) each
    # one namespace of 20,000 series: sharding by namespace cannot help
    assert plan_queries({"big": 20_000, "small": 10}, longest=day, budget=3_000_000, step=60) == (
        QueryPlan(7_200)
    )
    # a name that is not a Kubernetes namespace is never put in a regex
    odd = {'a"|.*': 3_000, "b": 3_000}
    assert plan_queries(odd, longest=day, budget=3_000_000, step=60).shards == ("",)
    assert plan_queries({}, longest=day, budget=3_000_000, step=60) == QueryPlan(day)


def test_a_chunk_gives_the_state_of_the_same_samples_sent_as_batches() -> None:
    """One pod: the order of samples is the same, so the states are equal byte for byte."""
    cpu, mem = _series(np.random.default_rng(2), pods=1)
    batches = build_batches(cpu, mem, OWNERS, START, END)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    old, new = runtime(now=NOW), runtime(now=NOW)
    _ingest(old, [b.model_dump_json().encode() for b in batches])
    _ingest(new, [chunk.encode()])
    for container in ("app", "sidecar"):
        assert _state(old, container) == _state(new, container)
    assert not dead_letters(old) and not dead_letters(new)


def test_several_pods_give_the_same_distribution_as_batches() -> None:
    """Several pods: the samples arrive in another order, so float sums may differ in the last
    bits; counts, extremes and quantiles are those of the batches."""
    cpu, mem = _series(np.random.default_rng(3), pods=4, gaps=0.3)
    batches = build_batches(cpu, mem, OWNERS, START, END)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    old, new = runtime(now=NOW), runtime(now=NOW)
    _ingest(old, [b.model_dump_json().encode() for b in batches])
    _ingest(new, [chunk.encode()])
    for container in ("app", "sidecar"):
        a = old.tables.usage.get(f"{WID}/{container}")
        b = new.tables.usage.get(f"{WID}/{container}")
        assert a is not None and b is not None and a.high_water == b.high_water
        for resource in ("cpu", "memory"):
            sa, sb = a.summary(resource), b.summary(resource)
            assert (sa.count, sa.p50, sa.p95, sa.p99, sa.max) == (
                sb.count,
                sb.p50,
                sb.p95,
                sb.p99,
                sb.max,
            )
            assert sb.mean == pytest.approx(sa.mean, rel=1e-12)


def test_a_redelivered_chunk_changes_nothing_and_an_old_batch_of_it_is_a_duplicate() -> None:
    cpu, mem = _series(np.random.default_rng(4), pods=2)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    rt = runtime(now=NOW)
    _ingest(rt, [chunk.encode()])
    before = {c: _state(rt, c) for c in ("app", "sidecar")}
    # the same chunk again, then the same samples in the old format (an upgrade's leftovers)
    _ingest(
        rt,
        [
            chunk.encode(),
            *(b.model_dump_json().encode() for b in build_batches(cpu, mem, OWNERS, START, END)),
        ],
    )
    assert {c: _state(rt, c) for c in ("app", "sidecar")} == before


def _hostile_grid() -> tuple[bytes, list[bytes]]:
    """A chunk with every kind of bad sample, and the same samples as per-container batches."""
    n = 10
    t0 = START + STEP
    ts = [t0 + i * STEP for i in range(n)]
    cpu_rows = [
        [0.5, None, "NaN", "Infinity", -1.0, 2000.0, 0.1, True, "x", 0.3],
        [None] * n,
        [0.2] * n,
    ]
    mem_rows = [[1e8] * n, [1e8, 2e8]]  # the second row is ragged: all its values wrong-type
    doc = {
        "type": "chunk",
        "namespace": "shop",
        "kind": "Deployment",
        "workload": "api",
        "start": START,
        "end": t0 + 7 * STEP,  # the last two grid points are outside the chunk
        "t0": t0,
        "step": STEP,
        "n": n,
        "containers": {"app": {"cpu": cpu_rows, "memory": mem_rows, "gpu": [[1.0] * n]}},
    }
    raw = json.dumps(doc).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity").encode()
    pairs = {
        "cpu": [[t, v] for row in cpu_rows for t, v in zip(ts, row, strict=True) if v is not None],
        "memory": [[t, v] for t, v in zip(ts, mem_rows[0], strict=True)] + [["x", 1e8]] * 2,
        "gpu": [[t, 1.0] for t in ts],
    }
    batch = {
        **{k: doc[k] for k in ("namespace", "kind", "workload", "start", "end")},
        "container": "app",
        "samples": pairs,
    }
    text = json.dumps(batch).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    return raw, [text.encode()]


def test_bad_samples_get_the_same_per_sample_reasons_as_in_a_batch() -> None:
    raw, old = _hostile_grid()
    chunk = parse_metrics_record(raw)
    assert isinstance(chunk, MetricsChunk)
    checked = validate_chunk(chunk, now=NOW)
    batch = parse_metrics_record(old[0])
    assert isinstance(batch, MetricsBatch)
    assert checked.reasons == validate_batch(batch, now=NOW).reasons
    assert dict(checked.reasons)["nan"] == 1 and dict(checked.reasons)["inf"] == 1
    # and through the agent: the same dead letters, the same clean state
    a, b = runtime(now=NOW), runtime(now=NOW)
    _ingest(a, [raw])
    _ingest(b, old)
    assert sorted(d.reason for d in dead_letters(a)) == sorted(d.reason for d in dead_letters(b))
    assert _state(a, "app") == _state(b, "app")


def test_a_chunk_from_the_future_or_all_rejected_moves_no_mark() -> None:
    cpu, mem = _series(np.random.default_rng(5), pods=1)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    rt = runtime(now=NOW)
    _ingest(rt, [chunk.encode()])
    before = _state(rt, "app")
    # claims to end in ten years: refused whole, nothing it carries is stored
    future = chunk.model_copy(update={"end": NOW + 10 * 365 * 86400})
    # every value negative: nothing stored, the mark stays
    bad = chunk.model_copy(
        update={
            "start": START - 3600,
            "end": START,
            "t0": START - 3600 + STEP,
            "n": 60,
            "containers": {"app": {"cpu": [[-1.0] * 60], "memory": [[-5.0] * 60]}},
        }
    )
    _ingest(rt, [future.encode(), bad.encode()])
    assert _state(rt, "app") == before
    reasons = [d.reason for d in dead_letters(rt)]
    assert any(r.startswith("future-chunk") for r in reasons)
    assert "negative: 120 samples" in reasons


def test_a_chunk_on_the_wrong_key_is_parked_and_ingests_nothing() -> None:
    cpu, mem = _series(np.random.default_rng(6), pods=1)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    rt = runtime(now=NOW)
    _ingest(rt, [chunk.encode()], key=b"shop/Deployment/other")
    (letter,) = dead_letters(rt)
    assert letter.reason.startswith("key-mismatch")
    assert rt.tables.usage.get(f"{WID}/app") is None


@pytest.mark.parametrize(
    "change",
    [
        {"step": 0},
        {"n": MAX_SAMPLES + 1},
        {"end": START - 1},
        {"containers": {"Bad_Name": {}}},
        {"containers": {"app": {"cpu": "not rows"}}},
        {"type": "chunk", "t0": 1e300},
        # more values in one container-resource than a batch may hold per resource
        {"step": 1, "n": 1000, "containers": {"app": {"cpu": [[0.1] * 1000] * 201}}},
    ],
)
def test_a_malformed_envelope_is_invalid(change: dict[str, Any]) -> None:
    doc = {
        "type": "chunk",
        "namespace": "shop",
        "kind": "Deployment",
        "workload": "api",
        "start": START,
        "end": END,
        "t0": START + STEP,
        "step": STEP,
        "n": 1,
        "containers": {"app": {"cpu": [[0.1]]}},
        **change,
    }
    with pytest.raises(InvalidRecord):
        parse_metrics_record(json.dumps(doc).encode())


def test_a_record_over_the_size_limit_is_split_and_ingests_the_same_state() -> None:
    cpu, mem = _series(np.random.default_rng(7), pods=6)
    (chunk,) = build_chunks(cpu, mem, OWNERS, START, END, STEP)
    parts = split_chunk(chunk, max_bytes=8_000)
    assert len(parts) > 2 and all(len(p) <= 8_000 for p in parts)
    whole, split = runtime(now=NOW), runtime(now=NOW)
    _ingest(whole, [chunk.encode()])
    _ingest(split, parts)
    for container in ("app", "sidecar"):
        a = whole.tables.usage.get(f"{WID}/{container}")
        b = split.tables.usage.get(f"{WID}/{container}")
        assert a is not None and b is not None
        assert (a.high_water, a.ranges) == (b.high_water, b.ranges)  # parts merged: one chunk
        for r in ("cpu", "memory"):
            assert a.summary(r).count == b.summary(r).count
            assert a.summary(r).p99 == b.summary(r).p99
    # the whole chunk re-collected after its parts: every sample a duplicate
    before = _state(split, "app")
    _ingest(split, [chunk.encode()])
    assert _state(split, "app") == before


def test_batches_convert_to_chunks_with_every_sample() -> None:
    cpu, mem = _series(np.random.default_rng(8), pods=3, gaps=0.4)
    batches = build_batches(cpu, mem, OWNERS, START, END)
    (chunk,) = chunks_from_batches(batches)
    assert chunk.sample_count() == sum(len(v) for b in batches for v in b.samples.values())
    assert chunk.step == STEP


def test_off_grid_samples_are_refused_by_the_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        grid_rows([[(START + 90.0, 1.0)]], START + 60, 60, 3)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 400),
    st.floats(0.0, 0.6),
    st.integers(0, 2**32 - 1),
)
def test_quantiles_through_chunks_stay_within_one_percent(
    pods: int, n: int, gaps: float, seed: int
) -> None:
    """Property: whatever the pods, gaps and sizes, the sketch behind a chunk answers every
    quantile within 1% of the exact quantile of the samples it was given."""
    rng = np.random.default_rng(seed)
    grid = rng.lognormal(math.log(0.3), 1.0, (pods, n))
    grid[rng.random((pods, n)) < gaps] = np.nan
    t0 = END - n * STEP + STEP
    chunk = MetricsChunk(
        type="chunk",
        namespace="shop",
        kind="Deployment",
        workload="api",
        start=t0 - STEP,
        end=END,
        t0=t0,
        step=STEP,
        n=n,
        containers={"app": {"cpu": grid}},
    )
    rt = runtime(now=NOW)
    _ingest(rt, [chunk.encode()])
    values = grid[~np.isnan(grid)]
    usage = rt.tables.usage.get(f"{WID}/app")
    if values.size == 0:
        assert usage is None
        return
    assert usage is not None
    s = usage.summary("cpu")
    assert s.count == values.size and s.max == values.max()
    for q, got in ((0.5, s.p50), (0.9, s.p90), (0.95, s.p95), (0.99, s.p99)):
        exact = float(np.quantile(values, q, method="lower"))
        upper = float(np.quantile(values, q, method="higher"))
        assert exact * 0.99 <= got <= upper * 1.01


@given(
    day=st.integers(0, 40_000),
    chunk=st.sampled_from(CHUNK_CHOICES),
    index=st.integers(0, 95),
    step=st.sampled_from([15, 30, 60, 300]),
)
def test_a_refused_range_splits_in_two_halves_on_the_step_grid_within_its_day(
    day: int, chunk: int, index: int, step: int
) -> None:
    """What the collector asks instead of an answer over its budget: two halves that tile the
    range, each on the step grid, in the same UTC day, none shorter than 15 minutes."""
    start = day * 86_400 + (index % (86_400 // chunk)) * chunk
    end = start + chunk
    halves = split_range(start, end, step)
    if chunk < 2 * max(step, CHUNK_CHOICES[-1]):
        assert halves is None
        return
    assert halves is not None
    (a, mid), (mid2, b) = halves
    assert (a, b) == (start, end) and mid == mid2 and a < mid < b
    assert (mid - a) % step == 0 and mid - a >= CHUNK_CHOICES[-1] and b - mid >= CHUNK_CHOICES[-1]
    assert mid // 86_400 == start // 86_400 and (b - 1) // 86_400 == start // 86_400


def test_the_answer_cap_is_the_budget_at_more_bytes_a_point_than_prometheus_writes() -> None:
    # ~36-37 bytes a point measured (bench/bench_collector_memory.py): a planned answer fits
    assert answer_bytes_cap(3_000_000) == 3_000_000 * 48 > 3_000_000 * 37
    assert split_range(0, 899, 60) is None and split_range(0, 1_800, 60) == ((0, 900), (900, 1_800))
