"""The table store setting: the tables really get the RocksDB store (a store URL Faust finds
falsy silently falls back to the app's memory store), and a read finds a key in whichever
partition database holds it, whatever the current event's partition (the gate decides batches
taken across partitions)."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import numpy as np
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event

from engine.app import create_app
from engine.settings import load_settings
from tables import declare_tables
from tables.state import TypedTable
from tables.store import Store


def _tables(tmp_path: Path, store: str) -> tuple[faust.App, Any]:
    settings = load_settings(
        kafka_password="pw-123456",
        data_dir=tmp_path,
        table_store=store,
        topic_partitions=2,
        app_id=f"store-{store}",
    )
    app = create_app(settings)
    return app, declare_tables(app, settings)


def test_rocksdb_setting_gives_the_partitioned_tables_the_bounded_rocksdb_store(
    tmp_path: Path,
) -> None:
    _, tables = _tables(tmp_path, "rocksdb")
    for table in (tables.usage, tables.workloads, tables.last_action, tables.verifications):
        assert isinstance(table.store.data, Store), table.name
    assert isinstance(tables.pending_decisions.data, Store)
    assert isinstance(tables.policies.store.data, MemoryStore)  # global: stays in memory
    path = tables.usage.store.data.partition_path(1)  # under the worker's data dir
    assert path.name == "usage-1.db" and path.is_relative_to(tmp_path), path


def test_memory_setting_keeps_every_table_in_memory(tmp_path: Path) -> None:
    app, tables = _tables(tmp_path, "memory")
    # every table declare_tables returns, typed wrappers unwrapped to their Faust table
    declared = [getattr(tables, f.name) for f in dataclasses.fields(tables)]
    faust_tables = [t.store if isinstance(t, TypedTable) else t for t in declared]
    assert {t.name for t in faust_tables} == set(app.tables)  # none missed, none extra
    for table in faust_tables:
        assert isinstance(table.data, MemoryStore), table.name


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _in_event_of(partition: int) -> Any:
    event = _Event(partition)
    return _current_event.set(weakref.ref(event)), event  # keep the event alive


def test_a_read_finds_the_key_in_its_own_partition_whatever_the_current_event(
    tmp_path: Path,
) -> None:
    _, tables = _tables(tmp_path, "rocksdb")
    store: Store = tables.workloads.store.data
    for partition in (0, 1):
        store._db_for_partition(partition)
    token, event = _in_event_of(1)
    try:
        store._set(b'"ns/Deployment/a"', b'{"v": 1}')  # written in partition 1's database
    finally:
        _current_event.reset(token)
    store._key_index.clear()  # as after a restart: no memory of where keys are
    token, event = _in_event_of(0)  # e.g. a gate batch whose last record is in partition 0
    try:
        assert store._get(b'"ns/Deployment/a"') == b'{"v": 1}'
        assert store._contains(b'"ns/Deployment/a"')
        assert store._get(b'"ns/Deployment/missing"') is None
        assert not store._contains(b'"ns/Deployment/missing"')
    finally:
        _current_event.reset(token)
    assert store._dbs[0].get(b'"ns/Deployment/a"') is None  # it is partition 1's key
    del event


def _collections_during(fn: Any) -> int:
    import gc

    count = [0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            count[0] += 1

    gc.callbacks.append(callback)
    try:
        fn()
    finally:
        gc.callbacks.remove(callback)
    return count[0]


def test_a_rebalance_that_revokes_nothing_does_not_collect_the_heap(tmp_path: Path) -> None:
    """Faust's store runs ``gc.collect()`` per table on every rebalance so a revoked partition's
    database handle is gone before it may reopen; with nothing revoked there is none to wait for
    (each collection walks the whole heap: ~0.4-0.75 s of a 3,000-workload start)."""
    from faust.types import TP

    _, tables = _tables(tmp_path, "rocksdb")
    table = tables.usage.store
    store: Store = table.data
    store._db_for_partition(0)
    changelog = table.changelog_topic.get_topic_name()
    other = TP("someone-elses-topic", 0)
    assert _collections_during(lambda: store.revoke_partitions(table, set())) == 0
    assert _collections_during(lambda: store.revoke_partitions(table, {other})) == 0
    assert 0 in store._dbs
    assert _collections_during(lambda: store.revoke_partitions(table, {TP(changelog, 0)})) >= 1
    assert 0 not in store._dbs  # closed: the next assignment opens it again


def test_the_rocksdb_tables_share_one_changelog_preload(tmp_path: Path) -> None:
    _, tables = _tables(tmp_path, "rocksdb")
    stores = [t.store.data for t in (tables.usage, tables.workloads, tables.last_action)]
    assert len({id(s.preload) for s in stores}) == 1 and stores[0].preload is not None
    settings = load_settings(
        kafka_password="pw-123456", data_dir=tmp_path, table_store="rocksdb", table_preload=False
    )
    app = create_app(settings)
    assert declare_tables(app, settings).usage.store.data.preload is None


async def test_the_worker_consumer_waits_on_an_empty_fetch_as_set(tmp_path: Path) -> None:
    """Faust builds its consumer with a fixed 1,500 ms fetch wait; the broker answers a
    connection's requests in order, so each offsets request of a recovery queued behind it."""
    for wait_ms in (100, 250):
        settings = load_settings(
            kafka_password="pw-123456",
            data_dir=tmp_path,
            kafka_fetch_max_wait_ms=wait_ms,
            app_id=f"fetch-wait-{wait_ms}",
        )
        app = create_app(settings)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            assert consumer._fetch_max_wait_ms == wait_ms
        finally:
            await consumer.stop()  # never started: only releases it


async def test_the_warm_ups_databases_of_partitions_not_assigned_are_closed(
    tmp_path: Path,
) -> None:
    """The warm-up opens every partition's database before the first assignment; those of
    partitions another worker gets must not stay open (a read looks a key up in every open
    database, and theirs stop at the warm-up)."""
    from faust.types import TP

    _, tables = _tables(tmp_path, "rocksdb")
    store: Store = tables.usage.store.data
    store.preload = None  # no broker here: the warm-up's effect is the open databases
    changelog = tables.usage.store.changelog_topic.get_topic_name()
    for partition in (0, 1):
        store._db_for_partition(partition)
    store._warmed = {0, 1}
    mine = {TP(changelog, 1)}
    await store.on_rebalance(mine, set(), mine, generation_id=1)
    assert set(store._dbs) == {1} and store._warmed == set()


def test_rocksdb_typed_tables_read_the_stored_bytes_once_and_decode_them_on_a_change(
    tmp_path: Path, caplog: Any
) -> None:
    """Under RocksDB a typed table reads a value's bytes once (Faust's ``get`` reads twice and
    decodes the JSON) and keeps its decoded value while the store holds the same bytes; other
    bytes (a value recovered from the changelog) are decoded again, unreadable ones are absent.
    A write goes through Faust's changelog hook and stores the bytes it keeps."""
    from engine.core.usage import ContainerUsage

    _, tables = _tables(tmp_path, "rocksdb")
    usage = tables.usage
    assert usage.raw is not None and tables.workloads.raw is not None
    assert tables.policies.raw is None  # global, in memory
    table = usage.store
    store: Store = table.data
    store._db_for_partition(0)
    changelog: list[tuple[str, Any]] = []
    table.on_key_set = lambda key, value: changelog.append((key, value))  # no producer here
    token, event = _in_event_of(0)
    try:
        state = ContainerUsage()
        usage["c1"] = state
        held = store._get(b'"c1"')
        assert held == store._encode_value(state.to_dict())  # Faust's own encoding of the value
        assert changelog == [("c1", state.to_dict())]  # the changelog record, as Faust's set
        assert usage.get("c1") is state  # the bytes did not change: the decoded value
        hits = usage.cache.hits
        assert usage.get("c1") is state and usage.cache.hits == hits + 1

        other = ContainerUsage()
        other.ingest_arrays(
            0.0,
            300.0,
            {"cpu": (np.array([60.0]), np.array([0.5]))},
            history_seconds=14 * 86400,
            window_seconds=86400,
        )
        store._set(b'"c1"', store._encode_value(other.to_dict()))  # as a recovery writes it
        read = usage.get("c1")
        assert read is not state and read is not None
        assert read.to_dict() == other.to_dict()

        store._set(b'"c1"', b"{not json")
        assert usage.get("c1") is None
        assert "unreadable value of c1" in caplog.text
        assert usage.get("missing") is None
    finally:
        _current_event.reset(token)
    del event
