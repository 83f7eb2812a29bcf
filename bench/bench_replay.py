"""Table recovery into an EMPTY data dir (a replaced pod, every first start), not a test.

    python bench/bench_replay.py [--workloads 3000] [--versions 2] [--runs 4]

Starts a private Apache Kafka (KRaft, SASL_PLAINTEXT + SCRAM-SHA-256), SecantusDB and moto S3,
seeds the usage changelog with ``--versions`` values per container (``workloads`` x 2 containers,
14-day states built by the worker's own code, as ``bench_scale`` seeds them; production keeps about
two versions per container between compactions), then starts one worker (RocksDB table store,
production session timeout) on an empty data dir ``--runs`` times, alternating:

* **baseline**: Faust's own recovery as before the preload — ``KUBEFINOPS_TABLE_PRELOAD=false``
  and Faust's 1,500 ms fetch wait (``KUBEFINOPS_KAFKA_FETCH_MAX_WAIT_MS=1500``);
* **now**: the shipped settings (bulk changelog preload, 100 ms fetch wait).

For each: process start -> web up -> partitions assigned -> ``/ready`` (tables recovered), and the
worker's CPU seconds until ready.  The floor, in the same run: a plain aiokafka consumer reading the
whole usage changelog.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_scale import CHUNK, PARTITIONS, workloads
from bench.common import (
    Stack,
    proc_cpu_seconds,
    seed_usage_changelog,
    usage_changelog,
    usage_templates,
)
from tables import USAGE_CHANGELOG_CONFIG
from tests.harness.kafka import KafkaInfo, create_topics
from tests.harness.s3 import start_s3, unique_bucket
from tests.integration.workers import http_json

MIB = 1024 * 1024
CONFIGS = {
    "baseline": {"KUBEFINOPS_TABLE_PRELOAD": "false", "KUBEFINOPS_KAFKA_FETCH_MAX_WAIT_MS": "1500"},
    "now": {},
}


async def plain_read(info: KafkaInfo, topic: str) -> tuple[int, int, float]:
    """(records, value bytes, seconds) for one plain consumer reading the topic end to end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **info.client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * MIB,
        fetch_max_bytes=16 * MIB,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        started, records, size = time.monotonic(), 0, 0
        todo = set(tps)
        while todo:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += len(batch)
                size += sum(len(r.value or b"") for r in batch)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return records, size, time.monotonic() - started
    finally:
        await consumer.stop()


def start_to_ready(dep: Any, port: int, timeout: float) -> dict[str, float]:
    log = dep.workdir / "w0.log"
    offset = log.stat().st_size if log.exists() else 0  # the log is appended to across runs
    started = time.monotonic()
    server, port = dep.start_worker("w0", port)
    marks: dict[str, float] = {}
    try:
        while server.alive() and time.monotonic() - started < timeout:
            try:
                state = http_json(f"http://127.0.0.1:{port}/ready")[1]
            except OSError:
                state = None
            now = time.monotonic() - started
            if isinstance(state, dict):
                marks.setdefault("web", now)
                if state.get("assigned_partitions"):
                    marks.setdefault("assigned", now)
                if state.get("ready"):
                    marks["ready"] = now
                    marks["cpu"] = proc_cpu_seconds(server.pid)
                    break
            time.sleep(0.05)
        preloaded = [
            line.split("changelog preload: ", 1)[1].strip()
            for line in server.log.read_text()[offset:].splitlines()
            if "changelog preload: " in line
        ]
        marks["preload_lines"] = float(len(preloaded))
        PRELOADED[:] = preloaded
    finally:
        server.stop()
    return marks


PRELOADED: list[str] = []  # the last run's "changelog preload" log lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", type=int, default=3000)
    ap.add_argument("--versions", type=int, default=2, help="values per container in the log")
    ap.add_argument("--runs", type=int, default=4, help="worker starts, alternating configs")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--configs", default="baseline,now", help="which of baseline,now to alternate")
    args = ap.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    stack = Stack()
    try:
        stack.start()
        assert stack.kafka is not None
        s3 = start_s3(stack.workdir)
        stack.servers.append(s3.server)
        env = {
            "KUBEFINOPS_S3_ENDPOINT_URL": s3.endpoint_url,
            "KUBEFINOPS_S3_ACCESS_KEY": s3.access_key,
            "KUBEFINOPS_S3_SECRET_KEY": s3.secret_key,
            "KUBEFINOPS_S3_REGION": s3.region,
            "KUBEFINOPS_S3_BUCKET": unique_bucket("replay"),
            "KUBEFINOPS_BROKER_SESSION_TIMEOUT": "30",
            "KUBEFINOPS_COLLECT_ON_START": "false",
            "KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID": "replay-0",
            "KUBEFINOPS_TABLE_STORE": "rocksdb",
            "KUBEFINOPS_LOG_LEVEL": "info",  # the preload's own log line
        }
        dep = stack.deployment(partitions=PARTITIONS, **env)
        create_topics(stack.kafka, [dep.topic("metrics")], partitions=PARTITIONS)
        end = int(time.time() // 3600 * 3600) - 3600
        chunks = [(end - (k + 1) * CHUNK, end - k * CHUNK) for k in range(14 * 4)][::-1]
        templates = usage_templates(chunks[:-1], 300, min(64, 2 * args.workloads))
        containers = [
            (ns, wl, c) for ns, wl in workloads(args.workloads) for c in ("app", "sidecar")
        ]
        written = 0
        for _ in range(args.versions):
            size, _took = asyncio.run(
                seed_usage_changelog(
                    stack.kafka,
                    dep.prefix,
                    PARTITIONS,
                    containers,
                    templates,
                    USAGE_CHANGELOG_CONFIG,
                )
            )
            written += size
        print(
            f"== {args.workloads:,} workloads x 2 containers, {args.versions} versions each: "
            f"{len(containers) * args.versions:,} usage changelog records, {written / MIB:.1f} MiB"
        )
        records, size, took = asyncio.run(plain_read(stack.kafka, usage_changelog(dep.prefix)))
        print(
            f"  floor: a plain aiokafka consumer reads {records:,} records "
            f"({size / MIB:.1f} MiB) in {took:.2f}s"
        )
        base_env = dict(dep.extra_env)
        names = [n for n in args.configs.split(",") if n in CONFIGS]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        port = 0
        for k in range(args.runs):
            name = names[k % len(names)]
            dep.extra_env.clear()
            dep.extra_env.update(base_env, **CONFIGS[name])
            shutil.rmtree(dep.workdir / "w0", ignore_errors=True)  # an empty data dir each time
            port = port or 17000 + os.getpid() % 1000
            marks = start_to_ready(dep, port, args.timeout)
            results[name].append(marks)
            if "ready" not in marks:
                print(f"  run {k} {name}: NOT ready within {args.timeout:.0f}s")
                continue
            print(
                f"  run {k} {name:8}: start -> web {marks['web']:.1f}s -> assigned "
                f"{marks['assigned']:.1f}s -> ready {marks['ready']:.2f}s (tables recovered in "
                f"{marks['ready'] - marks['assigned']:.2f}s), worker CPU {marks['cpu']:.2f}s, "
                f"load {os.getloadavg()[0]:.1f}"
            )
            for line in PRELOADED:
                print(f"    worker log: changelog preload: {line}")
        done = {n: [m for m in ms if "ready" in m] for n, ms in results.items()}
        if len(done) == len(CONFIGS) and all(done.values()):
            med = {n: statistics.median(m["ready"] for m in ms) for n, ms in done.items()}
            rec = {
                n: statistics.median(m["ready"] - m["assigned"] for m in ms)
                for n, ms in done.items()
            }
            print(
                f"  MEASURED start -> ready, median: baseline {med['baseline']:.2f}s, now "
                f"{med['now']:.2f}s ({med['now'] / med['baseline']:.2f}x); assigned -> ready: "
                f"{rec['baseline']:.2f}s vs {rec['now']:.2f}s "
                f"({rec['now'] / rec['baseline']:.2f}x; the floor's read {took:.2f}s)"
            )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
