"""Benchmark of the aggregation pipeline through real Kafka and a real worker (not a test).

    python bench/bench_pipeline.py [--containers 1000 --chunks 6] [--backfill-containers 100,300]
                                   [--backfill-days 14] [--skip-backfill] [--skip-throughput]

Starts a private Apache Kafka (KRaft, SASL_PLAINTEXT + SCRAM-SHA-256, like production) and
SecantusDB on loopback, then, with its own topic prefix / app id per part:

1. **Throughput.**  Pre-produces ``containers x chunks`` MetricsBatch messages (one per container
   per chunk, keyed by workload id, 500 one-minute samples per resource = 1000 samples each) with
   aiokafka as fast as it can, then starts ONE ``kubefinops worker`` process and times how long
   it takes until ``kubefinops_samples_ingested_total`` on its /metrics reaches the total.
   Baselines measured in the same run, on the same messages: a plain aiokafka consumer reading
   the same topic (the broker/consume ceiling) and the pure in-process ingest path
   (pydantic parse + validate_batch + ContainerUsage.ingest + to_dict + json, no Kafka).
   After the run: bytes per container-resource, from the ``<prefix>-usage-changelog`` values.
2. **Backfill.**  Time and peak RSS (VmHWM of the worker process) to ingest ``days`` of 1-minute
   samples for each of ``backfill-containers`` container counts (a fresh worker each) in the
   chunks the collector asks for that fleet (a day up to ~2,000 series), and an extrapolation
   to 14 days x 2,000 containers: time linear in samples, peak RSS fitted as fixed +
   per-container (printed as such).

Figures are printed, never asserted.  Producing happens before the worker starts, so the worker's
rate is not shared with the producer's CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Stack,
    build_messages,
    consume_count,
    end_offsets,
    ingested,
    proc_cpu_seconds,
    proc_status,
    produce_fast,
    samples_per_message,
    state_bytes,
    wait_ingested,
)
from engine.core.collect import chunk_for
from engine.core.model import MetricsBatch, MetricsChunk, parse_metrics_record
from engine.core.samples import validate_batch, validate_chunk
from engine.core.usage import ContainerUsage
from engine.settings import Settings
from tables.state import DEFAULT_USAGE_CACHE_BYTES, UsageTable
from tests.harness.kafka import create_topics
from tests.harness.proc import Server, free_port
from tests.integration.workers import Deployment

PARTITIONS = 4
FULL_CONTAINERS, FULL_DAYS = 2000, 14


def backfill_chunk(series: int) -> int:
    """The chunk the collector asks for a fleet of ``series`` with the default settings
    (engine/core/collect.py ``chunk_for``: a day up to ~2,000 series)."""
    fields = Settings.model_fields
    return chunk_for(
        series,
        longest=int(fields["prometheus_chunk_seconds"].default),
        budget=int(fields["prometheus_max_points_per_query"].default),
        step=int(fields["prometheus_step_seconds"].default),
    )


def pure_ingest(
    containers: int, chunks: int, chunk_seconds: int, fmt: str = "chunk"
) -> tuple[float, float]:
    """samples/s of the aggregator's per-record work, in-process, on the same kind of records.

    Returns (core path, agent path), each the best of two runs.  Core: ``parse_metrics_record``
    (the agent's one parse of a record) + ``validate_chunk`` (``validate_batch`` for the old
    format) + ``ContainerUsage`` ingest + ``to_dict`` + ``orjson.dumps`` (the changelog value).
    Agent path: the same through the typed ``usage`` table (``tables.state.UsageTable``: its
    bounded decoded-value cache) + ``orjson.dumps`` of the stored value, as the agent and Faust's
    JSON serializer do it; the gap
    between the worker and this line is Faust and Kafka.
    """
    msgs = [
        m
        for part in build_messages(containers, chunks, chunk_seconds, seed=11, fmt=fmt)
        for m in part
    ]
    total = containers * chunks * samples_per_message(chunk_seconds)
    now = time.time()

    def once(agent_path: bool) -> float:
        states: dict[str, ContainerUsage] = {}
        table = UsageTable({}, DEFAULT_USAGE_CACHE_BYTES)

        def store(cid: str, ingest: Any) -> None:
            if agent_path:
                usage = table.get(cid) or ContainerUsage()
            else:
                usage = states.setdefault(cid, ContainerUsage())
            ingest(usage)
            if agent_path:
                table[cid] = usage
                orjson.dumps(table.store[cid])  # Faust's JSON serializer (orjson when installed)
            else:
                orjson.dumps(usage.to_dict())

        started = time.perf_counter()
        for _, raw in msgs:
            record = parse_metrics_record(raw)
            if isinstance(record, MetricsChunk):
                checked = validate_chunk(record, now=now)
                for cont, arrays in checked.arrays.items():
                    store(
                        record.container_id(cont),
                        lambda u, a=arrays, r=record: u.ingest_arrays(
                            r.start, r.end, a, validated=True
                        ),
                    )
            else:
                assert isinstance(record, MetricsBatch)
                v = validate_batch(record, now=now)
                store(v.batch.container_id, lambda u, v=v: u.ingest(v.batch, arrays=v.arrays))
        return total / (time.perf_counter() - started)

    # best of two runs each: the first run of a process pays one-time costs
    # (allocations, caches) that made the core path look slower than the agent path
    core = max(once(False), once(False))
    agent = max(once(True), once(True))
    return core, agent


def precreate(stack: Stack, dep: Deployment) -> str:
    assert stack.kafka is not None
    topic = dep.topic("metrics")
    create_topics(
        stack.kafka,
        [topic],
        partitions=dep.partitions,
        config={"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)},
    )
    return topic


def start_profiled(dep: Deployment, out: Path) -> tuple[Server, int]:
    """``Deployment.start_worker`` under cProfile (the stats are dumped when it exits)."""
    port = free_port()
    server = Server(
        name="w1",
        argv=[sys.executable, "-m", "cProfile", "-o", str(out), "-m", "engine.cli", "worker"],
        log=dep.workdir / "w1.log",
        env=dep.env(port, "w1"),
    ).start()
    dep.workers.append((server, port))
    return server, port


def print_profile(path: Path, top: int = 30) -> None:
    if not path.exists():
        print(f"  (no profile written at {path})")
        return
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(buf.getvalue())


def run_worker(
    dep: Deployment, expect: int, timeout: float, profile: Path | None = None
) -> dict[str, float]:
    t_start = time.monotonic()
    server, port = start_profiled(dep, profile) if profile else dep.start_worker("w1")
    dep.wait_ready(port, server=server, timeout=120)
    t_ready = time.monotonic()
    rss_ready = proc_status(server.pid).get("VmRSS", 0)
    prog, peak = wait_ingested(port, expect, timeout, pid=server.pid)
    status = proc_status(server.pid)
    out = {
        "start_to_ready": t_ready - t_start,
        "ingested": prog.last,
        "rss_ready": rss_ready,
        "rss_end": status.get("VmRSS", 0),
        "hwm": max(peak, status.get("VmHWM", 0)),
        "port": port,
    }
    if prog.first_at is not None and prog.done_at is not None:
        out["steady_seconds"] = prog.done_at - prog.first_at
        out["ready_to_done"] = prog.done_at - t_ready
        out["start_to_done"] = prog.done_at - t_start
    if prog.done_at is None:
        log = Path(server.log).read_text(errors="replace")[-1500:]
        print(
            f"!! worker did not ingest everything in {timeout:.0f}s "
            f"({prog.last:,.0f}/{expect:,}); log tail:\n{log}"
        )
    return out


TARGET = 1_000_000  # samples/s per worker (issue 11)


def part_throughput(
    stack: Stack,
    containers: int,
    chunks: int,
    timeout: float,
    profile: bool = False,
    env: dict[str, str] | None = None,
    fmt: str = "chunk",
    chunk_minutes: int = 500,
) -> None:
    assert stack.kafka is not None
    chunk_seconds = chunk_minutes * 60  # one-minute samples per resource and container
    total = containers * chunks * samples_per_message(chunk_seconds)
    n_msgs = (containers // 2 if fmt == "chunk" else containers) * chunks
    per_msg = total // n_msgs
    print(
        f"\n== 1. throughput ({fmt} records): {n_msgs:,} messages x {per_msg} samples = "
        f"{total:,} samples, {containers} containers (2 per workload) x {chunks} chunks of "
        f"{chunk_minutes} one-minute points, {PARTITIONS} partitions"
    )

    pure, agent_path = pure_ingest(min(containers, 100), min(chunks, 3), chunk_seconds, fmt)
    print(f"pure core (parse+validate+ingest+to_dict+json, no Kafka) {pure:12,.0f} samples/s")
    print(
        f"pure agent path (+ the agent's typed table, no Kafka)      {agent_path:12,.0f} samples/s"
    )

    dep = stack.deployment(partitions=PARTITIONS, **(env or {}))
    topic = precreate(stack, dep)
    sent, took = asyncio.run(
        produce_fast(stack.kafka, topic, build_messages(containers, chunks, chunk_seconds, fmt=fmt))
    )
    assert sent == n_msgs, (sent, n_msgs)
    print(
        f"producer (build JSON + aiokafka send, acks=all)  {sent / took:12,.0f} msg/s "
        f"({sent * per_msg / took:,.0f} samples/s, {took:.1f}s)"
    )

    n, secs, _ = asyncio.run(consume_count(stack.kafka, topic, n_msgs))
    print(
        f"baseline: plain aiokafka consumer, same topic    {n / secs:12,.0f} msg/s "
        f"({n * per_msg / secs:,.0f} samples/s, {n:,} records in {secs:.2f}s)"
    )

    prof = dep.workdir / "worker.prof" if profile else None
    r = run_worker(dep, total, timeout, prof)
    if "steady_seconds" in r:
        rate = total / r["steady_seconds"]
        steady = r["steady_seconds"]
        print(
            f"worker (1 process): first->last sample ingested  {n_msgs / steady:12,.0f}"
            f" msg/s = {rate:,.0f} samples/s  (target {TARGET:,}; {r['steady_seconds']:.1f}s)"
        )
        print(
            f"  worker ready->all ingested {r['ready_to_done']:.1f}s "
            f"({total / r['ready_to_done']:,.0f} samples/s); process start->ready "
            f"{r['start_to_ready']:.1f}s"
        )
        print(
            f"  ratios: worker/plain-consumer {rate / (n * per_msg / secs):.3f}, "
            f"worker/pure-core {rate / pure:.2f}, "
            f"worker/pure-agent-path {rate / agent_path:.2f}, "
            f"worker/target {rate / TARGET:.2f}"
        )
    changelog = f"{dep.prefix}-usage-changelog"
    expect = end_offsets(stack.kafka, changelog)
    _, _, latest = asyncio.run(consume_count(stack.kafka, changelog, expect, timeout=60))
    sizes = state_bytes(latest)
    print(
        f"  changelog {changelog}: {expect:,} records for {sizes['keys']} containers "
        f"({expect / max(n_msgs, 1):.2f} per input message)"
    )
    batches, records = log_batches(stack, changelog)
    print(
        f"  changelog as stored: {records:,} records in {batches:,} record batches "
        f"({records / max(batches, 1):.2f} records per batch; at least one produce request each)"
    )
    print_sizes(sizes, f"{chunks * chunk_seconds / 86_400:.1f} days")
    dep.stop_all()
    if prof is not None:
        print("  cProfile of the worker process (whole life: start-up, ingest, shutdown):")
        print_profile(prof)


def part_cpu(
    stack: Stack,
    containers: int,
    chunks: int,
    workers: int,
    timeout: float,
    fmt: str = "chunk",
    env: dict[str, str] | None = None,
    chunk_minutes: int = 500,
) -> None:
    """CPU-seconds per million samples ingested, summed over ``workers`` worker processes
    (from all ready to all ingested), on a fresh deployment with the same kind of messages."""
    assert stack.kafka is not None
    chunk_seconds = chunk_minutes * 60
    total = containers * chunks * samples_per_message(chunk_seconds)
    dep = stack.deployment(partitions=PARTITIONS, **(env or {}))
    topic = precreate(stack, dep)
    asyncio.run(
        produce_fast(stack.kafka, topic, build_messages(containers, chunks, chunk_seconds, fmt=fmt))
    )
    procs = [dep.start_worker(f"c{i}") for i in range(workers)]
    for server, port in procs:
        dep.wait_ready(port, server=server, timeout=120)
    # a worker ready before the others ingests meanwhile: count only what is ingested after
    # the CPU reading (the CPU and the samples of the same interval)
    cpu0 = sum(proc_cpu_seconds(server.pid) for server, _ in procs)
    before = sum(ingested(port) for _, port in procs)
    started = time.monotonic()
    done = before
    while time.monotonic() - started < timeout:
        done = sum(ingested(port) for _, port in procs)
        if done >= total:
            break
        time.sleep(0.2)
    wall = time.monotonic() - started
    cpu = sum(proc_cpu_seconds(server.pid) for server, _ in procs) - cpu0
    measured = done - before
    print(
        f"  {workers} worker(s): {done:,.0f}/{total:,} samples, {measured:,.0f} of them in "
        f"{wall:.1f}s after all were ready ({measured / wall:,.0f} samples/s together), "
        f"{cpu:.1f} CPU-s = {cpu / max(measured / 1e6, 1e-9):.2f} CPU-s per million samples"
    )
    if done < total:  # a stall: say which worker stopped, and keep its log for a post-mortem
        for server, port in procs:
            print(f"  !! {server.name}: {ingested(port):,.0f} samples ingested; log {server.log}")
        keep = Path(tempfile.mkdtemp(prefix="kfo-stall-"))
        for server, _ in procs:
            shutil.copy(server.log, keep)
        print(f"  !! worker logs kept in {keep}")
    dep.stop_all()


def log_batches(stack: Stack, topic: str) -> tuple[int, int]:
    """(record batches, records) of ``topic`` as the broker stored them, read from its log
    segments (record batch v2: base offset, length, ..., record count at byte 57).  One produce
    request carries at least one batch per partition, so batches / records tells how well the
    producer batched (e.g. the changelog: one request per table write, or several writes each)."""
    batches = records = 0
    for seg in stack.workdir.glob(f"kafka*/data/{topic}-*/*.log"):
        data = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, pos + 8)
            (count,) = struct.unpack_from(">i", data, pos + 57)
            batches, records = batches + 1, records + count
            pos += 12 + length
    return batches, records


def print_sizes(sizes: dict[str, Any], span: str) -> None:
    for r in ("cpu", "memory"):
        arr = sizes[r]
        if arr.size:
            print(
                f"  state bytes per container-resource ({r}, {span} of history): median "
                f"{np.median(arr):.0f}, max {arr.max()} (budget 4096)"
            )
    if sizes["value_bytes"].size:
        vb = sizes["value_bytes"]
        print(
            f"  whole changelog value per container: median {np.median(vb):.0f} B "
            f"(/2 resources = {np.median(vb) / 2:.0f} B)"
        )


def backfill_once(
    stack: Stack, containers: int, days: int, timeout: float, env: dict[str, str] | None
) -> dict[str, float] | None:
    assert stack.kafka is not None
    chunk = backfill_chunk(containers)
    chunks = days * 86_400 // chunk
    total = containers * chunks * samples_per_message(chunk)
    n_msgs = containers // 2 * chunks  # one columnar record per workload (2 containers) and chunk
    print(
        f"-- {containers} containers x {days} days of 1-minute samples in the collector's "
        f"{chunk / 3600:g}h chunks = "
        f"{n_msgs:,} messages, {total:,} samples ({total // 2:,} per resource)"
    )
    dep = stack.deployment(partitions=PARTITIONS, **(env or {}))
    topic = precreate(stack, dep)
    sent, took = asyncio.run(
        produce_fast(stack.kafka, topic, build_messages(containers, chunks, chunk, fmt="chunk"))
    )
    print(f"  pre-produced in {took:.1f}s ({sent / took:,.0f} msg/s)")
    r = run_worker(dep, total, timeout)
    if "ready_to_done" not in r:
        dep.stop_all()
        return None
    mib = 2**20
    secs = r["ready_to_done"]
    print(
        f"  MEASURED: ready->all ingested {secs:.1f}s = {total / secs:,.0f} samples/s "
        f"(first->last {r['steady_seconds']:.1f}s); "
        f"process start->ready {r['start_to_ready']:.1f}s"
    )
    print(
        f"  MEASURED: worker RSS at ready {r['rss_ready'] / mib:.0f} MiB, at end "
        f"{r['rss_end'] / mib:.0f} MiB, peak (VmHWM) {r['hwm'] / mib:.0f} MiB"
    )
    changelog = f"{dep.prefix}-usage-changelog"
    expect = end_offsets(stack.kafka, changelog)
    _, _, latest = asyncio.run(consume_count(stack.kafka, changelog, expect, timeout=120))
    print_sizes(state_bytes(latest), f"{days} days")
    dep.stop_all()
    return {**r, "containers": containers, "days": days, "samples": total}


def part_backfill(
    stack: Stack,
    sizes: list[int],
    days: int,
    timeout: float,
    env: dict[str, str] | None = None,
) -> None:
    """Backfill at one or more container counts; extrapolate to 2,000 x 14 days.

    Time is extrapolated linearly in samples from the largest run.  Peak RSS is fitted as
    ``a + b * containers`` through the two largest runs (state is bounded per container, so
    memory grows with containers, not days; the fixed part includes Faust's fetch buffers);
    with a single run the whole growth over the RSS at ready is scaled instead (an upper bound).
    """
    print(f"\n== 2. backfill at {sizes} containers x {days} days")
    runs = [r for c in sizes if (r := backfill_once(stack, c, days, timeout, env)) is not None]
    if not runs:
        return
    full = FULL_CONTAINERS * FULL_DAYS * 1440 * 2
    big = max(runs, key=lambda r: r["samples"])
    mib = 2**20
    if big["containers"] == FULL_CONTAINERS and big["days"] == FULL_DAYS:
        print("  (full size measured: nothing extrapolated)")
        return
    print(f"  EXTRAPOLATED to {FULL_CONTAINERS} containers x {FULL_DAYS} days = {full:,} samples:")
    rate = big["samples"] / big["ready_to_done"]
    print(
        f"    time ~{full / rate / 60:.1f} min (linear in samples from the "
        f"{big['containers']}-container run, {rate:,.0f} samples/s)"
    )
    if len(runs) >= 2:
        a, b = sorted(runs, key=lambda r: r["containers"])[-2:]
        slope = (b["hwm"] - a["hwm"]) / (b["containers"] - a["containers"])
        fixed = b["hwm"] - slope * b["containers"]
        print(
            f"    peak RSS ~{(fixed + slope * FULL_CONTAINERS) / mib:,.0f} MiB (fit through "
            f"{a['containers']} and {b['containers']} containers: {fixed / mib:.0f} MiB fixed + "
            f"{slope / 1024:.1f} KiB per container)"
        )
    else:
        growth = max(big["hwm"] - big["rss_ready"], 0)
        cscale = FULL_CONTAINERS / big["containers"]
        print(
            f"    peak RSS <~{(big['rss_ready'] + growth * cscale) / mib:,.0f} MiB (RSS at ready "
            f"+ growth x{cscale:g}; an upper bound: the growth includes fixed fetch buffers)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument(
        "--chunk-minutes",
        type=int,
        default=500,
        help="one-minute points per resource, container and record in parts 1 and the CPU "
        "part: 500 (default, the figures since 2026-11-27), 1440 = the collector's backfill "
        "record up to ~2,000 series (a day: engine/core/collect.py chunk_for), 720 = 12 h "
        "(~2,100-4,200 series), 360 = 6 h (~4,200-8,300), 60 = an hourly cycle",
    )
    ap.add_argument(
        "--backfill-containers",
        default="100,300",
        help="comma-separated container counts, one worker run each (two give a memory fit)",
    )
    ap.add_argument("--backfill-days", type=int, default=14)
    ap.add_argument("--timeout", type=float, default=300.0, help="per worker wait, seconds")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--format",
        choices=("chunk", "batch"),
        default="chunk",
        help="chunk: one columnar record per workload (what the collector sends); batch: one "
        "record per container (the format before issue 11)",
    )
    ap.add_argument(
        "--cpu-workers", default="", help="e.g. 1,2: CPU-s per million samples for 1 and 2 workers"
    )
    ap.add_argument("--skip-backfill", action="store_true")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the workers (e.g. Faust's "
        "CONSUMER_MAX_FETCH_SIZE=16777216); repeatable",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run the throughput worker under cProfile and print where time goes "
        "(slows it down; its rate is then not the benchmark figure)",
    )
    args = ap.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}"
    )
    stack = Stack()
    try:
        stack.start()  # inside the try: a later server failing to start stops the earlier ones
        env = dict(item.split("=", 1) for item in args.worker_env)
        if env:
            print(f"# extra worker environment: {env}")
        if not args.skip_throughput:
            part_throughput(
                stack,
                args.containers,
                args.chunks,
                args.timeout,
                args.profile,
                env,
                args.format,
                args.chunk_minutes,
            )
        if args.cpu_workers:
            print("\n== CPU-seconds per million samples (all workers ready -> all ingested)")
            for n in (int(w) for w in args.cpu_workers.split(",")):
                part_cpu(
                    stack,
                    args.containers,
                    args.chunks,
                    n,
                    args.timeout,
                    args.format,
                    env,
                    args.chunk_minutes,
                )
        if not args.skip_backfill:
            sizes = [int(c) for c in args.backfill_containers.split(",")]
            part_backfill(stack, sizes, args.backfill_days, args.timeout, env)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
