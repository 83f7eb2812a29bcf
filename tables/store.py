"""The RocksDB table store with bounded memory (``KUBEFINOPS_TABLE_STORE=rocksdb``).

With Faust's ``memory://`` store every table value lives decoded in the Python heap (at 10,000
workloads the usage table alone is ~91 MiB of dicts) and every start replays the whole changelog.
With RocksDB (the ``rocksdict`` binding) the values live on disk under the worker's data dir,
each table partition in its own database, and Faust remembers in each database the changelog
offset it holds: a worker restarted on the same data dir (a container restarted in its pod,
emptyDir) replays only the changelog's tail.

Faust's RocksDB defaults are sized for a dedicated host: a 2 GiB block cache and 3 x 64 MiB of
memtables **per partition database** (a worker here opens ~30).  This store shares ONE block
cache and ONE write-buffer budget (RocksDB's ``WriteBufferManager``) across every database of the
process, so RocksDB's memory is bounded by two settings whatever the partition count
(``rocksdb_block_cache_bytes``, ``rocksdb_write_buffer_bytes``).  The page cache of the SST files
is the kernel's: charged to the pod's cgroup, but reclaimable.

Reads: Faust's store reads a key only in the database of the *current event's* partition.  The
gate decides a batch of records taken across partitions (``take_events``), so the current event
is the batch's last one and a workload of another partition would read as absent.  This store
reads the current event's partition first and, when the key is not there, looks it up in the
others (bloom filters first) — what the memory store gives by holding every partition in one
dict.  Writes are Faust's: into the current event's partition, the same one as its changelog
record.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import faust.stores
import rocksdict
from faust.exceptions import DecodeError
from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event
from faust.types import TP, CollectionT

from engine.adapters.kafka import client_kwargs
from engine.settings import Settings, TableStore
from tables.preload import ChangelogPreload

SCHEME = "kfo-rocksdb"
# per database: memtables are flushed once one reaches this size (the shared budget flushes
# earlier when the sum of all databases' memtables is over it)
_WRITE_BUFFER_PER_DB = 4 * 1024 * 1024
_MAX_OPEN_FILES_PER_DB = 64
_shared: dict[tuple[int, int], tuple[rocksdict.Cache, rocksdict.WriteBufferManager]] = {}


def _shared_memory(cache_bytes: int, write_bytes: int) -> tuple[Any, Any]:
    """One block cache and one write-buffer budget per process (per distinct setting pair)."""
    key = (cache_bytes, write_bytes)
    if key not in _shared:
        cache = rocksdict.Cache(max(cache_bytes, 1024 * 1024))
        # memtables are also charged to the block cache: one bound for both
        manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            write_bytes, False, cache
        )
        _shared[key] = (cache, manager)
    return _shared[key]


class BoundedOptions(faust_rocksdb.RocksDBOptions):
    """Faust's options with small per-database buffers and the process-wide shared caches."""

    def __init__(self, cache_bytes: int, write_bytes: int) -> None:
        super().__init__(
            max_open_files=_MAX_OPEN_FILES_PER_DB,
            write_buffer_size=min(_WRITE_BUFFER_PER_DB, write_bytes),
            max_write_buffer_number=2,
            target_file_size_base=16 * 1024 * 1024,
            use_rocksdict=True,
        )
        self.cache_bytes = cache_bytes
        self.write_bytes = write_bytes

    def as_options(self) -> Any:
        cache, manager = _shared_memory(self.cache_bytes, self.write_bytes)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(_MAX_OPEN_FILES_PER_DB)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(manager)
        options.set_max_background_jobs(2)
        options.set_keep_log_file_num(2)
        options.set_max_log_file_size(1024 * 1024)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(10, True)
        table.set_block_cache(cache)
        # index and filter blocks in the (bounded) block cache, not on the heap per open file
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        db = rocksdict.Rdict(
            str(path), options=self.as_options(), access_type=rocksdict.AccessType.read_write()
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db


class Store(faust_rocksdb.Store):
    """Faust's RocksDB store with :class:`BoundedOptions` and reads across partitions."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        options = dict(kwargs.pop("options", None) or {})
        cache_bytes = int(options.pop("block_cache_bytes", 16 * 1024 * 1024))
        write_bytes = int(options.pop("write_buffer_bytes", 16 * 1024 * 1024))
        preload = options.pop("preload", None)
        super().__init__(url, app, table, options=options, driver="rocksdict", **kwargs)
        self.rocksdb_options = BoundedOptions(cache_bytes, write_bytes)
        self.preload: ChangelogPreload | None = preload
        self._warmed: set[int] = set()  # partitions the warm-up opened before any assignment

    async def warm(self) -> None:
        """Preload every partition of this table's changelog before the first assignment.

        A new member waits for the group — a replaced pod ~26 s, until the killed member's session
        expires — with nothing to do; what it preloads meanwhile, its recovery does not read after
        the assignment.  Any partition database holding a prefix of the changelog and its offset
        is a valid start for Faust's recovery, so reading partitions this worker will not get is
        safe; their databases are closed at the assignment (see :meth:`on_rebalance`).  Started
        when the store starts (:meth:`on_start`, before the worker joins its group), cancelled by
        the first rebalance (``stop_warm``)."""
        if self.preload is None or self.table.is_global:
            return
        topic = self.table.changelog_topic.get_topic_name()
        partitions = range(self.table.partitions or self.app.conf.topic_partitions)
        self._warmed |= {p for p in partitions if p not in self._dbs}

        await self.preload.load(
            self._db_for_partition,
            self._persisted,
            {(topic, p) for p in partitions},
            still_current=lambda: self.app.consumer_generation_id == 0,
            existing_only=True,  # a first start: Faust has not created its changelogs yet
        )

    def _persisted(self, partition: int) -> int | None:
        """The changelog offset this table's partition database holds (Faust's)."""
        return self.persisted_offset(TP(self.table.changelog_topic.get_topic_name(), partition))

    async def on_start(self) -> None:
        await super().on_start()
        if self.preload is not None and not self.table.is_global:
            self.preload.warm_later(self.warm)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """Faust's (close the revoked partitions' databases, open the new ones), then the newly
        assigned active changelog partitions preloaded in bulk (tables/preload.py): Faust's
        recovery, which reads each database's offset right after this, then only replays what
        the preload did not reach."""
        if self.preload is not None:
            await self.preload.stop_warm()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        mine = self.table.changelog_topic.topics
        if self._warmed:
            # the warm-up's databases of partitions this worker did not get: closed, as Faust
            # closes revoked ones (a read looks a key up in every open database)
            held = {tp.partition for tp in assigned if tp.topic in mine}
            self._close_dbs(self._warmed - held)
            self._warmed.clear()
        if self.preload is None or not newly_assigned:
            return
        standbys = self.app.assignor.assigned_standbys()
        tps = {
            (tp.topic, tp.partition)
            for tp in newly_assigned
            if tp.topic in mine and tp not in standbys
        }
        if not tps:
            return
        async with self.db_lock:
            await self.preload.load(
                self._db_for_partition,
                self._persisted,
                tps,
                still_current=lambda: generation_id == self.app.consumer_generation_id,
            )

    def revoke_partitions(self, table: CollectionT, tps: AbstractSet[TP]) -> None:
        """Faust's, without its ``gc.collect()`` when no database was closed: Faust collects on
        every rebalance for every table so that a revoked partition's database handle is gone
        before it may be opened again — with nothing revoked there is no handle to wait for, and
        each collection walks the whole heap (~0.4-0.75 s of a 3,000-workload start, py-spy)."""
        mine = table.changelog_topic.topics
        self._close_dbs(tp.partition for tp in tps if tp.topic in mine)

    def _close_dbs(self, partitions: Iterable[int]) -> None:
        """Drop these partitions' open databases; collect only when one was open (its handle
        must be gone before the partition's database may be opened again)."""
        closed = [p for p in partitions if self._dbs.pop(p, None) is not None]
        if closed:
            gc.collect()

    async def stop(self) -> None:
        if self.preload is not None:
            await self.preload.stop_warm()
            await self.preload.close()
        await super().stop()

    @property
    def basename(self) -> Path:
        # the table's name, whatever the URL ("kfo-rocksdb://local": a URL with no host is
        # falsy for yarl, and Faust then falls back to the app's store)
        return Path(self.table_name)

    def _get(self, key: bytes) -> bytes | None:
        event = current_event()
        if event is not None and not self.table.is_global and not self.table.use_partitioner:
            partition = event.message.partition
            db = self._dbs.get(partition)
            value = None if db is None else db.get(key)
            if value is not None:
                self._key_index[key] = partition
                return value
        found = self._get_bucket_for_key(key)
        return None if found is None else found.value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None


faust.stores.STORES[SCHEME] = f"{__name__}:Store"


class RawValues:
    """A RocksDB-backed Faust table's values as the bytes its store holds
    (:class:`tables.state.RawAccess`, what :class:`~tables.state.TypedTable` reads them by).

    Faust's ``table.get(key)`` reads a key twice (``in``, then ``[]``: FastUserDict), decodes
    the ~8 KiB JSON value, and the decoded-value cache then compared the two dicts: ~7 % of a
    worker's burst in py-spy.  Here: one read, and the cache compares bytes.  A write is
    Faust's ``table[key] = value`` (the changelog record, then the value encoded once into the
    store), keeping the bytes.  The store is looked up on every call: Faust creates it lazily."""

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    def get_raw(self, key: str) -> bytes | None:
        store = self.table.data
        value: bytes | None = store._get(store._encode_key(key))
        return value

    def decode_raw(self, raw: bytes) -> Any:
        try:
            return self.table.data._decode_value(raw)
        except DecodeError as exc:  # an unreadable value, as TypedTable says
            raise ValueError(str(exc)) from None

    def set_raw(self, key: str, stored: Any) -> bytes:
        table = self.table
        store = table.data
        raw: bytes = store._encode_value(stored)
        table.on_key_set(key, stored)  # the changelog record (ManagedUserDict.__setitem__)
        store._set(store._encode_key(key), raw)
        return raw


def raw_access(settings: Settings) -> type[RawValues] | None:
    """What :meth:`tables.state.Tables.over` reads the typed tables' bytes with (RocksDB)."""
    return RawValues if settings.table_store is TableStore.ROCKSDB else None


def store_url(settings: Settings) -> str:
    """The ``store`` of the app's tables for ``settings.table_store``."""
    # with a host: Faust takes a table's store URL only when it is truthy, and yarl's URL
    # without one is falsy (the table would silently use the app's memory store)
    return f"{SCHEME}://local" if settings.table_store is TableStore.ROCKSDB else "memory://local"


def store_options(settings: Settings) -> dict[str, Any] | None:
    """The per-table ``options`` that :class:`Store` reads (None for the memory store)."""
    if settings.table_store is not TableStore.ROCKSDB:
        return None
    options: dict[str, Any] = {
        "block_cache_bytes": settings.rocksdb_block_cache_bytes,
        "write_buffer_bytes": settings.rocksdb_write_buffer_bytes,
    }
    if settings.table_preload:
        options["preload"] = _preload_for(settings)
    return options


_preloads: dict[int, ChangelogPreload] = {}


def _preload_for(settings: Settings) -> ChangelogPreload:
    """One preload (one consumer) shared by every table of a worker (per settings object)."""
    key = id(settings)
    if key not in _preloads:
        _preloads[key] = ChangelogPreload(
            lambda: client_kwargs(settings), fetch_bytes=settings.kafka_max_fetch_bytes
        )
    return _preloads[key]
