"""Shared helpers of the pipeline benchmarks (not tests): servers, batches, worker observation.

Everything binds to 127.0.0.1; every process started here is stopped by PID (``Stack.close``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.kafka import KafkaInfo, fetch_libs, start_kafka  # noqa: E402
from tests.harness.mongo import start_secantus  # noqa: E402
from tests.harness.proc import Server  # noqa: E402
from tests.integration.workers import Deployment  # noqa: E402

MINUTE = 60
DAY = 86_400
_INGESTED = re.compile(r"^kubefinops_samples_ingested_total\{[^}]*\}\s+([0-9.e+]+)$", re.M)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Stack:
    """A private Kafka (SASL_PLAINTEXT + SCRAM-SHA-256) and SecantusDB, in a temp dir."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kfo-bench-")))
    kafka: KafkaInfo | None = None
    servers: list[Server] = field(default_factory=list)
    mongo_uri: str = ""
    deployments: list[Deployment] = field(default_factory=list)

    def start(self) -> Stack:
        """Start Kafka then SecantusDB; if anything fails, stop what did start, then raise.

        SIGTERM (``timeout``, ``kill``) becomes ``SystemExit`` from here on, so the benchmark's
        ``finally`` stops every server it started then too: Python's default for SIGTERM is to
        die on the spot, which left the Kafka JVM, SecantusDB and moto running."""
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Stack:
        started = time.monotonic()
        libs = fetch_libs()
        for attempt in range(3):
            try:
                # tests.harness.kafka draws a random cluster id that can start with "-", which
                # StorageTool's argparse then reads as an option: retry in a fresh directory.
                info, server = start_kafka(self.workdir / f"kafka{attempt}", libs)
                break
            except RuntimeError as exc:
                if "format failed" not in str(exc) or attempt == 2:
                    raise
                print(f"# kafka storage format failed (attempt {attempt + 1}); retrying")
        self.kafka = info
        self.servers.append(server)
        (self.workdir / "mongo").mkdir(parents=True, exist_ok=True)
        mongo, port = start_secantus(str(self.workdir / "mongo"), str(self.workdir))
        self.servers.append(mongo)
        self.mongo_uri = f"mongodb://127.0.0.1:{port}/"
        print(
            f"# kafka {info.bootstrap} (SCRAM-SHA-256) + secantusdb up in "
            f"{time.monotonic() - started:.1f}s; workdir {self.workdir}"
        )
        return self

    def deployment(self, partitions: int = 4, **env: str) -> Deployment:
        assert self.kafka is not None
        dep = Deployment(
            kafka=self.kafka,
            workdir=self.workdir / f"dep{len(self.deployments)}",
            partitions=partitions,
            extra_env={
                "KUBEFINOPS_MONGODB_URI": self.mongo_uri,
                "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",  # no collection here
                "KUBEFINOPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                "KUBEFINOPS_LOG_LEVEL": "warning",
                **env,
            },
        )
        self.deployments.append(dep)
        return dep

    def close(self) -> None:
        """Stop every process this stack started (idempotent, whatever failed before).  A SIGTERM
        while stopping is ignored: it would end the stopping half-way (a JVM left running)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for dep in self.deployments:
            try:
                dep.stop_all()
            except Exception as exc:  # keep stopping the rest
                print(f"# stopping a deployment failed: {exc}")
        self.deployments.clear()
        for server in reversed(self.servers):
            try:
                server.stop(timeout=20)
            except Exception as exc:
                print(f"# stopping {server.name} failed: {exc}")
        self.servers.clear()
        if not os.environ.get("KFO_BENCH_KEEP"):  # Kafka logs of a run are hundreds of MB
            shutil.rmtree(self.workdir, ignore_errors=True)


def get_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def metrics_url(port: int, *names: str) -> str:
    """A worker's /metrics; only the series ``names`` when given (its ``name[]`` parameter)."""
    query = "&".join(f"name[]={name}" for name in names)
    return f"http://127.0.0.1:{port}/metrics" + (f"?{query}" if query else "")


def ingested(port: int) -> float:
    """Sum of ``kubefinops_samples_ingested_total`` over resources on a worker's /metrics.

    Only that counter (``name[]``): the whole exposition, polled every 0.1 s, was 2-3 % of the
    worker's samples during an ingest run (py-spy, 2026-12-02) — the benchmark slowing what it
    measures, where Prometheus scrapes every 15-30 s (no measurable effect on the rate, though:
    docs/benchmarks.md "Ingest: the record's size").  A worker without the parameter answers
    everything, which this reads the same."""
    text = get_text(metrics_url(port, "kubefinops_samples_ingested_total"))
    return sum(float(v) for v in _INGESTED.findall(text))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole host so far, every core summed (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def worker_pid(server: Server) -> int:
    """The Python worker itself: ``Server`` starts it directly (no shell), so its own PID."""
    return server.pid


@dataclass
class Progress:
    first_at: float | None = None  # monotonic time the counter first moved
    done_at: float | None = None
    last: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)


def wait_ingested(
    port: int | Sequence[int],
    expect: float,
    timeout: float,
    pid: int | None = None,
    poll: float = 0.1,
) -> tuple[Progress, int]:
    """Poll /metrics until ``expect`` samples were ingested (summed over the workers when
    ``port`` is several); also track peak RSS."""
    prog, peak = Progress(), 0
    ports = [port] if isinstance(port, int) else list(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = sum(ingested(p) for p in ports)
        except OSError:
            value = prog.last
        now = time.monotonic()
        if pid is not None:
            peak = max(peak, proc_status(pid).get("VmHWM", 0))
        if value > 0 and prog.first_at is None:
            prog.first_at = now
        prog.last = value
        prog.samples.append((now, value))
        if value >= expect:
            prog.done_at = now
            return prog, peak
        time.sleep(poll)
    return prog, peak


# ---- batches following the collector contract: one per container per chunk ----------------


def container_names(n: int, per_workload: int = 2) -> list[tuple[str, str, str]]:
    """(namespace, workload, container) for ``n`` containers, ``per_workload`` per workload."""
    out = []
    for i in range(n):
        w = i // per_workload
        out.append((f"ns{w % 20}", f"svc-{w}", ("app", "sidecar", "proxy")[i % per_workload]))
    return out


def chunk_plan(chunks: int, chunk_seconds: int, now: float | None = None) -> list[tuple[int, int]]:
    """``chunks`` consecutive ``(start, end]`` chunks ending 2 minutes before now."""
    now = time.time() if now is None else now
    end = int(math.floor((now - 120) / MINUTE) * MINUTE)
    start = end - chunks * chunk_seconds
    return [(start + k * chunk_seconds, start + (k + 1) * chunk_seconds) for k in range(chunks)]


def encode_batch(
    rng: np.random.Generator,
    ns: str,
    wl: str,
    cont: str,
    start: int,
    end: int,
    pods: int = 1,
    step: int = MINUTE,
) -> tuple[bytes, bytes, int]:
    """A MetricsBatch (wire JSON): samples every ``step`` s of ``pods`` pods in ``(start, end]``.

    Built as a plain dict (the wire format of ``engine.core.model.MetricsBatch``) because pydantic
    serialisation of millions of samples would dominate the benchmark's set-up time.
    """
    ts = np.arange(start + step, end + 1, step, dtype=float)
    n = ts.size * pods
    cpu = np.round(rng.lognormal(math.log(0.2), 0.6, n), 5)
    mem = np.round(rng.uniform(2e8, 6e8, n))
    tl = np.tile(ts, pods).tolist()
    doc = {
        "namespace": ns,
        "kind": "Deployment",
        "workload": wl,
        "container": cont,
        "start": float(start),
        "end": float(end),
        "samples": {
            "cpu": [list(p) for p in zip(tl, cpu.tolist(), strict=True)],
            "memory": [list(p) for p in zip(tl, mem.tolist(), strict=True)],
        },
        "source": "prometheus",
        "type": "usage",
    }
    key = f"{ns}/Deployment/{wl}".encode()
    return key, json.dumps(doc, separators=(",", ":")).encode(), 2 * n


def encode_chunk(
    rng: np.random.Generator,
    ns: str,
    wl: str,
    conts: list[str],
    start: int,
    end: int,
    pods: int = 1,
    step: int = MINUTE,
) -> tuple[bytes, bytes, int]:
    """A MetricsChunk (wire JSON, what the collector sends): every container of one workload,
    ``pods`` rows each, on the grid ``start + step, ..., end`` — the same values
    :func:`encode_batch` draws for each container."""
    n = (end - start) // step
    containers = {}
    for cont in conts:
        cpu = np.round(rng.lognormal(math.log(0.2), 0.6, n * pods), 5).reshape(pods, n)
        mem = np.round(rng.uniform(2e8, 6e8, n * pods)).reshape(pods, n)
        containers[cont] = {"cpu": cpu, "memory": mem}
    doc = {
        "type": "chunk",
        "namespace": ns,
        "kind": "Deployment",
        "workload": wl,
        "start": float(start),
        "end": float(end),
        "t0": float(start + step),
        "step": float(step),
        "n": n,
        "containers": containers,
        "source": "prometheus",
    }
    key = f"{ns}/Deployment/{wl}".encode()
    return key, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), 2 * n * pods * len(conts)


def build_messages(
    containers: int,
    chunks: int,
    chunk_seconds: int,
    pods: int = 1,
    seed: int = 7,
    fmt: str = "batch",
) -> Iterator[list[tuple[bytes, bytes]]]:
    """Messages in time order, one list per chunk (every container's chunk k, then k+1):
    ``fmt`` "batch", one MetricsBatch per container, or "chunk", one columnar MetricsChunk per
    workload (the collector's record since issue 11) — the same samples either way.

    A generator so a large backfill is never held in memory at once."""
    rng = np.random.default_rng(seed)
    names = container_names(containers)
    workloads: dict[tuple[str, str], list[str]] = {}
    for ns, wl, cont in names:
        workloads.setdefault((ns, wl), []).append(cont)
    for start, end in chunk_plan(chunks, chunk_seconds):
        if fmt == "chunk":
            yield [
                encode_chunk(rng, ns, wl, conts, start, end, pods)[:2]
                for (ns, wl), conts in workloads.items()
            ]
        else:
            yield [encode_batch(rng, ns, wl, cont, start, end, pods)[:2] for ns, wl, cont in names]


def samples_per_message(chunk_seconds: int, pods: int = 1) -> int:
    return 2 * pods * (chunk_seconds // MINUTE)


def iter_chunked(msgs: list[tuple[bytes, bytes]], size: int) -> Iterator[list[tuple[bytes, bytes]]]:
    for i in range(0, len(msgs), size):
        yield msgs[i : i + size]


async def fast_producer(info: KafkaInfo) -> Any:
    """A started producer for bulk sends: acks=all, 5 ms linger, 1 MiB batches, no compression."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **info.client_kwargs(),
        acks="all",
        linger_ms=5,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    await producer.start()
    return producer


async def produce_fast(
    info: KafkaInfo, topic: str, parts: Iterator[list[tuple[bytes, bytes]]]
) -> tuple[int, float]:
    """Send everything with pipelined ``send`` (acks=all, no compression): (messages, seconds).

    Includes the time to build the messages (the generator runs inside the timed loop)."""
    producer = await fast_producer(info)
    try:
        started = time.monotonic()
        n = 0
        for whole in parts:
            for part in iter_chunked(whole, 500):
                futures = [await producer.send(topic, value=v, key=k) for k, v in part]
                await asyncio.gather(*futures)
                n += len(part)
        return n, time.monotonic() - started
    finally:
        await producer.stop()


async def consume_count(
    info: KafkaInfo, topic: str, expect: int, timeout: float = 120.0
) -> tuple[int, float, dict[bytes, bytes]]:
    """Trivial consumer from the beginning: (records, seconds, latest value per key)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **info.client_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    latest: dict[bytes, bytes] = {}
    n = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        started = time.monotonic()
        deadline = started + timeout
        while n < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                n += len(records)
                for r in records:
                    if r.key is not None and r.value is not None:
                        latest[r.key] = r.value
        return n, time.monotonic() - started, latest
    finally:
        await consumer.stop()


def end_offsets(info: KafkaInfo, topic: str) -> int:
    """One topic's end offset, summed over its partitions (0 for a topic not there)."""
    return topic_end_offsets(info, [topic]).get(topic, 0)


def all_end_offsets(info: KafkaInfo) -> dict[str, int]:
    """Every topic's end offset (summed over its partitions): the records written to each, for
    a before/after difference."""
    return topic_end_offsets(info)


def topic_end_offsets(info: KafkaInfo, topics: list[str] | None = None) -> dict[str, int]:
    """End offsets summed per topic, of ``topics`` or of every topic but Kafka's own."""

    async def go() -> dict[str, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(**info.client_kwargs(), group_id=None)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            names = topics if topics is not None else await consumer.topics()
            tps = [
                TopicPartition(t, p)
                for t in names
                if not t.startswith("__")
                for p in consumer.partitions_for_topic(t) or set()
            ]
            out: dict[str, int] = {}
            for tp, end in (await consumer.end_offsets(tps)).items():
                out[tp.topic] = out.get(tp.topic, 0) + int(end)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def state_bytes(latest: dict[bytes, bytes]) -> dict[str, Any]:
    """Bytes per container-resource from the usage changelog's latest values."""
    per_res: dict[str, list[int]] = {"cpu": [], "memory": []}
    whole: list[int] = []
    for raw in latest.values():
        doc = json.loads(raw)
        whole.append(len(raw))
        for r in per_res:
            if isinstance(doc, dict) and r in doc:
                per_res[r].append(len(json.dumps(doc[r], separators=(",", ":"))))
    return {
        "keys": len(whole),
        "value_bytes": np.array(whole),
        **{r: np.array(v) for r, v in per_res.items()},
    }


# ---- seeded state: older days written straight to the usage changelog ----------------------


def usage_changelog(app_id: str) -> str:
    """The usage table's changelog topic (Faust names it ``<app id>-<table>-changelog``)."""
    return f"{app_id}-usage-changelog"


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the producers' default partitioner (murmur2, as Java's) picks for ``key``:
    where the worker keeps that workload's table state (co-partitioned with the metrics)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def usage_templates(
    chunks: list[tuple[int, int]], step: int, count: int, seed: int = 3
) -> list[bytes]:
    """``count`` usage-table values, each a container's state after ``chunks``, built with the
    worker's own code path (validate, ``ContainerUsage.ingest``, ``to_dict``) and encoded with
    the table's Faust JSON codec — byte for byte what the aggregator would have written."""
    from faust.serializers import codecs

    from engine.core.model import parse_metrics_record
    from engine.core.samples import validate_batch
    from engine.core.usage import ContainerUsage
    from engine.settings import Settings

    fields = Settings.model_fields  # the worker's defaults (no broker credentials needed)
    history_seconds = int(fields["history_days"].default) * DAY
    window_seconds = int(fields["usage_window_seconds"].default)
    rng = np.random.default_rng(seed)
    now = time.time()
    out = []
    for i in range(count):
        usage = ContainerUsage()
        for start, end in chunks:
            _, raw, _ = encode_batch(rng, "ns0", f"tpl-{i}", "app", start, end, step=step)
            checked = validate_batch(parse_metrics_record(raw), now=now)  # type: ignore[arg-type]
            usage.ingest(
                checked.batch,
                arrays=checked.arrays,
                history_seconds=history_seconds,
                window_seconds=window_seconds,
            )
        out.append(bytes(codecs.dumps("json", usage.to_dict())))
    return out


async def seed_usage_changelog(
    info: KafkaInfo,
    app_id: str,
    partitions: int,
    containers: list[tuple[str, str, str]],
    templates: list[bytes],
    config: dict[str, str],
) -> tuple[int, float]:
    """Create the usage changelog (compacted, with the table's topic config) and write one value
    per container (template ``i % len(templates)``) to its workload's partition: the state a
    worker would hold after ingesting the templates' days.  Returns (bytes written, seconds)."""
    from faust.serializers import codecs

    from tests.harness.kafka import acreate_topics

    topic = usage_changelog(app_id)
    await acreate_topics(info, [topic], partitions, {"cleanup.policy": "compact", **config}, 30.0)
    producer = await fast_producer(info)
    started, written = time.monotonic(), 0
    try:
        pending = []
        for i, (ns, wl, cont) in enumerate(containers):
            value = templates[i % len(templates)]
            key = bytes(codecs.dumps("json", f"{ns}/Deployment/{wl}/{cont}"))
            part = key_partition(f"{ns}/Deployment/{wl}".encode(), partitions)
            pending.append(await producer.send(topic, value=value, key=key, partition=part))
            written += len(value) + len(key)
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return written, time.monotonic() - started
    finally:
        await producer.stop()


def serve_estate(
    root: Path, manifests: dict[str, list[str]], repo: str = "estate"
) -> tuple[Server, str, str]:
    """A GitOps estate for the benches: ``manifests`` (namespace -> its Deployments' YAML) as
    ``base/<ns>`` and one overlay per namespace, ``overlays/<ns>``, with the bot's empty
    ``kubefinops`` component; committed, cloned bare under ``root/repos/<repo>.git`` and served
    by the tests' smart-HTTP remote with basic auth (tests/harness/git_http.py).  Returns the
    server (stop it), the remote URL and its token."""
    import subprocess

    from tests.harness.git_http import TOKEN_ENV
    from tests.harness.proc import free_port, port_open, wait_until

    work = root / "src"
    for ns, docs in manifests.items():
        base = work / "base" / ns
        base.mkdir(parents=True)
        (base / "deployments.yaml").write_text("---\n".join(docs))
        (base / "kustomization.yaml").write_text("resources:\n  - deployments.yaml\n")
        overlay = work / "overlays" / ns
        (overlay / "kubefinops").mkdir(parents=True)
        (overlay / "kustomization.yaml").write_text(
            f"namespace: {ns}\nresources:\n  - ../../base/{ns}\ncomponents:\n  - kubefinops\n"
        )
        (overlay / "kubefinops" / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches: []\n"
        )
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "estate"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=env)
    bare = root / "repos" / f"{repo}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["git", "config", "http.receivepack", "true"], cwd=bare, check=True)
    port, token = free_port(), "bench-git-token"
    server = Server(
        "git-http",
        [sys.executable, "-m", "tests.harness.git_http", "--root", str(root / "repos"),
         "--port", str(port), "--user", "kubefinops-bot"],
        log=root / "git-http.log",
        env={TOKEN_ENV: token},
        cwd=REPO,
    ).start()  # fmt: skip
    wait_until(lambda: port_open(port), 15, "git http server", server.log)
    return server, f"http://127.0.0.1:{port}/{repo}.git", token
