"""Benchmark of the aggregation pipeline through real Kafka and a real worker (not a test).

    python bench/bench_pipeline.py [--containers 1000 --chunks 6] [--backfill-containers 200]
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
   samples for ``backfill-containers`` containers in the collector's 6-hour chunks, and a
   linear extrapolation to 14 days x 2,000 containers (printed as such).

Figures are printed, never asserted.  Producing happens before the worker starts, so the worker's
rate is not shared with the producer's CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Stack,
    build_messages,
    consume_count,
    end_offsets,
    proc_status,
    produce_fast,
    samples_per_message,
    state_bytes,
    wait_ingested,
)
from engine.core.model import MetricsBatch  # noqa: E402
from engine.core.samples import validate_batch  # noqa: E402
from engine.core.usage import ContainerUsage  # noqa: E402
from tests.harness.kafka import create_topics  # noqa: E402
from tests.integration.workers import Deployment  # noqa: E402

PARTITIONS = 4
BACKFILL_CHUNK = 6 * 3600  # settings.prometheus_chunk_seconds default
FULL_CONTAINERS, FULL_DAYS = 2000, 14


def pure_ingest(containers: int, chunks: int, chunk_seconds: int) -> float:
    """samples/s of what the agent does per message, in-process, on the same kind of messages."""
    msgs = [m for part in build_messages(containers, chunks, chunk_seconds, seed=11) for m in part]
    total = len(msgs) * samples_per_message(chunk_seconds)
    states: dict[str, ContainerUsage] = {}
    now = time.time()
    started = time.perf_counter()
    for _, raw in msgs:
        batch = MetricsBatch.model_validate_json(raw)
        checked = validate_batch(batch, now=now)
        cid = checked.batch.container_id
        usage = states.setdefault(cid, ContainerUsage())
        usage.ingest(checked.batch, arrays=checked.arrays)
        json.dumps(usage.to_dict())
    return total / (time.perf_counter() - started)


def precreate(stack: Stack, dep: Deployment) -> str:
    assert stack.kafka is not None
    topic = dep.topic("metrics")
    create_topics(stack.kafka, [topic], partitions=dep.partitions,
                  config={"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)})
    return topic


def run_worker(dep: Deployment, expect: int, timeout: float) -> dict[str, float]:
    t_start = time.monotonic()
    server, port = dep.start_worker("w1")
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
        print(f"!! worker did not ingest everything in {timeout:.0f}s "
              f"({prog.last:,.0f}/{expect:,}); log tail:\n{log}")
    return out


def part_throughput(stack: Stack, containers: int, chunks: int, timeout: float) -> None:
    assert stack.kafka is not None
    chunk_seconds = 500 * 60  # 500 one-minute samples per resource: 1000 per message
    n_msgs = containers * chunks
    per_msg = samples_per_message(chunk_seconds)
    total = n_msgs * per_msg
    print(f"\n== 1. throughput: {n_msgs:,} messages x {per_msg} samples = {total:,} samples, "
          f"{containers} containers x {chunks} chunks, {PARTITIONS} partitions")

    pure = pure_ingest(min(containers, 100), min(chunks, 3), chunk_seconds)
    print(f"pure ingest (parse+validate+ingest+to_dict+json, no Kafka) {pure:12,.0f} samples/s")

    dep = stack.deployment(partitions=PARTITIONS)
    topic = precreate(stack, dep)
    sent, took = asyncio.run(produce_fast(stack.kafka, topic,
                                          build_messages(containers, chunks, chunk_seconds)))
    print(f"producer (build JSON + aiokafka send, acks=all)  {sent / took:12,.0f} msg/s "
          f"({sent * per_msg / took:,.0f} samples/s, {took:.1f}s)")

    n, secs, _ = asyncio.run(consume_count(stack.kafka, topic, n_msgs))
    print(f"baseline: plain aiokafka consumer, same topic    {n / secs:12,.0f} msg/s "
          f"({n * per_msg / secs:,.0f} samples/s, {n:,} records in {secs:.2f}s)")

    r = run_worker(dep, total, timeout)
    if "steady_seconds" in r:
        rate = total / r["steady_seconds"]
        print(f"worker (1 process): first->last sample ingested  {n_msgs / r['steady_seconds']:12,.0f}"
              f" msg/s = {rate:,.0f} samples/s  (target 500,000; {r['steady_seconds']:.1f}s)")
        print(f"  worker ready->all ingested {r['ready_to_done']:.1f}s "
              f"({total / r['ready_to_done']:,.0f} samples/s); process start->ready "
              f"{r['start_to_ready']:.1f}s")
        print(f"  ratios: worker/plain-consumer {rate / (n * per_msg / secs):.3f}, "
              f"worker/pure-ingest {rate / pure:.2f}, worker/target {rate / 500_000:.2f}")
    changelog = f"{dep.prefix}-usage-changelog"
    expect = end_offsets(stack.kafka, changelog)
    _, _, latest = asyncio.run(consume_count(stack.kafka, changelog, expect, timeout=60))
    sizes = state_bytes(latest)
    print(f"  changelog {changelog}: {expect:,} records for {sizes['keys']} containers "
          f"({expect / max(n_msgs, 1):.2f} per input message)")
    print_sizes(sizes, f"{chunks * chunk_seconds / 86_400:.1f} days")
    dep.stop_all()


def print_sizes(sizes: dict, span: str) -> None:
    for r in ("cpu", "memory"):
        arr = sizes[r]
        if arr.size:
            print(f"  state bytes per container-resource ({r}, {span} of history): median "
                  f"{np.median(arr):.0f}, max {arr.max()} (budget 4096)")
    if sizes["value_bytes"].size:
        vb = sizes["value_bytes"]
        print(f"  whole changelog value per container: median {np.median(vb):.0f} B "
              f"(/2 resources = {np.median(vb) / 2:.0f} B)")


def part_backfill(stack: Stack, containers: int, days: int, timeout: float) -> None:
    assert stack.kafka is not None
    chunks = days * 86_400 // BACKFILL_CHUNK
    per_msg = samples_per_message(BACKFILL_CHUNK)
    n_msgs = containers * chunks
    total = n_msgs * per_msg
    print(f"\n== 2. backfill: {containers} containers x {days} days of 1-minute samples in 6h "
          f"chunks = {n_msgs:,} messages, {total:,} samples ({total // 2:,} per resource)")
    dep = stack.deployment(partitions=PARTITIONS)
    topic = precreate(stack, dep)
    sent, took = asyncio.run(produce_fast(stack.kafka, topic,
                                          build_messages(containers, chunks, BACKFILL_CHUNK)))
    print(f"  pre-produced in {took:.1f}s ({sent / took:,.0f} msg/s)")
    r = run_worker(dep, total, timeout)
    if "ready_to_done" not in r:
        dep.stop_all()
        return
    mib = 2**20
    secs = r["ready_to_done"]
    print(f"  MEASURED: ready->all ingested {secs:.1f}s = {total / secs:,.0f} samples/s "
          f"(first->last {r['steady_seconds']:.1f}s); process start->ready {r['start_to_ready']:.1f}s")
    print(f"  MEASURED: worker RSS at ready {r['rss_ready'] / mib:.0f} MiB, at end "
          f"{r['rss_end'] / mib:.0f} MiB, peak (VmHWM) {r['hwm'] / mib:.0f} MiB")
    scale = (FULL_CONTAINERS * FULL_DAYS) / (containers * days)
    cscale = FULL_CONTAINERS / containers
    if scale != 1:
        growth = max(r["hwm"] - r["rss_ready"], 0)
        print(f"  EXTRAPOLATED (linear, x{scale:g} samples, x{cscale:g} containers) to "
              f"{FULL_CONTAINERS} containers x {FULL_DAYS} days = "
              f"{FULL_CONTAINERS * FULL_DAYS * 1440 * 2:,} samples:")
        print(f"    time ~{secs * scale / 60:.1f} min; peak RSS ~"
              f"{(r['rss_ready'] + growth * cscale) / mib:,.0f} MiB "
              f"(RSS at ready + growth x{cscale:g}; state is bounded per container, so memory "
              f"scales with containers, not days)")
    changelog = f"{dep.prefix}-usage-changelog"
    expect = end_offsets(stack.kafka, changelog)
    _, _, latest = asyncio.run(consume_count(stack.kafka, changelog, expect, timeout=120))
    print_sizes(state_bytes(latest), f"{days} days")
    dep.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--backfill-containers", type=int, default=200)
    ap.add_argument("--backfill-days", type=int, default=14)
    ap.add_argument("--timeout", type=float, default=300.0, help="per worker wait, seconds")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-backfill", action="store_true")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}")
    stack = Stack().start()
    try:
        if not args.skip_throughput:
            part_throughput(stack, args.containers, args.chunks, args.timeout)
        if not args.skip_backfill:
            part_backfill(stack, args.backfill_containers, args.backfill_days, args.timeout)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
