"""Fuzz campaign against a real worker: >= 10,000 hostile records on every consumed topic.

Starts Kafka (SASL/SCRAM), SecantusDB and moto S3 in a temp dir and one ``kubefinops worker``,
then sends

* valid traffic: ``--workloads`` workloads x 4 hourly chunks of minute samples (2 pods) and one
  cycle-end marker each, whose exact results are known;
* ``--records`` hostile records drawn from the Hypothesis strategies of ``tests/strategies.py``
  (a valid record with a field replaced by NaN, 1e300, a 400-digit integer, a newline or U+202E
  in an id, a far-future time, deep nesting...; random JSON; bytes that are not JSON), spread over
  the metrics, policies, decisions, executions and cycles topics (not the recommendations topic:
  the gate decides in the aggregator's pass and no agent reads that topic);

and prints: records sent per topic, how many our own models refuse (what must be dead-lettered),
dead letters by reason and by topic (a record refused downstream, past its model's check, is
dead-lettered too, so there can be more letters than refusals), agent
crashes (Faust's ``Crashed reason=`` log lines; must be 0), whether the worker is still alive,
and whether the valid traffic's results are exact afterwards (every valid sample counted exactly
once in ``/api/usage``, one recommendation per valid workload).

    PATH=.venv/bin:$PATH python bench/bench_fuzz.py                 # 10,000 hostile records
    PATH=.venv/bin:$PATH python bench/bench_fuzz.py --records 2000  # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Stack, get_text
from engine.core.model import (
    CycleEnd,
    CycleSummary,
    Decision,
    Execution,
    parse,
    parse_metrics_record,
)
from engine.core.policy import parse_policy_record
from engine.errors import InvalidPolicy, InvalidRecord
from tests import strategies as strat
from tests.harness.s3 import start_s3
from tests.integration.test_worker import batches, encode, workload
from tests.integration.workers import consume_all, http_json, produce

TOKEN = "bench-fuzz-token"
TOPICS: dict[str, tuple[Any, Any]] = {  # topic -> (strategy, local parse)
    "metrics": (strat.metrics_records_at(time.time() - 600), parse_metrics_record),
    "policies": (strat.policy_records, parse_policy_record),
    "decisions": (strat.decision_records, lambda r: parse(Decision, r)),
    "executions": (strat.execution_records, lambda r: parse(Execution, r)),
    "cycles": (strat.cycle_records, lambda r: parse(CycleSummary, r)),
}
WEIGHTS = {
    "metrics": 4,
    "policies": 1,
    "decisions": 1,
    "executions": 1,
    "cycles": 1,
}
_CRASH = re.compile(r"Crashed reason=(\w+)")


def draw(strategy: Any, n: int) -> list[bytes]:
    """``n`` examples of a Hypothesis strategy, outside a test (a campaign, not a property)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import NonInteractiveExampleWarning

    out: list[bytes] = []
    warnings.simplefilter("ignore", NonInteractiveExampleWarning)

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(raw: bytes) -> None:
        out.append(raw)

    while len(out) < n:
        collect()
    return out[:n]


def hostile_key(topic: str, raw: bytes, rng: random.Random) -> bytes | None:
    """The record's own workload id when it has one (mostly), else something odd."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and rng.random() < 0.8:
        if topic == "policies":
            return str(doc.get("id", "p")).encode()[:200] or b"p"
        ns, kind = doc.get("namespace"), doc.get("kind")
        name = doc.get("workload") or doc.get("name")
        if isinstance(doc.get("spec"), dict):
            spec = doc["spec"]
            ns, kind, name = spec.get("namespace"), spec.get("kind"), spec.get("name")
        if all(isinstance(x, str) for x in (ns, kind, name)):
            return f"{ns}/{kind}/{name}".encode()[:400]
    odd = [b"\xff\xfe", b"a\nb", b"x" * 300, b"shop/Deployment/cart"]
    if topic != "policies":  # a compacted topic refuses records without a key
        odd += [None, b""]
    return rng.choice(odd)


def crashes(log: Path) -> collections.Counter[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return collections.Counter(
        m.group(1) for m in _CRASH.finditer(text) if m.group(1) != "CancelledError"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="hostile records to send")
    parser.add_argument("--workloads", type=int, default=12, help="valid workloads")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    started = time.monotonic()
    total_weight = sum(WEIGHTS.values())
    plan = {t: args.records * w // total_weight for t, w in WEIGHTS.items()}
    plan["metrics"] += args.records - sum(plan.values())
    hostile: dict[str, list[tuple[bytes | None, bytes]]] = {}
    refused: dict[str, int] = {}
    for topic, n in plan.items():
        strategy, local_parse = TOPICS[topic]
        raws = draw(strategy, n)
        bad = 0
        for raw in raws:
            try:
                local_parse(raw)
            except (InvalidRecord, InvalidPolicy):
                bad += 1
        refused[topic] = bad
        hostile[topic] = [(hostile_key(topic, raw, rng), raw) for raw in raws]
    print(f"# drew {args.records:,} hostile records in {time.monotonic() - started:.1f}s")

    stack = Stack().start()
    try:
        s3 = start_s3(stack.workdir)
        stack.servers.append(s3.server)
        dep = stack.deployment(
            partitions=4,
            KUBEFINOPS_API_TOKEN=TOKEN,
            KUBEFINOPS_S3_ENDPOINT_URL=s3.endpoint_url,
            KUBEFINOPS_S3_ACCESS_KEY=s3.access_key,
            KUBEFINOPS_S3_SECRET_KEY=s3.secret_key,
            KUBEFINOPS_LOG_LEVEL="info",
        )
        assert stack.kafka is not None
        kafka = stack.kafka
        server, port = dep.start_worker("fuzz")
        dep.wait_ready(port, timeout=120, server=server)

        specs = [workload(f"valid-{i}") for i in range(args.workloads)]
        early: list[tuple[bytes | None, bytes]] = []
        late: list[tuple[bytes | None, bytes]] = []
        expect_cpu: dict[str, int] = {}
        for i, spec in enumerate(specs):
            sent, cpu, _ = batches(spec, np.random.default_rng(i), hours=4)
            expect_cpu[spec.name] = int(cpu.size)
            early += encode(sent[:2])
            late += encode(sent[2:])
            # the campaign's own cases against this valid workload: a chunk ending ten years
            # ahead, and its next chunk on another workload's key; neither may cost later data
            future = sent[1].model_copy(
                update={"start": sent[1].end, "end": sent[1].end + 10 * 365 * 86400}
            )
            hostile["metrics"].append(
                (spec.workload_id.encode(), future.model_dump_json().encode())
            )
            hostile["metrics"].append((b"shop/Deployment/elsewhere", encode(sent[2:3])[0][1]))
        markers = encode([CycleEnd(cycle="bench-valid", spec=s) for s in specs])
        concrete = 2 * len(specs)

        t0 = time.monotonic()
        # half the valid chunks, the hostile flood per topic, the other half, then the markers
        asyncio.run(produce(kafka, dep.topic("metrics"), early))
        for topic, records in hostile.items():
            asyncio.run(produce(kafka, dep.topic(topic), records))
        asyncio.run(produce(kafka, dep.topic("metrics"), late))
        asyncio.run(produce(kafka, dep.topic("metrics"), markers))
        valid = early + late
        sent_s = time.monotonic() - t0

        # wait until the dead-letter topic stops growing
        letters: list[tuple[bytes | None, bytes | None]] = []
        expected_letters = sum(refused.values()) + concrete
        deadline, last, stable = time.monotonic() + 600, -1, 0
        while time.monotonic() < deadline:
            letters = asyncio.run(
                consume_all(kafka, dep.topic("deadletter"), expect=10**9, timeout=5)
            )
            stable = stable + 1 if len(letters) == last else 0
            last = len(letters)
            if (len(letters) >= expected_letters and stable >= 2) or stable >= 6:
                break
        by_reason: collections.Counter[str] = collections.Counter()
        by_topic: collections.Counter[str] = collections.Counter()
        for _, value in letters:
            doc = json.loads(value or b"{}")
            by_reason[doc.get("reason", "?").split(":")[0][:60]] += 1
            by_topic[doc.get("topic", "?").split(".")[-1]] += 1

        recs = asyncio.run(
            consume_all(kafka, dep.topic("recommendations"), expect=10**9, timeout=8)
        )
        valid_recs = collections.Counter()
        for key, value in recs:
            try:
                doc = json.loads(value or b"{}")
            except (ValueError, RecursionError):
                continue
            cycle = doc.get("collection_cycle", doc.get("cycle")) if isinstance(doc, dict) else None
            if cycle == "bench-valid":
                valid_recs[(key or b"").decode(errors="replace")] += 1
        exact = True
        wrong: list[str] = []
        for spec in specs:
            status, usage = http_json(
                f"http://127.0.0.1:{port}/api/usage/shop/Deployment/{spec.name}"
            )
            got = usage.get("containers", {}).get("app", {}).get("cpu", {}).get("count")
            if status != 200 or got != expect_cpu[spec.name]:
                exact = False
                wrong.append(f"{spec.name}: {got} != {expect_cpu[spec.name]}")
            if valid_recs.get(spec.workload_id, 0) != 1:
                exact = False
                wrong.append(f"{spec.workload_id}: {valid_recs.get(spec.workload_id, 0)} recs")
        crashed = crashes(server.log)
        metrics = get_text(f"http://127.0.0.1:{port}/metrics")
        pattern = r"^kubefinops_agent_failures_total\{[^}]*\}\s+(\S+)$"
        failures = sum(float(v) for v in re.findall(pattern, metrics, re.M))

        print()
        n_valid = len(valid) + len(markers)
        print(
            f"records sent:          {args.records:,} hostile (+ {concrete} far-future/wrong-key "
            f"chunks of valid workloads) + {n_valid:,} valid in {sent_s:.1f}s"
        )
        for topic in TOPICS:
            print(
                f"  {topic:<16} sent {plan[topic]:>6,}   refused by the models {refused[topic]:>6,}"
                f"   dead-lettered from it {by_topic.get(topic, 0):>6,}"
            )
        print(f"dead-lettered:         {len(letters):,} (the models refuse {expected_letters:,})")
        for reason, n in by_reason.most_common(25):
            print(f"  {n:>6,}  {reason}")
        print(f"handler failures caught by the guard: {failures:.0f}")
        print(f"agent crashes:         {sum(crashed.values())} {dict(crashed) or ''}")
        print(f"worker alive:          {server.alive()}")
        print(f"valid traffic exact:   {exact} ({len(specs)} workloads, "
              f"{sum(expect_cpu.values()):,} cpu samples, one recommendation each)")  # fmt: skip
        for line in wrong[:10]:
            print(f"  {line}")
        ok = exact and not crashed and server.alive()
        return 0 if ok else 1
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
