"""The transport floor of a burst: the records of a 1,000-workload burst through a worker that
does no work on them (not a test).

    python bench/bench_floor.py [--burst 1000] [--bursts 2] [--runs 2] [--batch 100]
                                [--kinds faust,faust-no-tables,faust-minimal,faust-batched,plain]

``bench_scale.py`` measures the real worker's burst (a chunk and a cycle-end marker per workload
→ decision) and the same handlers in process; the difference is Faust, aiokafka, the broker and
the event loop.  This script measures that part alone: the same records, of the same sizes,
through the same hops, with no handler work at all, in two workers started side by side on one
SCRAM broker, alternating:

* **faust** — a Faust app built by the worker's own ``engine.app.create_app`` (the shipped
  producer, consumer and commit settings), with the real topology: an agent on the metrics topic
  that writes two usage-sized table values for a chunk (the usage changelog, ~7.4 KB each) and,
  for a marker, a spec-sized table value and a recommendation-sized record; a gate agent taking
  the recommendations in batches (as ``agents.gate`` does) that sends a decision-sized record; an
  executor agent on the one-partition decisions topic that writes a decision row and a cycle meta
  (as ``agents.executor`` does).  Nothing is parsed, nothing computed.
* **plain** — the same hops with aiokafka alone (one consumer group, one producer, offsets
  committed every second after the producer is flushed): what the Kafka client and the broker
  cost without Faust.
* **faust-no-tables** — the Faust worker without its table writes: what the changelogs cost.
* **faust-minimal** — the fewest Faust records that per-container state in tables allows: the
  two usage writes per workload, and the decision sent from the aggregator's stream (no spec
  write, no recommendations hop, no executor writes; the executor still reads the decisions).
* **faust-batched** — faust-minimal fed records that carry many workloads: the bench groups the
  burst's chunks and markers per metrics partition (as the collector could: it knows the
  partitioner) into records of at most ``--batch`` workloads, each with a JSON head naming its
  workloads and the same payload bytes; the aggregator writes the two usage values per
  workload and sends one decision record per workload.  What a redesign of the input contract
  alone could reach (the decisions topic keeps one record per workload).

Settings the worker reads (``KUBEFINOPS_*``, e.g. ``KUBEFINOPS_KAFKA_PRODUCER_BATCH_BYTES``) are
passed through from the environment to the Faust floor worker.

The burst is ``bench_scale.py``'s (``burst_messages``: real chunk and marker records) and so is the
latency (marker acknowledged → decision consumed).  If the floor alone is over the 2 s bar, no
handler work can bring the real worker under it with this record pattern.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# what the real records weigh (bench_scale's 14-day state; a recommendation and a decision of
# the recommender and the gate on it): the values the floor writes are these sizes
USAGE_BYTES = 7_400  # one container's usage state (the changelog's ~7.4 KB at 14 days)
REC_BYTES = 2_500  # a recommendation
DECISION_BYTES = 2_700  # a decision (and its pending row)
META = b'{"cycle":"c","expected":null,"first_seen":1.0,"last_seen":1.0,"stored":1}'
CYCLE = re.compile(rb'"cycle":"([^"]+)"')


def padded(key: bytes, cycle: bytes, size: int) -> bytes:
    """A JSON record the bench's decision reader understands, padded to ``size`` bytes."""
    head = b'{"workload_id":"' + key + b'","collection_cycle":"' + cycle + b'","pad":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def is_marker(value: bytes) -> bool:
    return value.startswith(b'{"type":"cycle-end"')


def recommendation_of(key: bytes, marker: bytes) -> bytes:
    """A recommendation-sized record for a marker's workload and cycle."""
    found = CYCLE.search(marker)
    return padded(key, found.group(1) if found else b"?", REC_BYTES)


def decision_of(recommendation: bytes) -> bytes:
    """A decision-sized record from a recommendation (the same workload and cycle)."""
    more = b"d" * max(0, DECISION_BYTES - len(recommendation))
    return recommendation.replace(b'"pad":"', b'"pad":"' + more, 1)


def serve_faust() -> None:
    """The Faust floor worker (its settings from the environment, as ``kubefinops worker``)."""
    from engine.app import create_app
    from engine.settings import Settings
    from engine.worker import preflight

    settings = Settings()
    preflight(settings)
    app = create_app(settings)
    n = settings.topic_partitions
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    metrics = app.topic(settings.topic("metrics"), partitions=n, **raw)
    recs = app.topic(settings.topic("recommendations"), partitions=n, **raw)
    decisions = app.topic(settings.topic("decisions"), partitions=1, **raw)
    table = {"key_type": bytes, "value_type": bytes}
    usage = app.Table("usage", partitions=n, **table)
    workloads = app.Table("workloads", partitions=n, **table)
    rows = app.Table("pending-decisions", partitions=1, **table)
    metas = app.Table("pending-cycles", partitions=1, **table)
    state = b"s" * USAGE_BYTES
    tables = os.environ.get("FLOOR_TABLES", "1") == "1"  # 0: the same hops, no table writes
    # 1: only what per-container state needs (two usage writes a workload), the decision sent
    # from the aggregator's stream: no spec, no recommendations hop, no executor
    minimal = os.environ.get("FLOOR_MINIMAL", "0") == "1"
    batched = os.environ.get("FLOOR_BATCHED", "0") == "1"  # faust-minimal on batch records

    @app.agent(metrics, name="floor.aggregator")
    async def aggregate(stream):
        async for event in stream.events():
            key, value = event.key, event.value
            if batched:
                head = json.loads(value[: value.index(b"\n")])
                cycle = head["cycle"].encode()
                for wid in head["keys"]:
                    k = wid.encode()
                    usage[k + b"/app"] = state
                    usage[k + b"/sidecar"] = state
                    await decisions.send(key=k, value=padded(k, cycle, DECISION_BYTES))
                continue
            if is_marker(value):
                if minimal:
                    rec = recommendation_of(key, value)
                    await decisions.send(key=key, value=decision_of(rec))
                    continue
                if tables:
                    workloads[key] = value
                await recs.send(key=key, value=recommendation_of(key, value))
            elif tables:
                usage[key + b"/app"] = state
                usage[key + b"/sidecar"] = state

    @app.agent(recs, name="floor.gate")
    async def gate(stream):
        async for events in stream.take_events(500, within=0.05):
            for e in events:
                await decisions.send(key=e.key, value=decision_of(e.value))

    @app.agent(decisions, name="floor.executor")
    async def execute(stream):
        async for event in stream.events():
            if tables and not minimal:
                rows[b"c|" + event.key] = event.value
                metas[b"c"] = META

    import logging

    from engine.worker import make_worker

    # the worker's own Worker (no spinner: Faust's would put the root logger at DEBUG)
    make_worker(app, settings, logging.Filter()).execute_from_commandline()


async def serve_plain_async(prefix: str, client: dict[str, str]) -> None:
    """The same hops with aiokafka alone: consume, produce, commit every second after a flush."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    metrics, recs, decisions = (
        f"{prefix}.{t}" for t in ("metrics", "recommendations", "decisions")
    )
    usage, workloads, rows, metas = (
        f"{prefix}-{t}-changelog"
        for t in ("usage", "workloads", "pending-decisions", "pending-cycles")
    )
    consumer = AIOKafkaConsumer(
        metrics, recs, decisions, group_id=f"{prefix}-plain", enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=100, **client,
    )  # fmt: skip
    producer = AIOKafkaProducer(acks="all", linger_ms=20, **client)
    await consumer.start()
    await producer.start()
    state = b"s" * USAGE_BYTES
    committed = time.monotonic()
    print("plain floor worker consuming", flush=True)
    while True:
        batch = await consumer.getmany(timeout_ms=100, max_records=500)
        for tp, records in batch.items():
            for r in records:
                key, value = r.key, r.value
                if tp.topic == metrics:
                    if is_marker(value):
                        await producer.send(workloads, key=key, value=value)
                        await producer.send(recs, key=key, value=recommendation_of(key, value))
                    else:
                        await producer.send(usage, key=key + b"/app", value=state)
                        await producer.send(usage, key=key + b"/sidecar", value=state)
                elif tp.topic == recs:
                    await producer.send(decisions, key=key, value=decision_of(value))
                else:
                    await producer.send(rows, key=b"c|" + key, value=value)
                    await producer.send(metas, key=b"c", value=META)
        if time.monotonic() - committed >= 1.0:
            await producer.flush()
            await consumer.commit()
            committed = time.monotonic()


def start(stack: Any, kind: str) -> tuple[Any, Any]:
    """A floor worker of ``kind`` on its own topics (a deployment of its own on the broker)."""
    from tests.harness.kafka import create_topics
    from tests.harness.proc import Server, free_port

    dep = stack.deployment()
    env = {**dep.env(free_port(), kind), "KUBEFINOPS_LOG_LEVEL": "warning"}
    if kind == "faust-no-tables":
        kind, env["FLOOR_TABLES"] = "faust", "0"
    if kind == "faust-minimal":
        kind, env["FLOOR_MINIMAL"] = "faust", "1"
    if kind == "faust-batched":
        kind, env["FLOOR_BATCHED"] = "faust", "1"
    if kind == "plain":  # the Faust worker creates its own (the worker's pre-flight)
        n = dep.partitions
        create_topics(stack.kafka, [dep.topic("metrics"), dep.topic("recommendations")], n)
        create_topics(stack.kafka, [dep.topic("decisions")], 1)
        for names, parts in (
            (("usage", "workloads"), n),
            (("pending-decisions", "pending-cycles"), 1),
        ):
            create_topics(stack.kafka, [f"{dep.prefix}-{t}-changelog" for t in names], parts)
        env |= {"FLOOR_PREFIX": dep.prefix, "FLOOR_CLIENT": json.dumps(stack.kafka.client_kwargs())}
    argv = [sys.executable, __file__, "--serve", kind]
    server = Server(name=kind, argv=argv, log=dep.workdir / f"{kind}.log", env=env).start()
    return dep, server


def batched(
    msgs: list[tuple[bytes, bytes]], partitions: int, size: int
) -> list[tuple[int, bytes, list[str]]]:
    """The burst's records grouped per metrics partition (aiokafka's default partitioner, the
    one the workers' producers use) into records of at most ``size`` workloads: a JSON head
    (cycle, workload ids) on the first line, then every grouped record's bytes; with each
    record its partition and its workload ids."""
    from aiokafka.partitioner import DefaultPartitioner

    part = DefaultPartitioner()
    everything = list(range(partitions))
    groups: dict[int, list[tuple[bytes, list[bytes]]]] = {}
    cycle = ""
    for key, value in msgs:
        if is_marker(value):
            found = CYCLE.search(value)
            cycle = found.group(1).decode() if found else cycle
        group = groups.setdefault(part(key, everything, everything), [])
        if not group or group[-1][0] != key:
            group.append((key, []))
        group[-1][1].append(value)
    out = []
    for p, items in sorted(groups.items()):
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            wids = [k.decode() for k, _ in chunk]
            head = json.dumps({"cycle": cycle, "keys": wids}).encode()
            out.append((p, head + b"\n" + b"".join(b"".join(v) for _, v in chunk), wids))
    return out


def span(a: np.ndarray) -> str:
    return f"{a.min():.2f}-{a.max():.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--bursts", type=int, default=2, help="bursts per worker and run")
    ap.add_argument("--runs", type=int, default=2, help="alternations faust/plain")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=100, help="workloads per faust-batched record")
    ap.add_argument(
        "--kinds",
        default="faust,faust-no-tables,plain",
        help="workers to alternate: faust, plain, faust-no-tables (Faust, the table writes left "
        "out: what the changelogs cost), faust-minimal (only the two usage writes per workload, "
        "the decision sent by the aggregator), faust-batched (faust-minimal fed records of many "
        "workloads)",
    )
    ap.add_argument("--serve", choices=("faust", "plain"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "faust":
        serve_faust()
        return
    if args.serve == "plain":
        client = json.loads(os.environ["FLOOR_CLIENT"])
        asyncio.run(serve_plain_async(os.environ["FLOOR_PREFIX"], client))
        return

    from bench import bench_scale as bs
    from bench.common import Stack, host_cpu_seconds, proc_cpu_seconds

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; burst of {args.burst:,} workloads (a chunk and "
        "a cycle-end marker each), no handler work"
    )
    bs.STEP[0] = 300
    wls = bs.workloads(args.burst)
    end = (int(time.time()) // 300) * 300 - 3 * 3600
    kinds = args.kinds.split(",")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with Stack() as stack:
        for run in range(args.runs):
            for kind in kinds:
                dep, server = start(stack, kind)
                groups = kind == "faust-batched"
                try:
                    # warm: the group joined and every hop flowing before anything is measured
                    rng = np.random.default_rng(1)
                    warm = bs.burst_messages(wls[:20], end - 1800, end - 900, "warm", rng)
                    # faust-batched takes the burst as records of many workloads
                    one = batched(warm, dep.partitions, args.batch) if groups else None
                    _, got = asyncio.run(bs.decisions_of(dep, stack, "warm", 20, warm, 90, one))
                    if len(got) < 20:
                        tail = server.log.read_text()[-3000:]
                        raise SystemExit(f"the {kind} floor worker never answered:\n{tail}")
                    for i in range(args.bursts):
                        cycle, t = f"floor-{run}-{i}", end + i * 900
                        rng = np.random.default_rng(7 + i)
                        msgs = bs.burst_messages(wls, t, t + 900, cycle, rng)
                        # before the clock: the collector would send them so
                        grouped = batched(msgs, dep.partitions, args.batch) if groups else None
                        cpu0, busy0, t0 = (
                            proc_cpu_seconds(server.pid),
                            host_cpu_seconds()[0],
                            time.monotonic(),
                        )
                        acked, arrived = asyncio.run(
                            bs.decisions_of(
                                dep, stack, cycle, len(wls), msgs, args.timeout, grouped
                            )
                        )
                        wall = time.monotonic() - t0
                        cpu = proc_cpu_seconds(server.pid) - cpu0
                        busy = host_cpu_seconds()[0] - busy0
                        lat = np.array([arrived[w] - acked[w] for w in arrived if w in acked])
                        p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99))
                        results[kind].append((p99, cpu))
                        print(
                            f"  {kind:5} run {run + 1} burst {i + 1}: {len(arrived):,} "
                            f"decisions, marker ack -> decision p50 {p50:.2f}s p99 {p99:.2f}s; "
                            f"worker {cpu:.2f} CPU-s ({1000 * cpu / len(wls):.2f} ms a "
                            f"workload); host {busy:.1f} busy CPU-s in {wall:.1f}s "
                            f"(load {os.getloadavg()[0]:.1f})"
                        )
                finally:
                    server.stop()
    for kind, rows in results.items():
        a = np.array(rows)
        if a.size:
            print(
                f"MEASURED {kind}: {args.burst:,} workloads, no handler work, {len(rows)} bursts: "
                f"p99 {span(a[:, 0])}s, worker {span(a[:, 1])} CPU-s"
            )
    if results.get("faust") and results.get("plain"):
        f, p = (np.median(np.array(results[k])[:, 1]) for k in ("faust", "plain"))
        print(f"MEASURED Faust / aiokafka alone, worker CPU (medians): {f / p:.1f}x")


if __name__ == "__main__":
    main()
