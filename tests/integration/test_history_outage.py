"""MongoDB down during a cycle: one commit for the cycle, every decision stored once after it
returns (issue 10).

The campaign's failure: a 26 s outage gave 3 commits for one cycle and 3 of 6 decisions were never
stored — the gate waited ~5 s per failed history write, decisions missed the apply window, and the
history was best effort.  Now the gate hands history to the ``kubefinops.history`` outbox (a
produce, never slowed by MongoDB; the ledger's execution records go the same way), the history
writer drains it with backoff, and the executor applies per collection cycle: the cycle's manifest
says how many decisions to wait for.

The outage is 30 s, as in the issue — six times the driver's 5 s server-selection timeout and ten
times the apply window (3 s) — and the cycle's decisions arrive 6 s apart inside it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from engine.adapters.mongo import PolicyStore, connect
from engine.core.apply_cycles import CycleManifest
from engine.core.model import CycleEnd
from engine.core.policy import validate_policy
from engine.demo.data import gitops_dir, load_estate, usage_batches
from engine.settings import load_settings
from tests.harness.git_http import GitRemote
from tests.harness.mongo import start_secantus
from tests.harness.proc import free_port, wait_until
from tests.integration.workers import Deployment, consume_all, produce, wait_consumed

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30.0
SPREAD_SECONDS = 6.0
CYCLE = "20261130T120000Z"


def test_mongodb_down_during_a_cycle(kafka, git_remote: GitRemote, tmp_path: Path):
    estate = gitops_dir()
    assert estate is not None
    work = tmp_path / "mongo"
    (work / "data").mkdir(parents=True)
    port = free_port()
    mongo, _ = start_secantus(str(work / "data"), str(work), port)
    uri, database = f"mongodb://127.0.0.1:{port}/", "outage"
    settings = load_settings(
        mongodb_uri=uri, mongodb_database=database, kafka_security_protocol="PLAINTEXT"
    )

    async def put_policy() -> None:
        store = PolicyStore(connect(settings), validate=validate_policy)
        doc = {"id": "autopilot", "selectors": {"namespaces": ["smarthealth"]}, "priority": 5}
        await store.put({**doc, "mode": "autopilot"}, by="test")

    asyncio.run(put_policy())
    remote = git_remote.fresh("outage")
    seeded = remote.log()
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_MONGODB_URI": uri,
            "KUBEFINOPS_MONGODB_DATABASE": database,
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_COLLECT_ON_START": "false",
            "KUBEFINOPS_GIT_REMOTE_URL": remote.url,
            "KUBEFINOPS_GIT_USERNAME": remote.username,
            "KUBEFINOPS_GIT_TOKEN": remote.token,
            "KUBEFINOPS_GIT_WORKDIR": str(tmp_path / "clone"),
            "KUBEFINOPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        },
    )
    try:
        server, wport = dep.start_worker("w1")
        dep.wait_ready(wport, server=server)
        now = time.time()
        specs = load_estate(estate, now)[:4]
        batches = usage_batches(specs, start=now - 3 * 86400, end=now - 300)
        records = [(b.workload_id.encode(), b.model_dump_json().encode()) for b in batches]
        asyncio.run(produce(kafka, dep.topic("metrics"), records))
        # the reconcile at start published the policy: its record is on the policies topic
        assert asyncio.run(consume_all(kafka, dep.topic("policies"), expect=1, timeout=60))

        def marker(spec) -> tuple[bytes, bytes]:
            return spec.workload_id.encode(), CycleEnd(
                cycle=CYCLE, spec=spec
            ).model_dump_json().encode()

        mongo.stop(timeout=10)
        down_at = time.monotonic()
        manifest = CycleManifest(cycle=CYCLE, workloads=len(specs), at=time.time())
        asyncio.run(
            produce(
                kafka,
                dep.topic("apply-control"),
                [(CYCLE.encode(), manifest.model_dump_json().encode())],
            )
        )
        asyncio.run(produce(kafka, dep.topic("metrics"), [marker(s) for s in specs[:2]]))
        time.sleep(SPREAD_SECONDS)
        asyncio.run(produce(kafka, dep.topic("metrics"), [marker(s) for s in specs[2:]]))
        executions = asyncio.run(consume_all(kafka, dep.topic("executions"), expect=1, timeout=60))
        assert executions, "the cycle was not applied while MongoDB was down"
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        mongo, _ = start_secantus(str(work / "data"), str(work), port)

        db = MongoClient(uri)[database]
        wait_until(
            lambda: db["decisions"].count_documents({}) >= len(specs),
            90,
            "every decision stored after MongoDB returned",
            server.log,
        )
        # one commit for the cycle, carrying every applied workload
        commits = remote.log()[: len(remote.log()) - len(seeded)]
        assert len(commits) == 1, commits
        applied = {json.loads(v)["workload_ids"][0] for _, v in executions if v}
        assert applied <= {s.workload_id for s in specs}
        # the ledger's execution records went through the outbox too: one stored per record
        # the executor published (one per applied workload), none lost to the outage
        published = asyncio.run(
            consume_all(kafka, dep.topic("executions"), expect=len(specs), timeout=30)
        )
        wanted = sorted(tuple(json.loads(v)["workload_ids"]) for _, v in published if v)
        wait_until(
            lambda: db["executions"].count_documents({}) >= len(wanted),
            60,
            "every execution stored after MongoDB returned",
            server.log,
        )
        # the writer committed the whole outbox: nothing is left to re-deliver after the outage
        wait_consumed(kafka, dep.prefix, dep.topic("history"), timeout=60)
        # every record is stored by id (an upsert): a re-delivered outbox message cannot add a
        # document, so the counts below are exact
        decisions = list(db["decisions"].find({}))
        assert len(decisions) == len(specs)
        assert {d["workload_id"] for d in decisions} == {s.workload_id for s in specs}
        assert db["recommendations"].count_documents({}) == len(specs)
        stored = sorted(tuple(e["workload_ids"]) for e in db["executions"].find({}))
        assert stored == wanted
        assert server.alive()
    finally:
        dep.stop_all()
        mongo.stop(timeout=10)
