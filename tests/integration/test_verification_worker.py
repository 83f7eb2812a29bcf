"""Verified apply in a real worker: SIGKILL during the watch, restart, one revert, a penalty.

Real Kafka (SCRAM), a real Prometheus fed live kube-state-metrics samples through its
remote-write receiver, the real Git remote and MongoDB.  The change is a real commit pushed by
the GitOps writer; its cycle record goes onto ``<prefix>.cycles`` as the executor would send it.
The worker watches it go live, is SIGKILLed, and the restarted worker resumes the watch from the
table's changelog: the OOM that follows produces exactly one revert commit, the outcome records
on ``<prefix>.verifications``, MongoDB history, and a penalty that makes the gate hold the next
decrease of that workload.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from engine.adapters.gitops import GitOpsWriter
from engine.adapters.mongo import PolicyStore, connect
from engine.core import patches
from engine.core.model import CycleEnd, CycleSummary, MetricsBatch, WorkloadSpec
from engine.core.policy import validate_policy
from engine.settings import load_settings
from tests.harness.git_http import GitRemote
from tests.harness.kafka import KafkaInfo
from tests.harness.mongo import MongoInfo
from tests.harness.proc import wait_for
from tests.harness.remote_write import LivePrometheus
from tests.integration.cluster_sim import SimDeployment
from tests.integration.samples import encode, encode_chunks
from tests.integration.test_verification import NEW, OLD, lowered_memory
from tests.integration.workers import Deployment, consume_all, counter, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]


PROCESSED = "kubefinops_records_processed_total"


def records(kafka: KafkaInfo, topic: str, expect: int, timeout: float = 5.0) -> list[dict]:
    got = asyncio.run(consume_all(kafka, topic, expect=expect, timeout=timeout))
    return [json.loads(v) for _, v in got if v]


def low_usage(spec: WorkloadSpec, hours: int) -> list[MetricsBatch]:
    """Hourly per-container batches of minute samples for the spec's first container: cpu
    0.05-0.1 cores, memory 100-150 MiB, far below its requests."""
    rng = np.random.default_rng(11)
    end = math.floor(time.time() / 60) * 60 - 120
    out = []
    for h in range(hours, 0, -1):
        t0, t1 = end - h * 3600, end - (h - 1) * 3600
        ts = np.arange(t0 + 60, t1 + 1, 60, dtype=float).tolist()
        cpu = rng.uniform(0.05, 0.1, len(ts)).tolist()
        mem = (rng.uniform(100, 150, len(ts)) * 2**20).tolist()
        out.append(
            MetricsBatch(
                namespace=spec.namespace,
                kind=spec.kind,
                workload=spec.name,
                container=spec.containers[0].name,
                start=t0,
                end=t1,
                samples={
                    "cpu": list(zip(ts, cpu, strict=True)),
                    "memory": list(zip(ts, mem, strict=True)),
                },
            )
        )
    return out


def wait_phase(kafka: KafkaInfo, topic: str, phase: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = records(kafka, topic, expect=100, timeout=2.0)
        if any(r.get("phase") == phase for r in out):
            return out
    raise AssertionError(f"no {phase!r} record on {topic} after {timeout}s")


def test_sigkill_during_the_watch_resumes_it_and_reverts_once(
    kafka: KafkaInfo,
    mongo: MongoInfo,
    prometheus_rw: LivePrometheus,
    git_remote: GitRemote,
    tmp_path: Path,
) -> None:
    remote = git_remote.fresh("verify-worker")
    db = f"verify{int(time.time())}"
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": prometheus_rw.url,
            "KUBEFINOPS_COLLECT_ON_START": "false",
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": db,
            "KUBEFINOPS_GIT_REMOTE_URL": remote.url,
            "KUBEFINOPS_GIT_USERNAME": remote.username,
            "KUBEFINOPS_GIT_TOKEN": remote.token,
            "KUBEFINOPS_GIT_WORKDIR": str(tmp_path / "clone"),
            "KUBEFINOPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_VERIFICATION_INTERVAL_SECONDS": "1",
        },
    )
    settings = load_settings(
        mongodb_uri=mongo.uri,
        mongodb_database=db,
        kafka_security_protocol="PLAINTEXT",
        git_remote_url=remote.url,
        git_token=remote.token,
        git_username=remote.username,
        git_workdir=tmp_path / "test-clone",
        data_dir=tmp_path,
    )
    policy = {
        "id": "p",
        "mode": "autopilot",
        "selectors": {"namespaces": ["smarthealth"]},
        # a long window: the watch is still running when the worker is killed
        "verification": {"deadline": "2m", "window": "10m", "penalty": "1d"},
    }

    async def put_policy() -> None:
        await PolicyStore(connect(settings), validate=validate_policy).put(policy, by="test")

    asyncio.run(put_policy())
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)
    change = lowered_memory()
    execution = asyncio.run(GitOpsWriter(settings).apply_cycle("c-worker", [change]))
    assert execution.outcome == "pushed", execution.detail
    after_change = remote.log()
    summary = CycleSummary(cycle="c-worker", decisions=[change], execution=execution)
    topic = dep.topic("verifications")
    wid = change.workload_id
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server, timeout=150)  # a loaded CI machine: Kafka group joins
        asyncio.run(
            produce(kafka, dep.topic("cycles"), [(b"c-worker", summary.model_dump_json().encode())])
        )
        wait_phase(kafka, topic, "pending", 60)
        sim.rollout(NEW)
        wait_phase(kafka, topic, "live", 60)
        server.kill()  # SIGKILL during the watch: no flush, no goodbye

        server, port = dep.start_worker("w2")
        dep.wait_ready(port, server=server, timeout=150)
        sim.oom(0)
        out = wait_phase(kafka, topic, "reverted", 90)
        # three more ticks of the restarted worker handled after the revert: nothing more may
        # happen (counted, not slept: on a loaded host a sleep may see none)
        handled = counter(port, PROCESSED, agent="verifier")
        wait_for(
            lambda: counter(port, PROCESSED, agent="verifier") >= handled + 3,
            60,
            "three more verifier ticks after the revert",
        )
        out = records(kafka, topic, expect=100, timeout=3.0)

        phases = [r["phase"] for r in out if r["workload_id"] == wid]
        assert phases.count("pending") == 1, phases  # the redelivered start changed nothing
        assert phases.count("live") == 1, phases  # resumed, not restarted
        assert phases.count("reverted") == 1, phases
        reverted = next(r for r in out if r["phase"] == "reverted")
        assert reverted["cause"] == "oom" and reverted["revert_sha"]

        log = remote.log()
        assert len(log) == len(after_change) + 1, "exactly one revert commit"
        trailers = patches.parse_trailers(remote.log(fmt="%B")[0])
        assert trailers["Kubefinops-Reverts"] == [execution.commit_sha]
        assert trailers["Kubefinops-Verification"] == [reverted["id"]]
        assert any("OOMKilled" in e for e in trailers["Kubefinops-Evidence"])

        from pymongo import MongoClient

        with MongoClient(mongo.uri) as client:
            doc = client[db]["verifications"].find_one({"_id": reverted["id"]})
        assert doc is not None and doc["phase"] == "reverted"

        # The penalty: the next decrease of the workload is held by the gate.
        spec = WorkloadSpec(
            namespace="smarthealth",
            kind="Deployment",
            name="patient-api",
            replicas=2,
            containers=[change.containers[0].current],
            observed_at=time.time(),
        )
        # Usage far below the requests (memory 100-150 MiB against 512 MiB), then the cycle-end:
        # the aggregator recommends a decrease and the gate decides it in the same pass.
        usage = low_usage(spec, hours=8)
        marker = CycleEnd(cycle="c-next", spec=spec)
        asyncio.run(
            produce(kafka, dep.topic("metrics"), [*encode_chunks(usage), *encode([marker])])
        )
        deadline = time.monotonic() + 60
        decided = []
        while time.monotonic() < deadline and not decided:
            decided = [
                d
                for d in records(kafka, dep.topic("decisions"), expect=100, timeout=2.0)
                if d.get("collection_cycle") == "c-next"
            ]
        assert decided, "the gate never decided the next recommendation"
        assert (decided[0]["action"], decided[0]["guardrail"]) == ("hold", "penalty"), decided
        # what was held: the decreases the aggregator's recommendation made (dropped here)
        assert decided[0]["reason"].startswith("penalty: a change regressed; no decrease until")
        (rec,) = [
            r
            for r in records(kafka, dep.topic("recommendations"), expect=100, timeout=2.0)
            if r["id"] == decided[0]["recommendation_id"]
        ]
        [target] = rec["containers"]
        assert target["memory_request"] < target["current"]["requests"]["memory"]
    finally:
        dep.stop_all()
