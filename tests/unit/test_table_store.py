"""The table store setting: the tables really get the RocksDB store (a store URL Faust finds
falsy silently falls back to the app's memory store), and a read finds a key in whichever
partition database holds it, whatever the current event's partition (the gate decides batches
taken across partitions)."""

from __future__ import annotations

import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event

from engine.app import create_app
from engine.settings import load_settings
from tables import declare_tables
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
    # in memory whatever the setting: the global policies, the executor's transient pending rows
    assert isinstance(tables.policies.store.data, MemoryStore)
    assert isinstance(tables.pending_decisions.data, MemoryStore)
    assert isinstance(tables.pending_cycles.data, MemoryStore)
    path = tables.usage.store.data.partition_path(1)  # under the worker's data dir
    assert path.name == "usage-1.db" and path.is_relative_to(tmp_path), path


def test_memory_setting_keeps_every_table_in_memory(tmp_path: Path) -> None:
    _, tables = _tables(tmp_path, "memory")
    for table in (tables.usage, tables.workloads, tables.last_action, tables.policies):
        assert isinstance(table.store.data, MemoryStore), table.name


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
