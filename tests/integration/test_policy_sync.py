"""Two workers started together both hold and apply the policy MongoDB reconciles at start, and
both see a later change made through either worker's API.

Only one worker consumes the one-partition ``kubefinops.policies`` topic and writes the global
table; every other worker gets the table's changelog.  Faust gives a global table's changelog
partition to every worker as *active* (so it is recovered at start) and *standby* (so it is followed
afterwards), and a record of an active partition waits in a ``recovery_buffer_size`` buffer (1000 by
default) that is flushed only at the end of a recovery: after start, a changelog record reached the
other workers' buffers and stayed there until the next rebalance.  The second worker then decided
with the default policy, and a PUT was never visible on it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from engine.adapters.mongo import PolicyStore, connect
from engine.core.model import CycleEnd
from engine.core.policy import validate_policy
from engine.settings import load_settings
from tests.harness.kafka import KafkaInfo
from tests.harness.proc import wait_for
from tests.integration.samples import MiB, batches, encode, workload
from tests.integration.workers import Deployment, consume_all, http_json, produce

pytestmark = pytest.mark.integration

TOKEN = "policy-sync-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICY = {
    "id": "shop-autopilot",
    "name": "shop autopilot",
    "mode": "autopilot",
    "priority": 10,
    "selectors": {"namespaces": ["shop"]},
}


def one_workload_per_partition(partitions: int) -> list[str]:
    """Workload names whose ids land on every partition of the workload topics (the producer's
    default partitioner, the one the test and the workers use), so each worker owns some."""
    choose, names, seen = DefaultPartitioner(), [], set()
    everything = list(range(partitions))
    for i in range(1000):
        name = f"svc{i}"
        p = choose(f"shop/Deployment/{name}".encode(), everything, everything)
        if p not in seen:
            seen.add(p)
            names.append(name)
        if len(seen) == partitions:
            return names
    raise AssertionError("no workload name for some partition")


def policies_on(port: int) -> dict[str, int]:
    status, body = http_json(f"http://127.0.0.1:{port}/api/policies", headers=AUTH)
    assert status == 200, body
    return {p["id"]: p["version"] for p in body.get("policies", [])}


def test_two_workers_started_together_both_apply_the_reconciled_policy(
    kafka: KafkaInfo, mongo: Any, tmp_path: Path
) -> None:
    db = f"policysync{int(time.time() * 1000)}"
    settings = load_settings(
        mongodb_uri=mongo.uri, mongodb_database=db, kafka_security_protocol="PLAINTEXT"
    )
    asyncio.run(PolicyStore(connect(settings), validate=validate_policy).put(POLICY, by="test"))
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": db,
            "KUBEFINOPS_API_TOKEN": TOKEN,
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_COLLECT_ON_START": "false",
        },
    )
    try:
        (s1, p1), (s2, p2) = dep.start_worker("w1"), dep.start_worker("w2")
        dep.wait_ready(p1, timeout=150, server=s1)
        dep.wait_ready(p2, timeout=150, server=s2)
        dep.wait_stable(2, timeout=150)
        for port in (p1, p2):
            wait_for(
                lambda port=port: policies_on(port).get(POLICY["id"]) == 1,
                60,
                f"the reconciled policy on the worker at :{port}",
            )

        # Both gates decide under it: one workload on every partition, so on both workers.
        names = one_workload_per_partition(dep.partitions)
        specs = [workload(n, cpu=2.0, memory=2048 * MiB) for n in names]
        rng = np.random.default_rng(11)
        sent = [b for spec in specs for b in batches(spec, rng)[0]]
        ends = [CycleEnd(cycle="c1", spec=spec) for spec in specs]
        asyncio.run(produce(kafka, dep.topic("metrics"), encode([*sent, *ends])))
        found = asyncio.run(
            consume_all(kafka, dep.topic("decisions"), expect=len(specs), timeout=120)
        )
        decisions = {d["workload_id"]: d for d in (json.loads(v) for _, v in found)}
        assert set(decisions) == {s.workload_id for s in specs}, decisions.keys()
        for wid, d in decisions.items():
            assert (d["policy_id"], d["policy_version"]) == (POLICY["id"], 1), (wid, d)

        # A change made after start, through the worker that may not own the policies topic,
        # reaches both tables.
        status, stored = http_json(
            f"http://127.0.0.1:{p2}/api/policies/{POLICY['id']}",
            "PUT",
            {**{k: v for k, v in POLICY.items() if k != "id"}, "priority": 11},
            AUTH,
        )
        assert status == 200 and stored["version"] == 2, stored
        for port in (p1, p2):
            wait_for(
                lambda port=port: policies_on(port).get(POLICY["id"]) == 2,
                30,
                f"policy v2 on the worker at :{port}",
            )
    finally:
        dep.stop_all()
