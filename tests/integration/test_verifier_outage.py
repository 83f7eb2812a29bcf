"""The verifier while Prometheus is down: its queue drains, nothing is lost, and the watch goes on
when Prometheus is back.

A real worker (Kafka with SCRAM) watches five pushed changes against a real Prometheus fed live
kube-state-metrics samples.  Prometheus is stopped: the verifier's queue must still be consumed
to the end (ticks acknowledged, the watch re-scheduled with backoff in its durable table) — it
used to spend each tick on every watch's retries, longer than the tick interval, so the lag
never reached 0.  Prometheus restarted on the same address, the rollout happens, and the watch
goes live: one ``pending``, one ``live``, no dead letter.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path

import pytest

from engine.core.model import CycleSummary, Execution
from tests.harness.kafka import KafkaInfo
from tests.harness.proc import wait_for
from tests.harness.prometheus import start_prometheus
from tests.harness.remote_write import start_live_prometheus
from tests.integration.cluster_sim import SimDeployment
from tests.integration.test_verification import NEW, OLD, lowered_memory
from tests.integration.workers import Deployment, consume_all, counter, produce, wait_consumed

pytestmark = pytest.mark.integration


def records(kafka: KafkaInfo, topic: str) -> list[dict]:
    got = asyncio.run(consume_all(kafka, topic, expect=1000, timeout=2.0))
    return [json.loads(v) for _, v in got if v]


FAILURES = "kubefinops_cycle_failures_total"


def wait_phase(kafka: KafkaInfo, topic: str, phase: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = records(kafka, topic)
        if any(r.get("phase") == phase for r in out):
            return out
    raise AssertionError(f"no {phase!r} record on {topic} after {timeout}s")


def test_prometheus_down_the_queue_drains_and_the_watch_resumes(
    kafka: KafkaInfo, tmp_path: Path
) -> None:
    prom = start_live_prometheus(tmp_path / "prometheus")
    port = urllib.parse.urlsplit(prom.url).port
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": prom.url,
            "KUBEFINOPS_COLLECT_ON_START": "false",
            # ticks every 2 s: shorter than one failed check (the client's four attempts)
            "KUBEFINOPS_VERIFICATION_INTERVAL_SECONDS": "2",
        },
    )
    sim = SimDeployment(prom.writer)
    sim.start(OLD)
    change = lowered_memory()
    # Four more watches, of workloads Prometheus has no series for (they stay pending): with
    # the outage, each check of each watch costs the client's retries.
    others = [
        change.model_copy(
            update={
                "id": f"dec-ghost-{i}",
                "name": f"ghost-{i}",
                "workload_id": f"smarthealth/Deployment/ghost-{i}",
            }
        )
        for i in range(4)
    ]
    decisions = [change, *others]
    execution = Execution(
        cycle="c-outage",
        workload_ids=[d.workload_id for d in decisions],
        decision_ids=[d.id for d in decisions],
        outcome="pushed",
        commit_sha="a1b2c3d4" * 5,
        executed_at=time.time(),
    )
    summary = CycleSummary(cycle="c-outage", decisions=decisions, execution=execution)
    verifications, queue = dep.topic("verifications"), dep.topic("verification-queue")
    servers = [prom.server]
    try:
        server, wport = dep.start_worker("w1")
        dep.wait_ready(wport, server=server, timeout=150)
        asyncio.run(
            produce(kafka, dep.topic("cycles"), [(b"c-outage", summary.model_dump_json().encode())])
        )
        wait_phase(kafka, verifications, "pending", 60)
        assert [r["phase"] for r in records(kafka, verifications)] == ["pending"] * 5

        prom.server.stop()
        # two rounds of failed checks of the five watches (the second after the backoff): the
        # outage was met by more than one tick, and counted
        wait_for(
            lambda: counter(wport, FAILURES, agent="verifier") >= 2 * len(decisions),
            90,
            "two rounds of failed checks of every watch while Prometheus is down",
        )
        wait_consumed(kafka, dep.prefix, queue, timeout=30)
        assert server.alive()

        restarted, _ = start_prometheus(
            tmp_path / "prometheus" / "tsdb",
            tmp_path / "prometheus",
            port=port,
            extra_args=["--web.enable-remote-write-receiver"],
        )
        servers.append(restarted)
        sim.rollout(NEW)
        out = wait_phase(kafka, verifications, "live", 120)
        phases = [r["phase"] for r in out if r["workload_id"] == change.workload_id]
        assert phases == ["pending", "live"], phases
        letters = [r for r in records(kafka, dep.topic("deadletter")) if r.get("agent")]
        assert not [r for r in letters if r["agent"] == "verifier"], letters
        wait_consumed(kafka, dep.prefix, queue, timeout=60)
    finally:
        dep.stop_all()
        for s in servers:
            s.stop()
