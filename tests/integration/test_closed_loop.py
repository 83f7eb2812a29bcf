"""The closed loop with every real part: Prometheus -> worker (Kafka/SCRAM) -> MongoDB policy ->
one commit on a Git remote over HTTP with basic auth -> reports in S3.

* The policy is stored in MongoDB before the worker starts: the start-up reconcile publishes it,
  so it governs the first cycle (a missed publish heals itself).
* One cycle -> exactly one bot commit whose patches carry the decided requests.
* A second cycle changes nothing in Git (cooldown / idempotency) but is still reported.
* With S3 stopped, cycles go on; the report arrives once S3 is back (the cycles topic is the
  durable queue). The token appears in no report object.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.mongo import PolicyStore, connect
from engine.core.policy import validate_policy
from engine.settings import load_settings
from tests.harness.git_http import GitRemote
from tests.harness.proc import wait_for
from tests.harness.prometheus import WorkloadDef, generate, promtool_backfill, start_prometheus
from tests.harness.s3 import S3Info
from tests.integration.workers import Deployment, consume_all, http_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "closed-loop-api-token"
# The SmartHealth workloads of smarthealth-gitops, with the container names of its manifests.
SMARTHEALTH = (
    WorkloadDef(
        "smarthealth",
        "Deployment",
        "billing",
        2,
        (("app", "ghcr.io/smarthealth/billing:3.2", 0.08, 180, 0.75, 768),),
        {"app": "billing"},
    ),
    WorkloadDef(
        "smarthealth",
        "Deployment",
        "frontend",
        2,
        (("nginx", "nginx:1.27", 0.01, 30, 0.2, 256),),
        {"app": "frontend"},
    ),
    WorkloadDef(
        "smarthealth",
        "StatefulSet",
        "patients-db",
        1,
        (("postgres", "postgres:16", 0.3, 900, 1.0, 2048),),
        {"app": "patients-db"},
    ),
)


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    """Eight hours of SmartHealth usage ending now, so kube-state-metrics answers at 'now'."""
    work = tmp_path_factory.mktemp("live-prom")
    end = math.floor(time.time() / 60) * 60
    source = work / "cluster.om"
    with source.open("w") as out:
        generate(end - 8 * 3600, end, seed=11, out=out, workloads=SMARTHEALTH)
    promtool_backfill(source, work / "tsdb")
    server, url = start_prometheus(work / "tsdb", work)
    yield url, float(end)
    server.stop()


def s3_objects(s3: S3Info, bucket: str) -> dict[str, bytes]:
    client = s3.boto3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    except client.exceptions.NoSuchBucket:
        return {}
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_closed_loop(
    kafka, mongo, s3_outage: S3Info, git_remote: GitRemote, live_prometheus, tmp_path: Path
):
    prom_url, _ = live_prometheus
    remote = git_remote.fresh("closed-loop")
    seeded = remote.log()
    bucket = "kubefinops-reports"
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": prom_url,
            "KUBEFINOPS_SCRAPE_LAG_SECONDS": "0",
            "KUBEFINOPS_HISTORY_DAYS": "1",
            "KUBEFINOPS_COLLECT_ON_START": "false",
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": (dep_db := f"loop{int(time.time())}"),
            "KUBEFINOPS_API_TOKEN": TOKEN,
            "KUBEFINOPS_GIT_REMOTE_URL": remote.url,
            "KUBEFINOPS_GIT_USERNAME": remote.username,
            "KUBEFINOPS_GIT_TOKEN": remote.token,
            "KUBEFINOPS_GIT_WORKDIR": str(tmp_path / "clone"),
            "KUBEFINOPS_S3_ENDPOINT_URL": s3_outage.endpoint_url,
            "KUBEFINOPS_S3_ACCESS_KEY": s3_outage.access_key,
            "KUBEFINOPS_S3_SECRET_KEY": s3_outage.secret_key,
            "KUBEFINOPS_S3_BUCKET": bucket,
        },
    )
    # The system of record first: the worker's start-up reconcile must publish this policy.
    settings = load_settings(
        mongodb_uri=mongo.uri, mongodb_database=dep_db, kafka_security_protocol="PLAINTEXT"
    )
    import asyncio

    async def put_policy() -> None:
        store = PolicyStore(connect(settings), validate=validate_policy)
        await store.put(
            {
                "id": "smarthealth-autopilot",
                "name": "autopilot",
                "selectors": {"namespaces": ["smarthealth"]},
                "mode": "autopilot",
                "priority": 5,
            },
            by="test",
        )

    asyncio.run(put_policy())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = None
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server)
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: http_json(f"{base}/api/policies", headers=auth)[1].get("policies"),
            60,
            "the reconciled policy in the global table",
        )

        assert http_json(f"{base}/api/cycles", "POST")[0] == 401
        assert http_json(f"{base}/api/cycles", "POST", headers=auth)[0] == 202

        commits = wait_for(
            lambda: (log := remote.log()) != seeded and log, 180, "the bot's commit on the remote"
        )
        assert len(commits) == len(seeded) + 1, "exactly one commit for the cycle"
        changed = remote.changed_files()
        assert changed and all("overlays/production/kubefinops/" in f for f in changed), changed

        decisions = [
            json.loads(v)
            for _, v in asyncio.run(
                consume_all(kafka, dep.topic("decisions"), expect=3, timeout=30)
            )
        ]
        applied = {d["workload_id"]: d for d in decisions if d["action"] == "apply"}
        assert applied, decisions
        # The collector bundles records per partition (engine/core/bundles.py): frontend and
        # patients-db key the same partition of 4, so their chunks and markers travelled in
        # bundles through the broker, and both were decided like billing, which came alone.
        metrics = [
            json.loads(v)
            for _, v in asyncio.run(
                consume_all(kafka, dep.topic("metrics"), expect=10**6, timeout=5)
            )
        ]
        bundles = [m for m in metrics if m.get("type") == "bundle"]
        members = [r for b in bundles for r in b["records"]]
        assert {r.get("type") for r in members} == {"chunk", "cycle-end"}, members
        assert {r.get("workload") or r["spec"]["name"] for r in members} == {
            "frontend",
            "patients-db",
        }
        assert {d["workload_id"] for d in decisions} == {
            "smarthealth/Deployment/billing",
            "smarthealth/Deployment/frontend",
            "smarthealth/StatefulSet/patients-db",
        }
        for wid, decision in applied.items():
            _, kind, name = wid.split("/")
            patch = remote.show(
                f"smarthealth-gitops/overlays/production/kubefinops/{kind.lower()}-{name}.yaml"
            )
            for c in decision["containers"]:
                if c["cpu_request"] is not None:
                    millis = math.ceil(round(c["cpu_request"] * 1000, 6))
                    assert f"cpu: {millis}m" in patch, (wid, patch)

        # History in MongoDB: every recommendation and decision, with a TTL index.
        from pymongo import MongoClient

        with MongoClient(mongo.uri) as client:
            db = client[dep_db]
            stored = wait_for(
                lambda: (
                    db["decisions"].count_documents({}) >= len(decisions)
                    and db["decisions"].count_documents({})
                ),
                30,
                "decision history",
            )
            assert stored >= len(decisions)
            assert db["recommendations"].count_documents({}) >= len(decisions)
            ttl = [i for i in db["decisions"].list_indexes() if "expireAfterSeconds" in i]
            assert ttl, "decisions need a retention TTL index"

        report_keys = wait_for(
            lambda: [k for k in s3_objects(s3_outage, bucket) if k.endswith("report.json")],
            60,
            "the first report",
        )
        assert len(report_keys) == 1

        # S3 goes away: the next cycle still runs; its report arrives when S3 is back.
        s3_outage.stop()
        assert http_json(f"{base}/api/cycles", "POST", headers=auth)[0] == 202
        decisions_after = wait_for(
            lambda: (
                len(
                    asyncio.run(
                        consume_all(
                            kafka, dep.topic("decisions"), expect=len(decisions) + 1, timeout=5
                        )
                    )
                )
                > len(decisions)
            ),
            120,
            "the second cycle's decisions",
        )
        assert decisions_after
        # The second apply cycle is over once its summary is on the cycles topic (the executor
        # writes it after the Git step): only then can "no second commit" be asserted.
        wait_for(
            lambda: (
                len(
                    {
                        key
                        for key, _ in asyncio.run(
                            consume_all(kafka, dep.topic("cycles"), expect=2, timeout=5)
                        )
                    }
                )
                >= 2
            ),
            120,
            "the second cycle's execution summary",
        )
        assert remote.log() == commits, "the second cycle must not commit again"
        s3_outage.start()
        objects = wait_for(
            lambda: (
                (o := s3_objects(s3_outage, bucket))
                and len([k for k in o if k.endswith("report.json")]) >= 1
                and o
            ),
            120,
            "the delayed report after S3 returned",
        )
        for key, body in objects.items():
            assert remote.token.encode() not in body, key
            assert TOKEN.encode() not in body, key
        _, metrics = http_json(f"{base}/metrics")
        assert "kubefinops_reports_written_total" in metrics
    finally:
        dep.stop_all()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert remote.token not in logs
    assert kafka.password not in logs
