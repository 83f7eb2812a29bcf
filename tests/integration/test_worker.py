"""The foundation, end to end: real ``kubefinops worker`` processes on Apache Kafka with SCRAM.

* a worker authenticates with SCRAM-SHA-256, consumes usage batches from ``<prefix>.metrics`` and
  produces a recommendation to ``<prefix>.recommendations``; kcat reads it as JSON;
* a malformed record is parked on the dead-letter topic with a reason and the agent keeps going;
* a wrong password ends the worker within 30 s with one line that does not contain the password;
* a second worker joins: partitions are split and no record is lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.core.model import CycleEnd
from tests.harness.kafka import KafkaInfo
from tests.harness.proc import wait_until
from tests.integration.samples import batches, encode, workload
from tests.integration.workers import (
    Deployment,
    consume_all,
    http_json,
    kcat_read,
    produce,
    put_policy,
)
from tests.unit.classic_params import classic_policy_doc

pytestmark = pytest.mark.integration

TOKEN = "worker-api-token-123"
# The estimator step this test checks by hand (P95 + 15% headroom, no max step),
# pinned in a policy so the test keeps checking the sketch's percentile through Kafka whatever
# the defaults are (tests/unit/classic_params.py; the defaults are checked by test_oneshot).
CLASSIC_SHOP = classic_policy_doc(
    {
        "name": "classic estimator for shop",
        "selectors": {"namespaces": ["shop"]},
        "mode": "recommend",
        "estimator": {"cpu_percentile": 95.0, "max_step": None, "cpu_floor": 0.01, "cpu_cap": None},
    }
)


@pytest.fixture
def deployment(kafka: KafkaInfo, mongo, tmp_path: Path):
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",  # no collection in these tests
            "KUBEFINOPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "KUBEFINOPS_API_TOKEN": TOKEN,
        },
    )
    yield dep
    dep.stop_all()


def test_worker_scram_pipeline_deadletter_and_kcat(deployment: Deployment, kafka: KafkaInfo):
    server, port = deployment.start_worker("w1")
    deployment.wait_ready(port, server=server)
    put_policy(port, "classic-shop", CLASSIC_SHOP, TOKEN)

    spec = workload("checkout")
    sent, cpu, mem = batches(spec, np.random.default_rng(1))
    garbage = [
        (b"shop/Deployment/checkout", b"{not json"),
        (
            b"shop/Deployment/checkout",
            json.dumps(
                {
                    "namespace": "shop",
                    "kind": "Deployment",
                    "workload": "checkout",
                    "container": "app",
                    "start": 0,
                    "end": 1,
                    "samples": {"cpu": [[0.5, float("nan")]], "gpu": [[0.5, 1.0]]},
                }
            ).encode(),
        ),
    ]
    asyncio.run(
        produce(
            kafka,
            deployment.topic("metrics"),
            garbage + encode([*sent, CycleEnd(cycle="c1", spec=spec)]),
        )
    )

    recs = kcat_read(kafka, deployment.topic("recommendations"), 1, timeout=90)
    rec = recs[0]
    assert rec["workload_id"] == "shop/Deployment/checkout"
    app = rec["containers"][0]
    exact_p95 = float(np.percentile(cpu, 95, method="inverted_cdf"))
    # The worker's state is exact to 1% (the sketch), and so is the request computed from it:
    # P95 + 15% headroom (the pinned policy), rounded up to millicores.
    assert app["usage"]["cpu"]["p95"] == pytest.approx(exact_p95, rel=0.01)
    assert exact_p95 * 1.15 * 0.99 <= app["cpu_request"] <= exact_p95 * 1.15 * 1.01 + 0.001
    # never below the observed peak: the limit never, the request neither (request = limit, pinned)
    assert app["memory_limit"] >= app["memory_request"] >= float(mem.max())
    assert app["usage"]["cpu"]["count"] == cpu.size

    letters = asyncio.run(consume_all(kafka, deployment.topic("deadletter"), expect=3, timeout=30))
    parked = [json.loads(v) for _, v in letters]
    reasons = sorted(p["reason"] for p in parked)
    # every bad record and bad sample said, each once: the record that is not JSON, and the
    # batch's two bad samples (a timestamp of 0.5 s, a resource the tool does not know)
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("MetricsRecord: invalid JSON"), reasons
    assert reasons[1:] == ["bad-timestamp: 1 samples", "unknown-resource: 1 samples"], reasons
    assert {(p["agent"], p["topic"]) for p in parked} == {
        ("aggregator", deployment.topic("metrics"))
    }, parked
    assert server.alive(), "a malformed record must not crash the agent"

    status, usage = http_json(f"http://127.0.0.1:{port}/api/usage/shop/Deployment/checkout")
    assert status == 200
    assert usage["containers"]["app"]["cpu"]["count"] == cpu.size
    status, metrics = http_json(f"http://127.0.0.1:{port}/metrics")
    assert "kubefinops_dead_letters_total" in metrics
    # the garbage collector tuned at start and frozen once ready (engine/memory.py)
    assert 'kubefinops_gc_collections_total{generation="2"}' in metrics
    # one counter only (prometheus-client's name[] parameter), and a bad name is a 400
    status, one = http_json(f"http://127.0.0.1:{port}/metrics?name[]=kubefinops_dead_letters_total")
    lines = [line for line in one.splitlines() if line and not line.startswith("#")]
    assert status == 200 and lines, one
    assert all(line.startswith("kubefinops_dead_letters_total{") for line in lines), lines
    status, bad = http_json(f"http://127.0.0.1:{port}/metrics?name[]=a%0Ab")
    assert status == 400 and "name[]" in bad["error"], (status, bad)
    frozen = re.findall(
        r"garbage collector: (\d+) objects alive at start frozen", server.log.read_text()
    )
    assert len(frozen) == 1 and int(frozen[0]) > 10_000, frozen


def test_wrong_password_exits_with_one_line(kafka: KafkaInfo, tmp_path: Path):
    wrong = "definitely-Wrong-pa55word"
    dep = Deployment(kafka=kafka, workdir=tmp_path, extra_env={"KUBEFINOPS_KAFKA_PASSWORD": wrong})
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker"],
        env={**__import__("os").environ, **dep.env(0, "bad")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # bounded by the run's timeout (no wall-clock assertion: the host's speed is not the test)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "authentication failed" in lines[0]
    assert wrong not in proc.stderr + proc.stdout


def test_second_worker_splits_partitions_and_loses_nothing(
    deployment: Deployment, kafka: KafkaInfo
):
    """Half the records before the second worker joins, half after the group is stable again;
    every sample is counted once, whichever worker owns the workload (asked through either)."""
    s1, p1 = deployment.start_worker("w1")
    deployment.wait_ready(p1, server=s1)
    deployment.wait_stable(members=1)
    rng = np.random.default_rng(2)
    specs = [workload(f"svc-{i}") for i in range(12)]
    first = [b for s in specs[:6] for b in batches(s, rng, hours=4)[0]]
    asyncio.run(produce(kafka, deployment.topic("metrics"), encode(first)))

    s2, p2 = deployment.start_worker("w2")
    deployment.wait_ready(p2, server=s2)
    deployment.wait_stable(members=2)  # the rebalance is over: both own partitions
    second = [b for s in specs[6:] for b in batches(s, rng, hours=4)[0]]
    asyncio.run(produce(kafka, deployment.topic("metrics"), encode(second)))

    expected = 4 * 60 * 2  # 4 hourly chunks x 60 samples x 2 pods
    counts: dict[str, object] = {}

    def all_counted() -> bool:
        for i, spec in enumerate(specs):
            port = (p1, p2)[i % 2]  # either worker answers, routing to the owner
            status, body = http_json(
                f"http://127.0.0.1:{port}/api/usage/shop/Deployment/{spec.name}"
            )
            cpu = body.get("containers", {}).get("app", {}).get("cpu", {}) if status == 200 else {}
            counts[spec.name] = cpu.get("count", f"HTTP {status}")
        if all(c == expected for c in counts.values()):
            return True
        time.sleep(1.0)
        return False

    try:
        wait_until(all_counted, 180, "every workload's samples counted once")
    except TimeoutError:
        raise AssertionError(f"counts (expected {expected}): {counts}") from None
    owners = [http_json(f"http://127.0.0.1:{p}/ready")[1]["assigned_partitions"] for p in (p1, p2)]
    assert all(n > 0 for n in owners), owners  # the partitions were split, not all on one
