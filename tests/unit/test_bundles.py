"""Metrics bundles (engine/core/bundles.py): Kafka's partitioner in the pure core, the grouping
the collector sends, and the aggregator handling each member as if it had come alone."""

from __future__ import annotations

import asyncio
import json
import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from agents import aggregator
from engine.core.bundles import bundle, bundled, murmur2, partition_of
from engine.core.model import CycleEnd, MetricsBundle, parse_metrics_record
from tests.fakes import dead_letters, runtime, sent
from tests.unit.test_handlers import NOW, key, spec, usage, with_autopilot


def test_the_partition_is_kafkas_default_partitioners() -> None:
    rnd = random.Random(7)
    partitioner = DefaultPartitioner()
    for _ in range(5_000):
        data = rnd.randbytes(rnd.randrange(0, 80))
        assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF
        for n in (1, 4, 8, 12):
            assert partition_of(data, n) == partitioner(data, list(range(n)), list(range(n)))


def test_records_are_bundled_per_partition_in_their_order_within_bounds() -> None:
    wids = [f"ns-{i % 7}/Deployment/w{i}" for i in range(300)]
    records = [(w, json.dumps({"n": i, "w": w}).encode()) for i, w in enumerate(wids)]
    out = bundled(records, 4, max_members=40)
    members: list[dict[str, object]] = []
    for k, value in out:
        doc = json.loads(value)
        group = doc["records"] if doc.get("type") == "bundle" else [doc]
        assert 1 <= len(group) <= 40
        home = partition_of(k, 4)
        assert k == str(group[0]["w"]).encode()  # keyed by its first member
        assert {partition_of(str(m["w"]).encode(), 4) for m in group} == {home}
        members += group
    assert sorted(int(str(m["n"])) for m in members) == list(range(300))  # each once
    for p in range(4):  # the order within a partition is the order they came in
        ns = [int(str(m["n"])) for m in members if partition_of(str(m["w"]).encode(), 4) == p]
        assert ns == sorted(ns)
    assert len(out) < 300 // 10  # bundles, not records

    big = [(w, b"x" * 300) for w in wids[:50]]
    for _, value in bundled(big, 1, max_bytes=1_000):
        assert len(value) <= 1_000
    assert bundled([(wids[0], b"{}")], 4) == [(wids[0].encode(), b"{}")]  # one: the record
    assert bundled([], 4) == []


def test_a_bundle_is_ingested_exactly_like_its_members_sent_alone() -> None:
    specs = [spec(f"w{i}") for i in range(12)]
    alone = with_autopilot(runtime(now=NOW))
    members: list[tuple[str, bytes]] = []
    for s in specs:
        for batch in usage(s, hours=3):
            members.append((s.workload_id, batch.model_dump_json().encode()))
        members.append((s.workload_id, CycleEnd(cycle="c", spec=s).model_dump_json().encode()))

    async def send(rt: object, records: list[tuple[bytes, bytes]]) -> None:
        for k, v in records:
            await aggregator.ingest(rt, k, v)  # type: ignore[arg-type]

    asyncio.run(send(alone, [(w.encode(), v) for w, v in members]))
    together = with_autopilot(runtime(now=NOW))
    records = bundled(members, together.settings.topic_partitions)
    assert any(json.loads(v).get("type") == "bundle" for _, v in records)
    asyncio.run(send(together, records))
    assert not dead_letters(together) and not dead_letters(alone)
    for s in specs:
        cid = f"{s.workload_id}/app"
        assert together.tables.usage.store[cid] == alone.tables.usage.store[cid]
    by_wid = sorted(sent(together, "recommendations"), key=lambda r: r["workload_id"])
    assert by_wid == sorted(sent(alone, "recommendations"), key=lambda r: r["workload_id"])
    assert len(by_wid) == len(specs)


def test_a_bad_member_or_one_of_another_partition_is_dead_lettered_alone() -> None:
    rt = with_autopilot(runtime(now=NOW))
    n = rt.settings.topic_partitions
    good = spec("api")
    home = partition_of(key(good), n)
    stranger = next(
        s for s in (spec(f"x{i}") for i in range(100)) if partition_of(key(s), n) != home
    )
    chunk = usage(good, hours=2)
    members = [
        chunk[0].model_dump_json().encode(),
        b'{"type": "chunk", "namespace": "shop"}',  # invalid
        CycleEnd(cycle="c", spec=stranger).model_dump_json().encode(),  # another partition
        bundle([chunk[1].model_dump_json().encode()]),  # a bundle inside a bundle
        chunk[1].model_dump_json().encode(),
        CycleEnd(cycle="c", spec=good).model_dump_json().encode(),
    ]
    value = bundle(members)
    assert isinstance(parse_metrics_record(value), MetricsBundle)
    asyncio.run(aggregator.ingest(rt, key(good), value))
    letters = dead_letters(rt)
    reasons = sorted(d.reason for d in letters)
    assert len(letters) == 3, reasons
    assert any(r.startswith("bundle member: MetricsRecord.chunk.") for r in reasons), reasons
    assert any("Input tag 'bundle'" in r for r in reasons), reasons
    mismatch = next(d for d in letters if d.reason.startswith("partition-mismatch"))
    assert mismatch.key == stranger.workload_id and "cycle-end" in mismatch.value
    assert f"keys partition {partition_of(key(stranger), n)} of {n}" in mismatch.reason
    (rec,) = sent(rt, "recommendations")  # the good workload went on: both chunks, its marker
    assert rec["workload_id"] == good.workload_id
    assert rec["containers"][0]["usage"]["cpu"]["count"] == 2 * 60

    empty = b'{"type": "bundle", "records": []}'
    asyncio.run(aggregator.ingest(rt, key(good), empty))
    assert dead_letters(rt)[-1].reason.startswith("MetricsRecord.bundle.records")
