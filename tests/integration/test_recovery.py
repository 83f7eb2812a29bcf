"""Crash recovery of the usage state: SIGKILL the worker mid-stream, restart it, re-deliver part of
the stream (what an at-least-once replay or a re-collected chunk looks like) — the table must equal
what a clean, single pass produces: same counts, same percentiles, same max."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engine.core.model import RESOURCES, MetricsBatch, WorkloadSpec
from engine.core.usage import ContainerUsage
from tests.harness.kafka import KafkaInfo
from tests.integration.samples import batches, encode, workload
from tests.integration.workers import (
    Deployment,
    counter,
    group_state,
    http_json,
    produce,
    wait_consumed,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIELDS = ("p50", "p90", "p95", "p99", "max", "count", "first_ts", "last_ts")


def ingested(port: int) -> float:
    return counter(port, "kubefinops_samples_ingested_total", resource="cpu")


def usage_replay_starts(log: str, prefix: str) -> list[int]:
    """The changelog offsets Faust's recovery started reading the usage table's partitions at
    (its "Reading Starts At - Active" log table; -1: from the start)."""
    lines = log.split("Reading Starts At - Active", 1)[1].splitlines()
    starts, topic = [], ""
    for line in lines[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            break
        topic = topic if cells[0] == "\u3003" else cells[0]  # ditto mark: the same topic
        if topic == f"{prefix}-usage-changelog":
            starts.append(int(cells[2]))
    return starts


def clean_run(stream: list[MetricsBatch]) -> tuple[dict[str, ContainerUsage], int]:
    """What a worker that ingests ``stream`` once, in order, must hold per container, and the
    stream's CPU samples (what ``ingested`` counts)."""
    clean: dict[str, ContainerUsage] = {}
    for b in stream:
        clean.setdefault(b.container_id, ContainerUsage()).ingest(b, history_seconds=14 * 86400)
    return clean, sum(len(b.samples["cpu"]) for b in stream)


def fleet(
    name: str, count: int, seed: int, pods: int
) -> tuple[list[WorkloadSpec], list[MetricsBatch], dict[str, ContainerUsage], int]:
    """``count`` workloads' six hours of chunks, workload by workload, with :func:`clean_run`'s
    state and CPU samples."""
    rng = np.random.default_rng(seed)
    specs = [workload(f"{name}-{i}") for i in range(count)]
    stream = [b for spec in specs for b in batches(spec, rng, hours=6, pods=pods)[0]]
    return (specs, stream, *clean_run(stream))


def ingest_all(
    kafka: KafkaInfo,
    dep: Deployment,
    port: int,
    stream: list[MetricsBatch],
    total_cpu: int,
    timeout: float,
) -> None:
    """Send ``stream`` and wait until the worker has ingested every CPU sample of it."""
    asyncio.run(produce(kafka, dep.topic("metrics"), encode(stream)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ingested(port) < total_cpu:
        time.sleep(0.1)
    assert ingested(port) == total_cpu


def assert_cpu_as_clean(
    port: int, specs: list[WorkloadSpec], clean: dict[str, ContainerUsage]
) -> None:
    """Each workload's ``app`` container answers with the clean run's CPU sample count and
    P95."""
    for spec in specs:
        status, body = http_json(f"http://127.0.0.1:{port}/api/usage/shop/Deployment/{spec.name}")
        assert status == 200, (spec.name, status)
        want = clean[spec.workload_id + "/app"].summary("cpu")
        assert body["containers"]["app"]["cpu"]["count"] == want.count, spec.name
        assert body["containers"]["app"]["cpu"]["p95"] == pytest.approx(want.p95, rel=1e-12)


@pytest.mark.parametrize("store", ["memory", "rocksdb", "rocksdb-new-pod"])
def test_sigkill_restart_equals_clean_run(kafka: KafkaInfo, tmp_path: Path, store: str):
    """With ``rocksdb`` (the chart's table store) the worker is restarted on the killed one's data
    dir, as a container restarted in its pod (emptyDir): its tables are found on disk and only
    the changelog's tail is replayed — the state must still equal a clean run's.
    ``rocksdb-new-pod``: restarted on an EMPTY data dir (a replaced pod): the changelogs are
    preloaded in bulk into the new databases (tables/preload.py) and Faust's own recovery starts
    where the preload stopped — the state must equal a clean run's all the same."""
    rng = np.random.default_rng(9)
    specs = [workload(f"api-{i}") for i in range(24)]
    stream = []
    for spec in specs:
        stream.extend(batches(spec, rng, hours=24, pods=3)[0])
    rng.shuffle(stream)  # interleave workloads, keep each container's chunks in order below
    stream.sort(key=lambda b: b.start)

    clean, total_cpu = clean_run(stream)

    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_TABLE_STORE": store.split("-")[0],
            "KUBEFINOPS_DATA_DIR": str(tmp_path / "pod-data"),
        },
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server)
        # 60 % of the stream before the kill, the rest after it: on a fast host the worker
        # ingested the whole stream between two polls (the kill then was not mid-stream)
        cut = len(stream) * 3 // 5
        asyncio.run(produce(kafka, dep.topic("metrics"), encode(stream[:cut])))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ingested(port) < total_cpu * 0.3:
            time.sleep(0.05)
        at_kill = ingested(port)
        server.kill()  # SIGKILL: no flush, no commit, no goodbye
        assert 0 < at_kill, "the worker never started ingesting"
        assert at_kill < total_cpu, "killed after the whole stream: not a mid-stream kill"
        asyncio.run(produce(kafka, dep.topic("metrics"), encode(stream[cut:])))

        if store == "rocksdb-new-pod":
            dep.extra_env["KUBEFINOPS_DATA_DIR"] = str(tmp_path / "new-pod-data")
        server, port = dep.start_worker("w1-restarted")
        # Until the worker is ready (tables recovered), /api/usage says 503 — never a 200 with
        # partial or empty state.
        early: list[int] = []
        probe = f"http://127.0.0.1:{port}/api/usage/shop/Deployment/{specs[0].name}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.alive():
            try:
                usage_status = http_json(probe)[0]
                ready_now = http_json(f"http://127.0.0.1:{port}/ready")[1].get("ready")
            except aiohttp.ClientError:  # the web server is not listening yet
                usage_status, ready_now = 0, False
            if ready_now:
                break
            early.append(usage_status)
            time.sleep(0.1)
        assert 503 in early and set(early) <= {0, 503}, early
        dep.wait_ready(port, server=server, timeout=120)
        starts = usage_replay_starts(server.log.read_text(), dep.prefix)
        assert len(starts) == dep.partitions, starts
        if store == "rocksdb":  # the tables were on disk: only the changelog's tail replayed
            assert any(offset > 0 for offset in starts), starts
        elif store == "rocksdb-new-pod":  # nothing on disk: preloaded, Faust starts past it
            assert min(starts) > 0, starts
            preloaded = re.findall(
                r"changelog preload: (\d+) records, [\d.]+ MiB of ([^ ]+)", server.log.read_text()
            )
            usage = f"{dep.prefix}-usage-changelog"
            assert any(usage in topics and int(n) > 0 for n, topics in preloaded), preloaded
        else:  # memory: every start replays the whole changelog
            assert set(starts) == {-1}, starts
        # Re-deliver a third of the stream: duplicates must change nothing.
        asyncio.run(produce(kafka, dep.topic("metrics"), encode(stream[: len(stream) // 3])))

        def state(spec) -> dict | None:
            status, body = http_json(
                f"http://127.0.0.1:{port}/api/usage/shop/Deployment/{spec.name}"
            )
            return body["containers"].get("app") if status == 200 else None

        deadline = time.monotonic() + 120
        pending = specs
        while pending and time.monotonic() < deadline:
            pending = [
                s
                for s in specs
                if (st := state(s)) is None
                or st["cpu"]["count"] != clean[s.workload_id + "/app"].summary("cpu").count
            ]
            time.sleep(1)
        assert not pending, [s.name for s in pending]
        # every record, the re-delivered duplicates included, processed and committed: compare
        wait_consumed(kafka, dep.prefix, dep.topic("metrics"))
        for spec in specs:
            got = state(spec)
            assert got is not None
            want = clean[spec.workload_id + "/app"]
            for res in RESOURCES:
                expected = want.summary(res)
                for name in FIELDS:
                    assert got[res][name] == pytest.approx(getattr(expected, name), rel=1e-12), (
                        spec.name,
                        res,
                        name,
                        f"killed at {at_kill:.0f}/{total_cpu} samples",
                    )
    finally:
        dep.stop_all()


@pytest.mark.parametrize("lost", ["once", "always"])
def test_a_recovery_that_stops_receiving_is_kicked_or_reported_unhealthy(
    kafka: KafkaInfo, tmp_path: Path, lost: str
):
    """Faust's table recovery can stall for good (engine/app.py ``RecoveryWatch``); injected
    here: the recovery's resume of its changelog partitions is lost, so they stay paused
    (``debug_lose_recovery_resume``).  ``once``: the watch's kick resumes and seeks them, the
    recovery completes with every record (each container's count is a clean run's) and the
    worker is healthy.  ``always``: the kick's resume is lost too; ``/health`` turns 503 naming
    the partitions, which is what makes a liveness probe restart the pod."""
    specs, stream, clean, total_cpu = fleet("api", 6, seed=11, pods=1)
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={"KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9"},
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server)
        ingest_all(kafka, dep, port, stream, total_cpu, timeout=60)
        server.stop(timeout=60)  # the state is in the changelog; the next worker recovers it

        dep.extra_env.update(
            {
                "KUBEFINOPS_DEBUG_LOSE_RECOVERY_RESUME": lost,
                "KUBEFINOPS_RECOVERY_STALL_SECONDS": "2",
                "KUBEFINOPS_RECOVERY_STALL_UNHEALTHY_SECONDS": "6",
            }
        )
        server, port = dep.start_worker("w2")
        base = f"http://127.0.0.1:{port}"
        if lost == "once":
            dep.wait_ready(port, server=server, timeout=90)
            log = server.log.read_text()
            assert "debug: recovery resume of" in log, "the fault was not injected"
            assert re.search(r"kicked \S+-usage-changelog\[\d+\]: resumed, sought to 0", log)
            assert_cpu_as_clean(port, specs, clean)
            assert http_json(f"{base}/health")[0] == 200
        else:
            health: tuple[int, dict] = (0, {})
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and server.alive():
                try:
                    health = http_json(f"{base}/health")
                except aiohttp.ClientError:  # not listening yet
                    pass
                if health[0] == 503:
                    break
                time.sleep(0.5)
            assert health[0] == 503, health
            assert health[1]["status"] == "unhealthy"
            assert re.search(
                r"no record for 6s or more from \S+-usage-changelog\[", health[1]["reason"]
            )
            assert http_json(f"{base}/ready")[0] == 503  # and never ready meanwhile
            assert "kicked" in server.log.read_text()
    finally:
        dep.stop_all()


def test_static_member_stays_on_a_crash_and_leaves_on_a_graceful_stop(
    kafka: KafkaInfo, tmp_path: Path
):
    """Static membership (the chart's default: the pod name as group instance id): a SIGKILLed
    member stays in the group (its container restarted in the same pod takes its partitions back
    without a session timeout), and a gracefully stopped one leaves it at once — aiokafka alone
    would not send LeaveGroup for a static member, and a rolling update would then wait out the
    session timeout for every replaced pod."""
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID": "pod-a",
            # far longer than the test: a member seen gone left; it did not time out
            "KUBEFINOPS_BROKER_SESSION_TIMEOUT": "120",
        },
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_stable(1)
        server.kill()
        state, members = asyncio.run(group_state(kafka, dep.prefix))
        assert members == 1, (state, members)  # the crashed static member keeps its place

        server, port = dep.start_worker("w1-restarted", port)  # same pod: same id and address
        dep.wait_stable(1)
        server.stop(timeout=60)  # SIGTERM: a graceful stop
        assert server.proc is not None and server.proc.returncode is not None
        state, members = asyncio.run(group_state(kafka, dep.prefix))
        assert members == 0, (state, members)
    finally:
        dep.stop_all()


def test_a_new_member_preloads_the_changelogs_while_it_waits_for_the_group(
    kafka: KafkaInfo, tmp_path: Path
):
    """A replaced pod (a new static member, an empty data dir) waits for the killed member's
    session before it gets any partition.  Meanwhile it preloads every table partition's
    changelog (tables/store.py ``warm``): the usage preload is logged before the assignment, and
    the state it then serves equals what the killed worker held."""
    specs, stream, clean, total_cpu = fleet("warm", 8, seed=3, pods=2)
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_TABLE_STORE": "rocksdb",
            "KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID": "pod-a",
            "KUBEFINOPS_DATA_DIR": str(tmp_path / "pod-a-data"),
            # the new member waits this long for the killed one: the window the warm-up uses
            "KUBEFINOPS_BROKER_SESSION_TIMEOUT": "20",
        },
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server, timeout=120)
        ingest_all(kafka, dep, port, stream, total_cpu, timeout=90)
        wait_consumed(kafka, dep.prefix, dep.topic("metrics"))
        server.kill()  # lost without a stop: its session holds the partitions

        dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = "pod-b"
        dep.extra_env["KUBEFINOPS_DATA_DIR"] = str(tmp_path / "pod-b-data")
        server, port = dep.start_worker("w2")
        dep.wait_ready(port, server=server, timeout=150)
        log = server.log.read_text()
        usage = f"{dep.prefix}-usage-changelog"
        warmed = re.search(
            rf"changelog preload: [1-9]\d* records, [\d.]+ MiB of [^\n]*{usage}", log
        )
        assigned = log.find("Executing _on_partitions_assigned")
        assert warmed is not None and 0 <= warmed.start() < assigned, log[-3000:]
        assert_cpu_as_clean(port, specs, clean)
    finally:
        dep.stop_all()
