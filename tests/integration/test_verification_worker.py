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
import time
from pathlib import Path

import pytest

from engine.adapters.gitops import GitOpsWriter
from engine.adapters.mongo import PolicyStore, connect
from engine.core import patches
from engine.core.model import CycleEnd, CycleSummary, Recommendation, Savings, WorkloadSpec
from engine.core.policy import validate_policy
from engine.settings import load_settings
from tests.harness.git_http import GitRemote
from tests.harness.kafka import KafkaInfo
from tests.harness.mongo import MongoInfo
from tests.harness.proc import wait_for
from tests.harness.remote_write import LivePrometheus
from tests.integration.cluster_sim import SimDeployment
from tests.integration.test_verification import NEW, OLD, lowered_memory
from tests.integration.workers import Deployment, consume_all, counter, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]


PROCESSED = "kubefinops_records_processed_total"


def records(kafka: KafkaInfo, topic: str, expect: int, timeout: float = 5.0) -> list[dict]:
    got = asyncio.run(consume_all(kafka, topic, expect=expect, timeout=timeout))
    return [json.loads(v) for _, v in got if v]


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
        marker = CycleEnd(cycle="c-next", spec=spec)
        rec = Recommendation(
            id="rec-next-decrease",
            workload_id=wid,
            namespace="smarthealth",
            kind="Deployment",
            name="patient-api",
            replicas=2,
            containers=change.containers,
            savings=Savings(),
            generated_at=time.time(),
        )
        asyncio.run(
            produce(
                kafka, dep.topic("metrics"), [(wid.encode(), marker.model_dump_json().encode())]
            )
        )
        # The gate reads the spec the aggregator records for the marker; it records it before
        # it sends its own recommendation for the marker's cycle, so that one's arrival says
        # the spec is there (a fixed sleep was a race on a loaded host: "unknown workload").
        wait_for(
            lambda: any(
                r.get("collection_cycle") == "c-next"
                for r in records(kafka, dep.topic("recommendations"), expect=100, timeout=2.0)
            ),
            60,
            "the aggregator's recommendation for the marker (its spec recorded)",
        )
        asyncio.run(
            produce(
                kafka,
                dep.topic("recommendations"),
                [(wid.encode(), rec.model_dump_json().encode())],
            )
        )
        deadline = time.monotonic() + 30
        decided = []
        while time.monotonic() < deadline and not decided:
            decided = [
                d
                for d in records(kafka, dep.topic("decisions"), expect=100, timeout=2.0)
                if d["recommendation_id"] == "rec-next-decrease"
            ]
        assert decided, "the gate never decided the next recommendation"
        assert (decided[0]["action"], decided[0]["guardrail"]) == ("hold", "penalty")
    finally:
        dep.stop_all()
