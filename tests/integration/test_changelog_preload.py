"""The changelog preload (tables/preload.py) against the real broker (SCRAM) and real RocksDB
databases: what it writes must be exactly what Faust's record-by-record recovery would leave —
the last value of every key, tombstones applied, the partition's offset stored with them — and
whatever stops it must leave a prefix Faust can replay from."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer

from tables.preload import OFFSET_KEY, ChangelogPreload
from tests.harness.kafka import KafkaInfo, acreate_topics, unique_topic

pytestmark = [pytest.mark.integration]

PARTITIONS = 2


class _Dbs:
    """One RocksDB database per partition, opened as the store opens them (raw mode)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, Any] = {}

    def db_for(self, partition: int) -> Any:
        if partition not in self.dbs:
            options = rocksdict.Options(raw_mode=True)
            options.create_if_missing(True)
            self.dbs[partition] = rocksdict.Rdict(str(self.root / f"p{partition}.db"), options)
        return self.dbs[partition]

    def persisted(self, partition: int) -> int | None:
        raw = self.db_for(partition).get(OFFSET_KEY)
        return None if raw is None else int(raw)

    def rows(self, partition: int) -> dict[bytes, bytes]:
        return {k: v for k, v in self.db_for(partition).items() if k != OFFSET_KEY}

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


async def _produce(
    info: KafkaInfo, topic: str, records: list[tuple[int, bytes, bytes | None]]
) -> list[int]:
    producer = AIOKafkaProducer(**info.client_kwargs(), acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value=v, key=k, partition=p) for p, k, v in records]
        return [(await f).offset for f in sent]
    finally:
        await producer.stop()


def _expected(records: list[tuple[int, bytes, bytes | None]], partition: int) -> dict:
    state: dict[bytes, bytes] = {}
    for p, key, value in records:
        if p != partition:
            continue
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def _preload(info: KafkaInfo, **kwargs: Any) -> ChangelogPreload:
    return ChangelogPreload(lambda: dict(info.client_kwargs()), fetch_bytes=64 * 1024, **kwargs)


async def test_preload_writes_the_last_value_of_each_key_and_the_offset(
    kafka: KafkaInfo, tmp_path: Path
) -> None:
    topic = unique_topic("preload")
    await acreate_topics(kafka, [topic], PARTITIONS, {"cleanup.policy": "compact"})
    # several versions per key, tombstones, values larger than one 64 KiB fetch between them
    first = [
        (i % PARTITIONS, f"k{i % 37}".encode(), (f"v{i}-".encode() * (1 + i % 900)))
        for i in range(600)
    ]
    first += [(0, b"k0", None), (1, b"k1", None), (0, b"k2", None), (0, b"k2", b"back")]
    offsets = await _produce(kafka, topic, first)
    dbs = _Dbs(tmp_path)
    preload = _preload(kafka)
    try:
        done = await preload.load(dbs.db_for, dbs.persisted, [(topic, 0), (topic, 1)])
        assert done.complete and done.records == len(first)
        for p in range(PARTITIONS):
            assert dbs.rows(p) == _expected(first, p)
            last = max(o for (q, _, _), o in zip(first, offsets, strict=True) if q == p)
            assert dbs.persisted(p) == last == done.offsets[(topic, p)]

        # Later records: only the tail past each database's offset is read again.
        tail = [(1, b"k5", b"new"), (1, b"k9", None), (0, b"k4", b"x")]
        await _produce(kafka, topic, tail)
        again = await preload.load(dbs.db_for, dbs.persisted, [(topic, 0), (topic, 1)])
        assert again.complete and again.records == len(tail)
        for p in range(PARTITIONS):
            assert dbs.rows(p) == _expected(first + tail, p)

        # Nothing new: nothing read, nothing written.
        idle = await preload.load(dbs.db_for, dbs.persisted, [(topic, 0), (topic, 1)])
        assert idle.complete and idle.records == 0
    finally:
        await preload.close()
        dbs.close()


async def test_a_newer_rebalance_stops_the_preload_before_it_writes(
    kafka: KafkaInfo, tmp_path: Path
) -> None:
    topic = unique_topic("preload-gen")
    await acreate_topics(kafka, [topic], 1, {"cleanup.policy": "compact"})
    await _produce(kafka, topic, [(0, b"a", b"1"), (0, b"b", b"2")])
    dbs = _Dbs(tmp_path)
    preload = _preload(kafka)
    try:
        done = await preload.load(
            dbs.db_for, dbs.persisted, [(topic, 0)], still_current=lambda: False
        )
        assert not done.complete and done.records == 0
        assert dbs.rows(0) == {} and dbs.persisted(0) is None  # Faust replays it all
    finally:
        await preload.close()
        dbs.close()


async def test_an_unreachable_broker_leaves_the_database_to_fausts_recovery(
    kafka: KafkaInfo, tmp_path: Path
) -> None:
    dbs = _Dbs(tmp_path)
    dead = dict(kafka.client_kwargs(), bootstrap_servers="127.0.0.1:9")  # nothing listens
    preload = ChangelogPreload(lambda: dead, fetch_bytes=64 * 1024, stall_seconds=2.0)
    try:
        done = await asyncio.wait_for(
            preload.load(dbs.db_for, dbs.persisted, [("absent-changelog", 0)]), timeout=30
        )
        assert not done.complete and done.records == 0
        assert dbs.rows(0) == {} and dbs.persisted(0) is None
    finally:
        await preload.close()
        dbs.close()
