"""Fleet-scale benchmark: one worker, N workloads x 2 containers x 14 days (not a test).

    python bench/bench_scale.py [--sizes 1000,3000] [--days 14] [--step 300] [--burst 1000]
                                [--session-timeout 30] [--timeout 1800]
                                [--bursts-only [--workers N]] [--cross-midnight]

Starts a private Apache Kafka (KRaft, SASL_PLAINTEXT + SCRAM-SHA-256) and SecantusDB on loopback,
then for each size (a fresh deployment: its own topics and app id):

1. **Ingest**: the older days are SEEDED (unless ``--live-hours`` covers all ``days``): each
   container's state after them — built in-process by the worker's own code (validate,
   ``ContainerUsage.ingest``, ``to_dict``, Faust's JSON codec) from ``--templates`` distinct
   synthetic histories — is written straight to the usage changelog, on its workload's partition.
   The last ``--live-hours`` of samples every ``step`` seconds for every container are
   pre-produced in the collector's 6-hour chunks; then ONE ``kubefinops worker`` starts with the
   production session timeout, recovers the seeded changelog and ingests the live hours.
2. **Decisions**: one cycle-end marker per workload (the collector's in-band marker with its
   spec) and times the decisions on ``kubefinops.decisions``: decisions per second.
3. **RSS** of the worker after ingest + decisions (VmRSS) and its peak (VmHWM); **changelog
   bytes** of the usage table on the broker's disk; agent crashes and oversized-message errors
   counted in the worker log.
4. **Burst**: a collector-shaped burst — one new hourly chunk for ``burst`` workloads, each
   followed by its cycle-end marker — and the latency from a workload's marker being
   acknowledged by Kafka to its decision arriving (p50 / p99), and the CPU the worker processes
   and the whole host used over the burst (``/proc``): whether the worker waited or computed.
5. **Recovery**: SIGKILL, then a new worker process; the time from process start until
   ``/api/usage`` answers the pre-kill counts for a sample of workloads: as the same static member
   (the same ``KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID``: the chart's default is the pod name, so a
   container restarted in its pod), as the same static member with an empty data dir (a pod
   replaced under the same name, as a StatefulSet's is), then as a new member (a Deployment's
   replaced pod, or plain membership: the group waits for the killed member's session to time
   out), split into: web up, partitions
   assigned (group join), tables recovered (``/ready``), correct answers.

Figures are printed, never asserted.  The producer runs before the worker starts (ingest) or
concurrently (burst, on the same 2 cores: the latencies include that competition).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Stack,
    all_end_offsets,
    container_names,
    encode_batch,
    encode_chunk,
    get_text,
    host_cpu_seconds,
    metrics_url,
    proc_cpu_seconds,
    proc_status,
    produce_fast,
    seed_usage_changelog,
    serve_estate,
    usage_templates,
    wait_ingested,
)
from engine.core.model import ContainerSpec, CycleEnd, ResourcePair, WorkloadSpec
from tables import USAGE_CHANGELOG_CONFIG
from tests.harness.kafka import create_topics
from tests.harness.proc import Server
from tests.harness.s3 import S3Info, start_s3, unique_bucket
from tests.integration.workers import Deployment, http_json

PARTITIONS = 4
CHUNK = 6 * 3600
MIB = 2**20


def workloads(n: int) -> list[tuple[str, str]]:
    """(namespace, name) of ``n`` workloads; containers ``app`` and ``sidecar`` each."""
    names = container_names(2 * n, per_workload=2)
    return [(ns, wl) for ns, wl, c in names if c == "app"]


def spec_of(ns: str, name: str, at: float) -> WorkloadSpec:
    return WorkloadSpec(
        namespace=ns,
        kind="Deployment",
        name=name,
        replicas=2,
        containers=[
            ContainerSpec(name=c, requests=ResourcePair(cpu=0.5, memory=512 * MIB))
            for c in ("app", "sidecar")
        ],
        observed_at=at,
    )


def batch_doc(
    rng: np.random.Generator, ns: str, wl: str, cont: str, start: int, end: int, step: int
) -> tuple[bytes, bytes, int]:
    return encode_batch(rng, ns, wl, cont, start, end, step=step)


def history(wls: list[tuple[str, str]], chunks: list[tuple[int, int]], step: int) -> Any:
    rng = np.random.default_rng(11)
    for start, end in chunks:
        yield [
            batch_doc(rng, ns, wl, c, start, end, step)[:2]
            for ns, wl in wls
            for c in ("app", "sidecar")
        ]


def markers(wls: list[tuple[str, str]], cycle: str, at: float) -> list[tuple[bytes, bytes]]:
    out = []
    for ns, wl in wls:
        marker = CycleEnd(cycle=cycle, spec=spec_of(ns, wl, at))
        out.append((f"{ns}/Deployment/{wl}".encode(), marker.model_dump_json().encode()))
    return out


async def decisions_of(
    dep: Deployment,
    stack: Stack,
    cycle: str,
    expect: int,
    send: list[tuple[bytes, bytes]],
    timeout: float,
    batches: list[tuple[int, bytes, list[str]]] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Produce ``send`` (in order) while consuming decisions of ``cycle``; or, given
    ``batches``, those instead: records of many workloads, ``(partition, value, workload ids)``
    (``bench_floor.py --kinds faust-batched``), a workload's ack being its record's.

    Returns (ack time per workload of its last record sent, arrival time per workload).
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    assert stack.kafka is not None
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), group_id=None)
    await consumer.start()
    tp = TopicPartition(dep.topic("decisions"), 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    arrived: dict[str, float] = {}
    acked: dict[str, float] = {}

    async def consume() -> None:
        while len(arrived) < expect:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    doc = json.loads(r.value)
                    # the collection cycle (``cycle`` in records written before issue 13)
                    if doc.get("collection_cycle", doc.get("cycle")) == cycle:
                        arrived.setdefault(doc["workload_id"], now)

    producer = AIOKafkaProducer(
        **stack.kafka.client_kwargs(), acks="all", linger_ms=2, max_request_size=8 << 20
    )
    await producer.start()
    task = asyncio.create_task(consume())
    try:
        if batches is not None:
            topic = dep.topic("metrics")
            sent = [  # keyed by the first workload: the aggregator checks a bundle's members
                await producer.send(topic, key=w[0].encode(), value=v, partition=p)
                for p, v, w in batches
            ]
            for (_, _, wids), fut in zip(batches, sent, strict=True):
                await fut
                acked.update(dict.fromkeys(wids, time.monotonic()))
        else:
            for i in range(0, len(send), 200):
                part = send[i : i + 200]
                topic = dep.topic("metrics")
                futures = [await producer.send(topic, value=v, key=k) for k, v in part]
                for (k, _), fut in zip(part, futures, strict=True):
                    await fut
                    acked[k.decode()] = time.monotonic()
        await asyncio.wait_for(task, timeout)
    except TimeoutError:
        print(f"!! only {len(arrived)}/{expect} decisions of {cycle} within {timeout:.0f}s")
    finally:
        task.cancel()
        await producer.stop()
        await consumer.stop()
    return acked, arrived


def records_written(before: dict[str, int], after: dict[str, int], workloads: int) -> str:
    """Records written to each topic between two snapshots of the end offsets, per workload
    (the bench's own producer included: the metrics topic's chunk and marker), biggest first."""
    grew = {t: after[t] - before.get(t, 0) for t in after if after[t] > before.get(t, 0)}
    total = sum(grew.values()) / workloads
    parts = ", ".join(
        f"{re.sub(r'^[^.-]+[.-]', '', t)} {v / workloads:.2f}"
        for t, v in sorted(grew.items(), key=lambda kv: -kv[1])
    )
    return f"{total:.2f} ({parts})"


def burst_messages(
    wls: list[tuple[str, str]], start: int, end: int, cycle: str, rng: np.random.Generator
) -> list[tuple[bytes, bytes]]:
    """A collector-shaped burst: per workload its chunk (the collector's columnar record, both
    containers), then its cycle-end marker."""
    msgs: list[tuple[bytes, bytes]] = []
    for ns, wl in wls:
        msgs.append(encode_chunk(rng, ns, wl, ["app", "sidecar"], start, end, step=STEP[0])[:2])
        msgs += markers([(ns, wl)], cycle, time.time())
    return msgs


STEP = [300]  # the run's sample step (set from --step)


def bundle_burst(
    msgs: list[tuple[bytes, bytes]], partitions: int = PARTITIONS
) -> list[tuple[int, bytes, list[str]]]:
    """The burst as the collector sends it since 2026-12-03 (``--records bundled``): the same
    records in the same order, bundled per partition (engine/core/bundles.py), as
    ``decisions_of``'s batches: ``(partition, value, workload ids)``, a workload's ack being
    that of the last bundle holding one of its records (its marker's)."""
    from engine.core.bundles import bundled, partition_of

    out = []
    for key, value in bundled([(k.decode(), v) for k, v in msgs], partitions):
        doc = json.loads(value)
        members = doc["records"] if doc.get("type") == "bundle" else [doc]
        wids = [
            f"{d['spec']['namespace']}/Deployment/{d['spec']['name']}"
            if "spec" in d
            else f"{d['namespace']}/Deployment/{d['workload']}"
            for d in members
        ]
        out.append((partition_of(key, partitions), value, wids))
    return out


def in_process_burst(
    wls: list[tuple[str, str]],
    start: int,
    end: int,
    args: argparse.Namespace,
    templates: list[bytes] | None,
    live: list[tuple[int, int]] | None = None,
    fleet: int | None = None,
) -> dict[str, float]:
    """The baseline, measured in the same run next to each burst: the same burst (a chunk and a
    marker per workload) through the handlers themselves — aggregator ingest, recommender and gate
    in one pass with the history outbox — on in-memory tables and recording
    topics: what the workloads cost without Faust, Kafka, the executor or the event loop's
    company.  The state is the worker's: the seeded templates then the chunks it ingested since
    (``live``: the live hours and the bursts before this one), decoded and summarized before
    timing as the worker's cache holds them; or the run's ``days`` ingested here when nothing
    was seeded.  ``fleet``: the worker's workload count.  When their decoded state is more than
    the cache holds (the burst's decoded size per container times the fleet's containers), the
    worker's cache has long dropped the burst's states by the time it comes back to them (each
    chunk decodes its state, each marker merges the closed days again), so the baseline starts
    cold too: without this, at 10,000 workloads it was a warm baseline against a cold worker."""
    from agents import aggregator
    from engine.core.model import RESOURCES, container_id
    from engine.services import Services
    from tests.fakes import FakeHistory, runtime

    # the worker's settings (and its partition count: bundles are checked against it)
    rt = runtime(Services(history=FakeHistory()), now=time.time(), topic_partitions=PARTITIONS)
    env = dict(kv.split("=", 1) for kv in getattr(args, "worker_env", []))
    if "KUBEFINOPS_USAGE_CACHE_BYTES" in env:  # the worker's cache bound, when set for the run
        rt.tables.usage.cache.max_bytes = int(env["KUBEFINOPS_USAGE_CACHE_BYTES"])
    rng = np.random.default_rng(3)
    conts = ["app", "sidecar"]

    async def go() -> float:
        if templates:
            for i, (ns, wl) in enumerate(wls):
                for j, c in enumerate(conts):
                    cid = container_id(ns, "Deployment", wl, c)
                    rt.tables.usage.store[cid] = templates[(2 * i + j) % len(templates)]
            # the hours the worker ingested live, so the burst's chunk follows on from the
            # state as in the worker (without them it filled a gap, and crossed midnight
            # whenever the live hours did: a baseline slower than the worker's real burst)
            for s, e in live or []:
                for ns, wl in wls:
                    key, raw, _ = encode_chunk(rng, ns, wl, conts, s, e, step=args.step)
                    await aggregator.ingest(rt, key, raw)
            for ns, wl in wls:
                for c in conts:
                    usage = rt.tables.usage.get(container_id(ns, "Deployment", wl, c))
                    for res in RESOURCES if usage is not None else ():
                        usage.summary(res)  # warm, as the decisions phase left the worker's
        else:
            chunks = [(end - (k + 1) * CHUNK, end - k * CHUNK) for k in range(args.days * 4)]
            for s, e in chunks[::-1]:
                for ns, wl in wls:
                    key, raw, _ = encode_chunk(rng, ns, wl, conts, s, e, step=args.step)
                    await aggregator.ingest(rt, key, raw)
        msgs = burst_messages(wls, start, end, "baseline", rng)
        if getattr(args, "records", "workload") == "bundled":  # what the worker is sent
            msgs = [(wids[0].encode(), v) for _, v, wids in bundle_burst(msgs)]
        cache = rt.tables.usage.cache
        per_container = cache.bytes / max(1, len(cache))
        if fleet is not None and per_container * 2 * fleet > cache.max_bytes:
            cache.clear()  # as in the worker: the fleet's states do not fit its cache
            cold[0] = True
        cache.hits = cache.misses = 0
        cpu[0] = time.process_time()
        t0 = time.perf_counter()
        for key, raw in msgs:
            await aggregator.ingest(rt, key, raw)  # the gate decides in the same pass
        cpu[0] = time.process_time() - cpu[0]
        return time.perf_counter() - t0

    cpu = [0.0]
    cold = [False]
    took = asyncio.run(go())
    decided = len(rt.topics.decisions.sent)  # type: ignore[attr-defined]
    assert decided == len(wls), f"in-process baseline: {decided} decisions of {len(wls)}"
    cache = rt.tables.usage.cache
    return {
        "workloads": len(wls),
        "ms_per_workload": 1000 * took / len(wls),
        "cpu_ms_per_workload": 1000 * cpu[0] / len(wls),
        # the decoded-state cache during the burst (its bound: the worker's usage_cache_bytes)
        "cache_hit_rate": cache.hits / max(1, cache.hits + cache.misses),
        "cold": float(cold[0]),
    }


class Profiler:
    """``--profile DIR``: py-spy (when on PATH) samples the worker while a phase runs and writes
    collapsed stacks to ``DIR/<name>.txt`` (``--nonblocking``: the worker is never paused)."""

    def __init__(self, out: str | None, pid: int, name: str) -> None:
        self.cmd = None
        if out and shutil.which("py-spy"):
            Path(out).mkdir(parents=True, exist_ok=True)
            path = str(Path(out) / f"{name}.txt")
            self.cmd = ["py-spy", "record", "--nonblocking", "--format", "raw", "-r", "200",
                        "-p", str(pid), "-o", path]  # fmt: skip
        elif out:
            print("!! --profile: py-spy is not on PATH (pip install py-spy); not profiling")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.cmd:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # attached before the phase starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RssByPhase:
    """Samples the worker's VmRSS every 0.25 s and keeps the highest per phase (the VmHWM alone
    does not say which phase made the peak)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.phase = pid, "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                rss = proc_status(self.pid).get("VmRSS", 0) / MIB
            except OSError:
                return
            self.peaks[self.phase] = max(rss, self.peaks.get(self.phase, 0.0))

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        return ", ".join(f"{k} {v:.0f}" for k, v in self.peaks.items())


def heap_dump(args: argparse.Namespace, pid: int, when: str) -> None:
    """``--heap-dumps``: SIGUSR2 makes a worker started with
    ``KUBEFINOPS_DEBUG_TRACEMALLOC_FRAMES`` write a tracemalloc dump into its data dir (heap/)."""
    if args.heap_dumps:
        os.kill(pid, signal.SIGUSR2)
        time.sleep(3)  # the dump takes the worker a moment; not measured
        print(f"  heap dump: {when} (RSS {proc_status(pid).get('VmRSS', 0) / MIB:.0f} MiB)")


def metrics_text(port: int, *names: str) -> str:
    """The worker's /metrics, only the series ``names`` when given ("" if unreadable: every
    reading of it then says so)."""
    try:
        return get_text(metrics_url(port, *names), timeout=30)
    except OSError as exc:
        print(f"  !! /metrics unreadable: {exc}")
        return ""


def cache_state(text: str) -> str:
    """The worker's decoded-state cache from its /metrics text: bytes held, evictions so far."""
    if not text:
        return "unreadable"
    found = dict(
        re.findall(r"^kubefinops_usage_cache_(bytes|evictions_total) ([0-9.e+]+)$", text, re.M)
    )
    held = float(found.get("bytes", "nan")) / MIB
    return f"{held:.1f} MiB held, {float(found.get('evictions_total', 'nan')):,.0f} evictions"


def gc_pauses(text: str) -> dict[str, float]:
    """The worker's garbage-collection totals from its /metrics text: seconds and collections
    per generation (``g0s``/``g0n`` ...), the longest full collection (``g2max``); {} if
    unreadable."""
    out: dict[str, float] = {}
    for name, gen, value in re.findall(
        r"^kubefinops_gc_(pause_seconds_total|collections_total|pause_max_seconds)"
        r'\{generation="(\d)"\} ([0-9.e+-]+)$',
        text,
        re.M,
    ):
        key = {"pause_seconds_total": "s", "collections_total": "n", "pause_max_seconds": "max"}
        out[f"g{gen}{key[name]}"] = float(value)
    return out


def gc_delta(before: dict[str, float], after: dict[str, float]) -> str:
    if not before or not after:
        return "unreadable"
    secs = sum(after[f"g{g}s"] - before[f"g{g}s"] for g in range(3))
    counts = "/".join(f"{after[f'g{g}n'] - before[f'g{g}n']:.0f}" for g in range(3))
    return f"{secs:.2f}s in {counts} collections (young/middle/full)"


def usage_count(port: int, ns: str, wl: str) -> int | None:
    try:
        text = get_text(f"http://127.0.0.1:{port}/api/usage/{ns}/Deployment/{wl}", timeout=5)
    except OSError:
        return None
    doc = json.loads(text)
    return int(sum(c["cpu"]["count"] for c in doc.get("containers", {}).values()))


def changelog_bytes(stack: Stack, dep: Deployment) -> int:
    total = 0
    for part in stack.workdir.glob(f"kafka*/data/{dep.prefix}-usage-changelog-*"):
        # segment data only: index files are preallocated (10 MiB each, sparse)
        total += sum(f.stat().st_size for f in part.glob("*.log"))
    return total


def log_problems(server: Server, port: int) -> dict[str, int]:
    text = Path(server.log).read_text(errors="replace")
    # Faust's "producer buffer full" line, one per wait, is thinned to one a minute since
    # 2026-12-02: the waits are counted from the worker's counter (the log's lines, for a
    # worker without it)
    waits = text.count("producer buffer full")
    counter = re.search(
        r"^kubefinops_producer_buffer_waits_total (\S+)$",
        metrics_text(port, "kubefinops_producer_buffer_waits_total"),
        re.M,
    )
    return {
        "agent crashes": len(re.findall(r"crashed|Traceback", text)),
        "MessageSizeTooLarge": text.count("MessageSizeTooLarge"),
        "producer buffer waits": int(float(counter.group(1))) if counter else waits,
        "timer overlapping": text.count("Timer commit is overlapping"),
    }


def recover(
    dep: Deployment, name: str, port: int, probe: list[tuple[str, str, int]], timeout: float
) -> tuple[dict[str, float] | None, Server, int]:
    """A new worker process on the killed one's port (a restarted container keeps its pod's
    address, which Faust's assignor checks against a static member's previous assignment).

    Returns the times from process start (None: not recovered within ``timeout``) of: ``web``
    (first HTTP answer), ``assigned`` (partitions assigned: the group join is over), ``ready``
    (tables recovered), ``answers`` (every probed workload has its pre-kill count)."""
    started = time.monotonic()
    server, port = dep.start_worker(name, port)
    marks: dict[str, float] = {}
    pending = list(probe)
    while pending and time.monotonic() - started < timeout and server.alive():
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
                marks.setdefault("ready", now)
                pending = [(ns, wl, n) for ns, wl, n in pending if usage_count(port, ns, wl) != n]
        if pending:
            time.sleep(0.1)
    if pending:
        return None, server, port
    marks["answers"] = time.monotonic() - started
    for key in ("web", "assigned", "ready"):
        marks.setdefault(key, marks["answers"])
    return marks, server, port


def show_recovery(marks: dict[str, float] | None) -> str:
    if marks is None:
        return "did not recover"
    return (
        f"{marks['answers']:.1f}s (web up {marks['web']:.1f}s, partitions assigned "
        f"{marks['assigned']:.1f}s, tables recovered {marks['ready']:.1f}s)"
    )


def reports_in(s3: S3Info, bucket: str) -> tuple[int, int]:
    """(complete reports, decisions they list) in the bucket.  A report is complete once its
    ``audit.json`` is stored, the last of its four objects: counting ``report.json`` alone
    read RSS while the worker was still uploading the rest of the cycle (at 10,000 decisions a
    43 MB audit snapshot)."""
    client = s3.boto3_client()
    found: set[str] = set()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found |= {o["Key"] for o in page.get("Contents", [])}
    except client.exceptions.NoSuchBucket:  # the worker creates it with the first report
        return 0, 0
    keys = [
        k
        for k in sorted(found)
        if k.endswith("/report.json") and k[: -len("report.json")] + "audit.json" in found
    ]
    decisions = 0
    for key in keys:
        doc = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        decisions += int(doc["totals"]["decisions"])
    return len(keys), decisions


ESTATE_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: registry.example/{name}:1.0.0
          resources:
            requests:
              cpu: 500m
              memory: 512Mi
        - name: sidecar
          image: registry.example/proxy:2.1.0
          resources:
            requests:
              cpu: 500m
              memory: 512Mi
"""


ESTATES: list[Server] = []


def start_estate(root: Path, wls: list[tuple[str, str]]) -> tuple[Server, dict[str, str]]:
    """``--autopilot``: the bench's workloads as a GitOps estate, one overlay per namespace
    (``gitops_overlay_path = overlays/{namespace}``), served by the tests' smart-HTTP remote
    with basic auth (bench.common.serve_estate); the worker's Git settings."""
    by_ns: dict[str, list[str]] = {}
    for ns, wl in wls:
        by_ns.setdefault(ns, []).append(ESTATE_DEPLOYMENT.format(name=wl))
    server, url, token = serve_estate(root, by_ns)
    return server, {
        "KUBEFINOPS_GIT_REMOTE_URL": url,
        "KUBEFINOPS_GIT_TOKEN": token,
        "KUBEFINOPS_GIT_USERNAME": "kubefinops-bot",
        "KUBEFINOPS_GIT_WORKDIR": str(root / "clone"),
        "KUBEFINOPS_GITOPS_OVERLAY_PATH": "overlays/{namespace}",
    }


def put_autopilot_policy(mongo_uri: str, database: str, namespaces: list[str]) -> None:
    from engine.adapters.mongo import PolicyStore, connect
    from engine.core.policy import validate_policy
    from engine.settings import load_settings

    settings = load_settings(
        mongodb_uri=mongo_uri, mongodb_database=database, kafka_security_protocol="PLAINTEXT"
    )

    async def put() -> None:
        store = PolicyStore(connect(settings), validate=validate_policy)
        await store.put(
            {"id": "bench-autopilot", "name": "autopilot", "mode": "autopilot",
             "selectors": {"namespaces": sorted(set(namespaces))}, "priority": 5},
            by="bench",
        )  # fmt: skip

    asyncio.run(put())


def estate_commits(root: Path) -> tuple[int, int]:
    """(commits by the bot on the estate's main, workloads they changed)."""
    out = subprocess.run(
        ["git", "log", "--format=%B%x00", "main"],
        cwd=root / "repos" / "estate.git",
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    bot = [m for m in out.split("\x00") if "Kubefinops-Cycle:" in m]
    return len(bot), sum(m.count("Kubefinops-Workload:") for m in bot)


def one_size(stack: Stack, s3: S3Info, n: int, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.kafka is not None
    print(f"\n== {n:,} workloads x 2 containers x {args.days} days, {args.step}s samples")
    bucket = unique_bucket("scale")
    env = {
        "KUBEFINOPS_S3_ENDPOINT_URL": s3.endpoint_url,
        "KUBEFINOPS_S3_ACCESS_KEY": s3.access_key,
        "KUBEFINOPS_S3_SECRET_KEY": s3.secret_key,
        "KUBEFINOPS_S3_REGION": s3.region,
        "KUBEFINOPS_S3_BUCKET": bucket,
        "KUBEFINOPS_BROKER_SESSION_TIMEOUT": str(args.session_timeout),
        "KUBEFINOPS_COLLECT_ON_START": "false",
        "KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID": "bench-worker-0",  # the chart's default: pod name
        "KUBEFINOPS_APPLY_BATCH_SECONDS": "5",
    }
    wls = workloads(n)
    estate_root = Path(tempfile.mkdtemp(prefix="kfo-estate-", dir=stack.workdir))
    if args.autopilot:
        # every decision can apply: an autopilot policy over every namespace, and a Git remote
        # holding the workloads, one overlay per namespace
        estate, git_env = start_estate(estate_root, wls)
        env.update(git_env)
        env["KUBEFINOPS_MONGODB_DATABASE"] = f"bench{int(time.time())}"
        ESTATES.append(estate)  # stopped with the stack, whatever happens
        put_autopilot_policy(
            stack.mongo_uri, env["KUBEFINOPS_MONGODB_DATABASE"], [ns for ns, _ in wls]
        )
    env.update(kv.split("=", 1) for kv in args.worker_env)  # e.g. PRODUCER_LINGER=0.01
    dep = stack.deployment(partitions=PARTITIONS, **env)
    create_topics(stack.kafka, [dep.topic("metrics")], partitions=PARTITIONS)
    end = int(time.time() // 3600 * 3600) - 3600
    if args.cross_midnight:
        # the history ends 30 min before a midnight UTC at least 2 h ago: the first burst's
        # hour closes the day of every container at once, the second is within the next day
        midnight = int(time.time()) // 86400 * 86400
        if time.time() - midnight < 2 * 3600 + 300:
            midnight -= 86400
        end = midnight - 1800
    chunks = [(end - (k + 1) * CHUNK, end - k * CHUNK) for k in range(args.days * 4)][::-1]
    live = max(1, min(len(chunks), -(-args.live_hours * 3600 // CHUNK)))
    seeded, chunks = chunks[:-live], chunks[-live:]
    templates: list[bytes] | None = None
    if seeded:
        t_seed = time.monotonic()
        templates = usage_templates(seeded, args.step, min(args.templates, 2 * n))
        containers = [(ns, wl, c) for ns, wl in wls for c in ("app", "sidecar")]
        written, took = asyncio.run(
            seed_usage_changelog(
                stack.kafka, dep.prefix, PARTITIONS, containers, templates, USAGE_CHANGELOG_CONFIG
            )
        )
        print(
            f"  SEEDED (not ingested by the worker): the first {len(seeded) * CHUNK / 86400:g} "
            f"days as table state written to the usage changelog — {len(containers):,} values "
            f"from {len(templates)} synthetic 14-day histories built with the worker's own "
            f"ingest + encode code, {written / MIB:.0f} MiB, in {time.monotonic() - t_seed:.0f}s"
        )
    per_msg = 2 * (CHUNK // args.step)
    total = len(chunks) * 2 * n * per_msg
    batches = history(wls, chunks, args.step)
    sent, took = asyncio.run(produce_fast(stack.kafka, dep.topic("metrics"), batches))
    print(
        f"  produced {sent:,} batches ({total:,} samples, the last "
        f"{len(chunks) * CHUNK / 3600:g} h) in {took:.0f}s"
    )
    t0 = time.monotonic()
    server, port = dep.start_worker("w0")
    others: list[tuple[Any, int]] = []  # --workers: the others, each its own static member
    for k in range(1, args.workers):
        dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = f"bench-worker-{k}"
        others.append(dep.start_worker(f"w{k}"))
    dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = "bench-worker-0"
    ports = [port] + [p for _, p in others]
    phases = RssByPhase(server.pid)
    phases.phase = "recovery"
    dep.wait_ready(port, server=server, timeout=args.timeout)
    for other, other_port in others:
        dep.wait_ready(other_port, server=other, timeout=args.timeout)
    phases.phase = "live ingest"
    ready_s = time.monotonic() - t0
    heap_dump(args, server.pid, "recovered")
    prog, _ = wait_ingested(ports, total, 120, pid=server.pid, poll=1.0)
    while prog.done_at is None and time.monotonic() - t0 < args.timeout:
        before = prog.last  # go on while it moves; a stalled count is reported, not waited on
        prog, _ = wait_ingested(ports, total, 60, pid=server.pid, poll=1.0)
        if prog.last == before:
            break
    if prog.done_at is None:
        print(f"!! ingest incomplete: {prog.last:,.0f}/{total:,}")
    ingest_s = (prog.done_at or time.monotonic()) - t0
    print(
        f"  MEASURED first start: ready (seeded changelog recovered) {ready_s:.0f}s; "
        f"start->all live samples ingested {ingest_s:.0f}s ({total / ingest_s:,.0f} samples/s)"
    )

    heap_dump(args, server.pid, "ingested")
    phases.phase = "decisions"
    cycle = "bench-full"
    cycle_markers = markers(wls, cycle, time.time())
    bundles = bundle_burst(cycle_markers) if args.records == "bundled" else None
    with Profiler(args.profile, server.pid, f"decisions-{n}"):
        acked, arrived = asyncio.run(
            decisions_of(dep, stack, cycle, n, cycle_markers, args.timeout, bundles)
        )
    dps, decided = None, len(arrived)
    if arrived:
        span = max(arrived.values()) - min(acked.values())
        dps = len(arrived) / span
        print(
            f"  MEASURED decisions: {len(arrived):,}/{n:,} in {span:.1f}s = "
            f"{len(arrived) / span:,.0f} decisions/s"
        )
    deadline = time.monotonic() + args.apply_wait  # the executor and the reporter take it
    n_reports, reported = reports_in(s3, bucket)
    while reported < len(arrived) and time.monotonic() < deadline:
        time.sleep(2)
        n_reports, reported = reports_in(s3, bucket)
    print(f"  reports in S3: {n_reports}, listing {reported:,} of {len(arrived):,} decisions")
    if args.autopilot:
        commits, changed = estate_commits(estate_root)
        print(
            f"  MEASURED Git: {commits} bot commit(s) on the estate, {changed:,} workloads changed"
        )
    t_scrape = time.monotonic()
    scraped = get_text(f"http://127.0.0.1:{port}/metrics", timeout=30)
    print(f"  MEASURED /metrics: {len(scraped) / 1024:.0f} KiB, "
          f"scraped in {time.monotonic() - t_scrape:.2f}s")  # fmt: skip
    status = proc_status(server.pid)
    rss, hwm = status.get("VmRSS", 0) / MIB, status.get("VmHWM", 0) / MIB
    cl = changelog_bytes(stack, dep)
    print(
        f"  MEASURED RSS after ingest+decisions {rss:.0f} MiB, peak {hwm:.0f} MiB; "
        f"usage changelog on disk {cl / MIB:.1f} MiB ({cl / (2 * n):,.0f} B per container)"
    )
    heap_dump(args, server.pid, "decided")
    phases.phase = "idle"
    settled = None
    if args.settle > 0:  # idle, past the worker's next malloc_trim: what it holds between cycles
        time.sleep(args.settle)
        settled = proc_status(server.pid).get("VmRSS", 0) / MIB
        print(f"  MEASURED RSS {args.settle:g}s later, idle (between cycles): {settled:.0f} MiB")
        heap_dump(args, server.pid, "settled")

    burst = min(args.burst, n)
    bursts: list[dict[str, float]] = []
    # the bursts share the time since the history's end (1-2 h: never a chunk in the future,
    # which the worker would dead-letter): one hour for one burst, half an hour each for two
    step = args.step
    chunk_s = max(step, min(3600, (int(time.time()) - 120 - end) // args.bursts) // step * step)
    owed = reported  # decisions the reports in S3 should list before the next burst starts
    for i in range(args.bursts):
        b_start, b_end = end + i * chunk_s, end + (i + 1) * chunk_s
        cycle = f"bench-burst-{i}"
        if i and not args.overlap:
            # an hourly cycle starts once the previous one is applied and reported; back to
            # back, the executor and the reporter of burst i-1 share the worker with burst i
            # (the reporter alone was ~14 % of its samples during a second burst)
            waited = time.monotonic()
            _, listed = reports_in(s3, bucket)
            while listed < owed and time.monotonic() - waited < args.apply_wait:
                time.sleep(1)
                _, listed = reports_in(s3, bucket)
            print(
                f"  burst {i}'s cycle applied and reported ({listed:,} of {owed:,} decisions "
                f"in reports) after {time.monotonic() - waited:.0f}s; next burst"
            )
        before = chunks + [(end + k * chunk_s, end + (k + 1) * chunk_s) for k in range(i)]
        base = in_process_burst(wls[:burst], b_start, b_end, args, templates, before, n)
        phases.phase = f"burst {i + 1}"
        msgs = burst_messages(wls[:burst], b_start, b_end, cycle, np.random.default_rng(5 + i))
        bundles = bundle_burst(msgs) if args.records == "bundled" else None
        gc_before = gc_pauses(metrics_text(port))
        offsets0 = all_end_offsets(stack.kafka)
        pids = [s.pid for s, _ in dep.workers]
        worker_cpu0 = sum(proc_cpu_seconds(pid) for pid in pids)
        busy0, idle0 = host_cpu_seconds()
        t_cpu = time.monotonic()
        with Profiler(args.profile, server.pid, f"burst-{n}-{i}"):
            acked, arrived = asyncio.run(
                decisions_of(dep, stack, cycle, burst, msgs, args.timeout, bundles)
            )
        wall = time.monotonic() - t_cpu
        worker_cpu = sum(proc_cpu_seconds(pid) for pid in pids) - worker_cpu0
        busy1, idle1 = host_cpu_seconds()
        host_busy, host_idle = busy1 - busy0, idle1 - idle0
        written = records_written(offsets0, all_end_offsets(stack.kafka), burst)
        print(
            f"  CPU in the burst ({wall:.1f}s from its first record sent to its last decision "
            f"read): worker{'s' if len(pids) > 1 else ''} {worker_cpu:.1f} CPU-s "
            f"({worker_cpu / wall:.0%} of one core); the host {host_busy:.1f} busy and "
            f"{host_idle:.1f} idle CPU-s over its {os.cpu_count()} cores (the rest of the busy "
            "time: the broker, the other servers and this script)"
        )
        print(f"  records written, burst start to last decision, per workload: {written}")
        owed += len(arrived)
        lat = np.array([arrived[w] - acked[w] for w in arrived if w in acked])
        scraped = metrics_text(port)  # one scrape for both readings
        print(f"  worker's decoded-state cache after the burst: {cache_state(scraped)}")
        gcs = gc_delta(gc_before, gc_pauses(scraped))
        print(f"  worker's garbage collections in the burst: {gcs}")
        if lat.size:
            t0 = min(acked.values())
            acks = np.array(sorted(acked.values())) - t0
            got = np.array(sorted(arrived.values())) - t0
            span = float(got[-1])  # first record acknowledged -> last decision
            # whether the latency is the worker's throughput (decisions spread from the first
            # marker on) or its order (decisions bunched at the end)
            print(
                f"  timeline from the first record acknowledged: records acknowledged until "
                f"+{acks[-1]:.2f}s; decisions arrived first +{got[0]:.2f}s, 10% +"
                f"{np.percentile(got, 10):.2f}s, half +{np.percentile(got, 50):.2f}s, "
                f"last +{got[-1]:.2f}s"
            )
            row = {
                "in_process_ms": base["ms_per_workload"],
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
                "max": float(lat.max()),
                "rate": len(arrived) / span,
                "per_workload_ms": 1000 * span / len(arrived),
            }
            bursts.append(row)
            print(
                f"  MEASURED burst {i + 1}/{args.bursts} of {burst:,} workloads, "
                f"{chunk_s // 60} min chunks "
                f"(load {os.getloadavg()[0]:.1f}): {lat.size:,} decisions, marker ack -> "
                f"decision p50 {row['p50']:.2f}s p99 {row['p99']:.2f}s max {row['max']:.2f}s; "
                f"{row['rate']:,.0f} decisions/s = {row['per_workload_ms']:.1f} ms per workload; "
                f"in-process baseline just before, same burst: {base['ms_per_workload']:.2f} ms "
                f"per workload, CPU {base['cpu_ms_per_workload']:.2f} ms "
                f"(worker {row['per_workload_ms'] / base['ms_per_workload']:.1f}x; "
                f"its decoded-state cache hit {base['cache_hit_rate']:.0%} of reads"
                f"{', started cold as the fleet does not fit it' if base['cold'] else ''})"
            )
    print(f"  MEASURED peak RSS by phase (MiB): {phases.stop()}")
    if args.bursts_only:
        dep.stop_all()
        return {"n": n, "bursts": bursts}
    lat = np.array([b["p99"] for b in bursts])
    problems = log_problems(server, port)
    print(f"  worker log: {problems}")

    probe = []
    for ns, wl in wls[:: max(1, n // 20)][:20]:
        count = usage_count(port, ns, wl)
        if count:
            probe.append((ns, wl, count))
    if probe:
        print(
            f"  probe: {len(probe)} workloads, e.g. {probe[0][2]:,} cpu samples held for "
            f"{probe[0][0]}/{probe[0][1]} (2 containers)"
        )
    rec: dict[str, dict[str, float] | None] = {}
    # The worker so far is a static member (the chart's default: its pod name). 1st restart:
    # a container restarted in the same pod (the same instance id) takes its partitions back at
    # once; 2nd: the same instance id with an empty data dir (a pod replaced under the same name,
    # as a StatefulSet's would be: no wait, the whole changelog replayed); 3rd: a new member (a
    # Deployment's replaced pod, or plain membership) waits until the killed member's session
    # times out.
    # The data dir goes with the pod (emptyDir): the container restarted in its pod finds the
    # killed one's (with the RocksDB table store: its tables, so only the changelog's tail is
    # replayed); a new pod starts with an empty one.
    rss_after: dict[str, float] = {}
    for mode, instance, data in (
        ("static member", "bench-worker-0", str(dep.workdir / "w0")),
        ("same name, empty data", "bench-worker-0", str(dep.workdir / "w-same")),
        ("new member", "", str(dep.workdir / "w-new")),
    ):
        server.kill()
        dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = instance
        dep.extra_env["KUBEFINOPS_DATA_DIR"] = data
        marks, server, port = recover(dep, f"w-{len(rec) + 1}", port, probe, args.timeout)
        rec[mode] = marks
        status = proc_status(server.pid)
        rss_after[mode] = status.get("VmRSS", 0) / MIB
        print(
            f"  MEASURED recovery after SIGKILL ({mode}, session timeout "
            f"{args.session_timeout:g}s): process start -> correct /api/usage "
            f"{show_recovery(marks)}; RSS right after {rss_after[mode]:.0f} MiB, "
            f"peak {status.get('VmHWM', 0) / MIB:.0f} MiB"
        )
    dep.stop_all()
    return {
        "n": n,
        "rss": rss,
        "hwm": hwm,
        "changelog": cl,
        "ingest_s": ingest_s,
        "decisions_per_s": dps,
        "settled": settled,
        "reports": (n_reports, reported, decided),
        "burst_p99": float(lat.max()) if lat.size else None,  # the worst burst's p99
        "recovery": rec,
        "rss_after_restart": rss_after,
        "problems": problems,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,3000")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--step", type=int, default=300, help="seconds between samples")
    ap.add_argument(
        "--live-hours",
        type=int,
        default=6,
        help="hours ingested through the worker (one 6-hour chunk: the changelog then holds two "
        "versions per container, as in production between compactions); older days are "
        "seeded (days*24: no seeding)",
    )
    ap.add_argument("--templates", type=int, default=64, help="distinct seeded histories")
    ap.add_argument(
        "--settle",
        type=float,
        default=65.0,
        help="seconds idle after the decisions before RSS is read again (the default spans "
        "several of the worker's malloc_trim runs, every 15 s by default); 0: skip",
    )
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument(
        "--records",
        choices=("bundled", "workload"),
        default="bundled",
        help="the burst's records bundled per partition, as the collector sends them since "
        "2026-12-03 (default), or one record per workload's chunk and marker, as before",
    )
    ap.add_argument("--bursts", type=int, default=2, help="bursts in a row (new hour each)")
    ap.add_argument(
        "--bursts-only", action="store_true", help="stop after the bursts (no SIGKILL/recovery)"
    )
    ap.add_argument(
        "--heap-dumps",
        action="store_true",
        help="SIGUSR2 the worker after recovery, ingest, decisions and settle (start it with "
        "--worker-env KUBEFINOPS_DEBUG_TRACEMALLOC_FRAMES=N: tracemalloc dumps in its data dir)",
    )
    ap.add_argument(
        "--overlap",
        action="store_true",
        help="bursts back to back (always, before 2026-11-30 16:13 UTC): a burst shares the "
        "worker with the apply and report of the one before; default: wait for its report",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the partitions (with --bursts-only: the figures of "
        "RSS, /metrics and the cache are the first worker's)",
    )
    ap.add_argument(
        "--cross-midnight",
        action="store_true",
        help="end the history 30 min before midnight UTC: the first burst is the hourly cycle "
        "that closes a day for every container (the day's most expensive), the second within "
        "the day",
    )
    ap.add_argument("--profile", metavar="DIR", help="py-spy the worker in each phase into DIR")
    ap.add_argument(
        "--worker-env", action="append", default=[], metavar="K=V", help="extra worker env"
    )
    ap.add_argument("--session-timeout", type=float, default=30.0, help="production default 30")
    ap.add_argument("--apply-wait", type=float, default=120.0, help="max wait for reports")
    ap.add_argument(
        "--autopilot",
        action="store_true",
        help="an autopilot policy and a Git estate of the workloads (one overlay per "
        "namespace): the decisions cycle applies, committed and pushed by the executor",
    )
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    if args.workers > 1 and not args.bursts_only:
        ap.error("--workers > 1 needs --bursts-only (the recovery phase kills one worker)")
    STEP[0] = args.step
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    stack = Stack()
    results = []
    try:
        stack.start()
        s3 = start_s3(stack.workdir)
        stack.servers.append(s3.server)
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(one_size(stack, s3, n, args))
    finally:
        for server in ESTATES:
            server.stop()
        stack.close()
    results = [r for r in results if "recovery" in r]  # --bursts-only stops before these
    if not results:
        return
    print(
        "\nworkloads | RSS after ingest+decisions | peak | changelog | decisions/s | "
        "recovery static / same name, empty data / new member (s) | crashes | reported/decided"
    )
    for r in results:
        rec = r["recovery"]
        times = " / ".join(
            "-" if rec.get(m) is None else f"{rec[m]['answers']:.1f}"
            for m in ("static member", "same name, empty data", "new member")
        )
        dps = "-" if r["decisions_per_s"] is None else f"{r['decisions_per_s']:.0f}"
        print(
            f"{r['n']:,} | {r['rss']:.0f} MiB | {r['hwm']:.0f} MiB | "
            f"{r['changelog'] / MIB:.0f} MiB | {dps} | {times} | "
            f"{r['problems']['agent crashes']} | {r['reports'][1]:,}/{r['reports'][2]:,}"
        )
    if len(results) >= 2:
        a, b = results[-2], results[-1]
        per = (b["rss"] - a["rss"]) / (b["n"] - a["n"])
        if b["n"] < 10_000:
            print(
                f"\nEXTRAPOLATED (linear in workloads from {a['n']} and {b['n']}): RSS at 10,000 "
                f"workloads ~{a['rss'] + per * (10_000 - a['n']):.0f} MiB "
                f"({per * 1024:.1f} KiB per workload)"
            )


if __name__ == "__main__":
    main()
