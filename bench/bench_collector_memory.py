"""The collector's memory and CPU per chunk answer: samples as tuples vs as arrays (not a test).

    python bench/bench_collector_memory.py [--series 2000,20000] [--points 120,360,1440]
                                           [--tuple-limit 8000000]

For each ``series x points`` a synthetic range-query answer in Prometheus' own layout
(``{"metric": {...}, "values": [[t, "v"], ...]}``, timestamps on the query grid, values with
the digits cAdvisor rates have) is built in memory, then turned into the collector's records
the two ways the code can:

* **tuples** (the collector before 2026-12-02, still the backtest's ``collect_chunk``):
  ``orjson.loads`` of the body, :func:`parse_result` (a ``(t, v)`` tuple of floats per sample),
  :func:`build_chunks`;
* **arrays** (the collector now): :func:`parse_matrix_body` (numpy arrays per series, the
  grid's timestamps computed), :func:`build_chunks` on them.

``--specs 1000,3000``: the same for the workload specs of that many workloads (2 pods of 2
containers each, a Deployment keeping its last 10 ReplicaSets, the labels kube-state-metrics
and the kube-prometheus-stack scrape put on each series): **one selector** (the collector
before 2026-12-02: every spec metric's series with every label in one body, parsed at once)
against **metric by metric** (now: ``spec_queries``, each metric's answer with only the labels
a spec reads, the ReplicaSets that own a pod; one body parsed at a time and folded into the
specs by ``SpecBuilder`` as soon as what it needs is in: the collector's path), and the same
answers all parsed before the build (**all held**: the one-shot's path).  All give the same
specs (checked here; the real Prometheus equivalence is
``tests/integration/test_prometheus_adapter.py``).

Printed per path: the peak of Python's allocations while parsing and building (``tracemalloc``,
which numpy reports its buffers to; the body itself, the same for both, is printed apart), the
bytes per point of that peak, and the CPU time (best of ``--repeat``).  The collector asks one
such answer for cpu and one for memory per chunk, one after the other.  Figures are printed,
never asserted.  The tuples path is skipped above ``--tuple-limit`` points (it would need
several GiB).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.collect import (
    OWNER_METRICS,
    SPEC_LABELS,
    Owners,
    SpecBuilder,
    build_chunks,
    build_specs,
    build_specs_by_name,
    grid_of,
    parse_matrix_body,
    parse_result,
)
from engine.core.model import WorkloadSpec

STEP = 60
START = 1_764_547_200.0  # a UTC midnight


def answer(series: int, points: int, seed: int = 5) -> bytes:
    """A matrix answer of ``series`` pods' usage over ``points`` steps (the layout and number
    formatting of Prometheus' JSON)."""
    rng = np.random.default_rng(seed)
    t0, _ = grid_of(START, START + points * STEP, STEP)
    times = [f"{t0 + i * STEP:.0f}" for i in range(points)]
    out = [b'{"status":"success","data":{"resultType":"matrix","result":[']
    for k in range(series):
        values = rng.gamma(2.0, 0.05, points)
        pairs = ",".join(f'[{t},"{v:.17g}"]' for t, v in zip(times, values, strict=True))
        metric = f'{{"container":"app","namespace":"ns-{k % 50}","pod":"w-{k}-7d9f-x{k % 7}"}}'
        out.append(f'{"," if k else ""}{{"metric":{metric},"values":[{pairs}]}}'.encode())
    out.append(b"]}}")
    return b"".join(out)


def tuples_path(body: bytes, start: float, end: float) -> int:
    series = parse_result(orjson.loads(body), "matrix")
    return len(build_chunks(series, [], Owners(), start, end, STEP))


def arrays_path(body: bytes, start: float, end: float) -> int:
    grid = (grid_of(start, end, STEP)[0], STEP)
    series = parse_matrix_body(body, orjson.loads, grid)
    return len(build_chunks(series, [], Owners(), start, end, STEP))


def measure(fn: object, body: bytes, end: float, repeat: int) -> tuple[int, float, int]:
    """(peak bytes, best CPU seconds, records) of ``fn(body, START, end)``."""
    assert callable(fn)
    gc.collect()
    tracemalloc.start()
    records = fn(body, START, end)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.process_time()
        fn(body, START, end)
        best = min(best, time.process_time() - t)
    return peak, best, records


SPEC_AT = START
TARGET = {  # what the kube-prometheus-stack scrape adds to every kube-state-metrics series
    "container": "kube-state-metrics",
    "endpoint": "http",
    "instance": "10.42.0.17:8080",
    "job": "kube-state-metrics",
    "service": "infra-kube-state-metrics",
}


def spec_series(workloads: int, old_rs: int = 10) -> list[dict[str, object]]:
    """The instant answer's ``result`` items of every spec metric for ``workloads``
    Deployments in 50 namespaces."""
    out: list[dict[str, object]] = []

    def add(name: str, **labels: str) -> None:
        out.append({"metric": {"__name__": name, **TARGET, **labels}, "value": [SPEC_AT, "1"]})

    for w in range(workloads):
        ns, dep = f"team-{w % 50:03d}", f"svc-{w:05d}"
        add("kube_deployment_spec_replicas", namespace=ns, deployment=dep)
        add("kube_deployment_labels", namespace=ns, deployment=dep, label_app=dep, label_team=ns)
        add("kube_deployment_annotations", namespace=ns, deployment=dep,
            annotation_deployment_kubernetes_io_revision=str(old_rs + 1))  # fmt: skip
        for r in range(old_rs + 1):
            add("kube_replicaset_owner", namespace=ns, replicaset=f"{dep}-{w * 7919 + r:010x}",
                owner_kind="Deployment", owner_name=dep, owner_is_controller="true")  # fmt: skip
        rs = f"{dep}-{w * 7919 + old_rs:010x}"
        for p in range(2):
            pod, uid = f"{rs}-{p:05x}", f"{w:08x}-{p:04x}-4a1b-9c2d-{w * 31 + p:012x}"
            add("kube_pod_owner", namespace=ns, pod=pod, uid=uid, owner_kind="ReplicaSet",
                owner_name=rs, owner_is_controller="true")  # fmt: skip
            for c, cn in enumerate(("app", "sidecar")):
                base = {"namespace": ns, "pod": pod, "uid": uid, "container": cn}
                for resource, unit in (("cpu", "core"), ("memory", "byte")):
                    add("kube_pod_container_resource_requests", **base, node="k3s-node-1",
                        resource=resource, unit=unit)  # fmt: skip
                add("kube_pod_container_resource_limits", **base, node="k3s-node-1",
                    resource="memory", unit="byte")  # fmt: skip
                image = f"registry.example.com/{ns}/{cn}:1.2.{w % 50}"
                add("kube_pod_container_info", **base, image=image, image_spec=image,
                    image_id=f"registry.example.com/{ns}/{cn}@sha256:{w:064x}",
                    container_id=f"containerd://{w * 1000 + p * 10 + c:064x}")  # fmt: skip
                add("kube_pod_container_status_restarts_total", **base)
    return out


def vector(items: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": items}})


def per_metric_bodies(items: list[dict[str, object]]) -> list[tuple[str, bytes]]:
    """What Prometheus answers ``spec_queries``: per metric, only the labels asked for (no
    ``__name__``), the ReplicaSets that own a pod."""
    owning = {
        (m["namespace"], m["owner_name"])
        for it in items
        if (m := it["metric"])["__name__"] == "kube_pod_owner"  # type: ignore[index]
    }
    out = []
    for name, keep in SPEC_LABELS.items():
        mine = []
        for it in items:
            m = it["metric"]
            if m["__name__"] != name:  # type: ignore[index]
                continue
            if name == "kube_replicaset_owner" and (m["namespace"], m["replicaset"]) not in owning:  # type: ignore[index]
                continue
            labels = {k: v for k, v in m.items() if keep is None or k in keep}  # type: ignore[attr-defined]
            mine.append({"metric": labels, "value": it["value"]})
        out.append((name, vector(mine)))
    return out


def specs_one_selector(body: bytes) -> list[WorkloadSpec]:
    return build_specs(parse_result(orjson.loads(body), "vector"), SPEC_AT)


def specs_by_metric(bodies: list[tuple[str, bytes]]) -> list[WorkloadSpec]:
    """The collector's path: each answer parsed and folded in (``SpecBuilder``) before the
    next is read."""
    builder = SpecBuilder(SPEC_AT)
    for name, body in bodies:
        builder.add(name, parse_result(orjson.loads(body), "vector"))
    return builder.finish()


def specs_by_metric_held(bodies: list[tuple[str, bytes]]) -> list[WorkloadSpec]:
    """Every answer parsed first, then built (the one-shot's path, its queries in flight
    together)."""
    by_name = {name: parse_result(orjson.loads(body), "vector") for name, body in bodies}
    return build_specs_by_name(by_name, SPEC_AT)


def measure_specs(workloads: int, repeat: int) -> None:
    items = spec_series(workloads)
    body = vector(items)
    bodies = per_metric_bodies(items)
    # the owner answers with every label, for the owners' line below (built once, here)
    full = [vector([it for it in items if it["metric"]["__name__"] == m])  # type: ignore[index]
            for m in OWNER_METRICS]  # fmt: skip
    del items
    line = (
        f"{workloads:6,} workloads: one selector {len(body) / 2**20:6.1f} MiB body, "
        f"metric by metric {sum(len(b) for _, b in bodies) / 2**20:6.1f} MiB in all "
        f"(largest {max(len(b) for _, b in bodies) / 2**20:.1f})"
    )
    got = {}
    for name, fn, arg in (
        ("one selector", specs_one_selector, body),
        ("metric by metric, all held", specs_by_metric_held, bodies),
        ("metric by metric", specs_by_metric, bodies),
    ):
        gc.collect()
        tracemalloc.start()
        specs = fn(arg)  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        got[name] = [s.model_dump() for s in specs]
        best = float("inf")
        for _ in range(repeat):
            del specs
            gc.collect()
            t = time.process_time()
            specs = fn(arg)  # type: ignore[operator]
            best = min(best, time.process_time() - t)
        line += f" | {name}: peak {peak / 2**20:7.1f} MiB, {best:5.2f} CPU-s, {len(specs):,} specs"
    assert got["one selector"] == got["metric by metric"], "the paths disagree"
    assert got["one selector"] == got["metric by metric, all held"], "the paths disagree"
    print(line + " | same specs", flush=True)
    # the owners a usage chunk needs (asked per chunk): the three answers with every label,
    # all parsed before Owners.build (as before) against owner_expr's lean answers
    lean = [b for name, b in bodies if name in OWNER_METRICS]
    line = f"{workloads:6,} workloads, owners of a chunk:"
    owners = {}
    for name, blobs in (("every label", full), ("lean", lean)):
        gc.collect()
        tracemalloc.start()
        parsed = [parse_result(orjson.loads(b), "vector") for b in blobs]
        owners[name] = Owners.build(*parsed)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del parsed
        size = sum(map(len, blobs)) / 2**20
        line += f" | {name}: {size:5.1f} MiB of bodies, peak {peak / 2**20:7.1f} MiB"
    a, b = owners["every label"], owners["lean"]
    assert {p: a.resolve(*p) for p in a.pods} == {p: b.resolve(*p) for p in a.pods}
    print(line + " | same resolution", flush=True)


def measure_stall(series: int, points: int, repeat: int) -> None:
    """The event loop's longest stall while the real client reads one range answer of
    ``series`` x ``points`` from a local HTTP server: its parse on the loop (the bound set above
    the answer) against in a worker thread (the shipped bound), alternating, same run."""
    import asyncio

    from aiohttp import web

    import engine.adapters.prometheus as adapter
    from engine.settings import load_settings
    from tests.harness.local_http import serving

    body = answer(series, points)
    end = START + points * STEP

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def run(bound: int) -> tuple[float, float]:
        adapter.PARSE_IN_THREAD_BYTES = bound
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:  # what a heartbeat or a probe would wait for
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async with serving({"/api/v1/query_range": handle}) as url:
            tick = asyncio.create_task(ticker())
            settings = load_settings(prometheus_url=url, kafka_username=None)
            try:
                async with adapter.PrometheusClient(settings) as client:
                    t0 = time.perf_counter()
                    found = await client.query_range_arrays("up", START, end, STEP)
                    wall = time.perf_counter() - t0
                assert len(found) == series
            finally:
                done.set()
                await tick
        return max(gaps), wall

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; "
        f"one range answer of {series:,} series x {points:,} points, "
        f"{len(body) / 2**20:.1f} MiB, read by the real client from a local server"
    )
    shipped = adapter.PARSE_IN_THREAD_BYTES
    for _ in range(repeat):
        for label, bound in (("parsed on the loop", len(body) + 1), ("in a thread", shipped)):
            stall, wall = asyncio.run(run(bound))
            print(
                f"  {label:18}: longest event-loop stall {stall * 1000:7.1f} ms, "
                f"answer in {wall:.2f} s"
            )
    adapter.PARSE_IN_THREAD_BYTES = shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="2000,20000")
    ap.add_argument("--points", default="120,360,1440")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tuple-limit", type=int, default=8_000_000)
    ap.add_argument("--specs", default="", help="e.g. 1000,3000: the workload specs instead")
    ap.add_argument(
        "--stall",
        action="store_true",
        help="the event loop's longest stall while the client reads one answer of the first "
        "--series x the last --points: parsed on the loop vs in a thread",
    )
    args = ap.parse_args()
    if args.stall:
        points = [int(p) for p in args.points.split(",")]
        measure_stall(int(args.series.split(",")[0]), points[-1], args.repeat)
        return
    if args.specs:
        for n in (int(x) for x in args.specs.split(",")):
            measure_specs(n, args.repeat)
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}; one answer (one resource) per line"
    )
    for series in (int(s) for s in args.series.split(",")):
        for points in (int(p) for p in args.points.split(",")):
            body = answer(series, points)
            end = START + points * STEP
            total = series * points
            line = (
                f"{series:6,} series x {points:5,} points = {total / 1e6:6.2f} M points, "
                f"body {len(body) / 2**20:7.1f} MiB ({len(body) / total:4.1f} B/pt)"
            )
            results = {}
            for name, fn in (("tuples", tuples_path), ("arrays", arrays_path)):
                if name == "tuples" and total > args.tuple_limit:
                    continue
                peak, cpu, records = measure(fn, body, end, args.repeat)
                results[name] = (peak, cpu)
                line += (
                    f" | {name}: peak {peak / 2**20:7.1f} MiB ({peak / total:5.1f} B/pt), "
                    f"{cpu:6.2f} CPU-s ({cpu / total * 1e9:5.0f} ns/pt), {records:,} records"
                )
            if len(results) == 2:
                (tp, tc), (ap_, ac) = results["tuples"], results["arrays"]
                line += f" | arrays/tuples: memory {ap_ / tp:.2f}, CPU {ac / tc:.2f}"
            print(line, flush=True)
            del body
            gc.collect()


if __name__ == "__main__":
    main()
