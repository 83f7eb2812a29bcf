"""Bulk changelog preload for the RocksDB table store: a table partition's changelog read straight
into its database when the partition is assigned, before Faust's own recovery looks at it.

Why: Faust's recovery hands every changelog record through its event machinery one at a time
(an ``Event``, a queue, a ``wait_for`` per record, highwater bookkeeping, the consumer thread's
method queue) — measured at 3,000 workloads (2026-12-01, ``/tmp`` experiment described in
docs/benchmarks.md "Changelog preload"): 12,000 usage records, 42 MiB, took Faust ~6 s to replay
into an empty RocksDB while a plain aiokafka consumer read the same records in 0.13-0.18 s.  A
replaced pod (empty data dir) and every first start pay that, ~29 s at 10,000 workloads.

What it does, per newly assigned *active* changelog partition of a table (standbys stay Faust's):
read from the offset the partition's database already holds (Faust's own ``persisted_offset``;
from the beginning when there is none) up to the end offset seen at the start, and write each
fetched run of records — puts, deletes for tombstones — into the partition's database **together
with the new persisted offset, in one RocksDB write batch**.  Faust's recovery then starts from
that offset and finds nothing (or only what was produced meanwhile) to replay.

Why that is safe: the database only ever holds a prefix of the changelog applied in order, the
same bytes Faust's ``apply_changelog_batch`` would write (raw key and value of each record), and
its offset moves in the same atomic batch as the values.  Whatever interrupts the preload — a
broker error, a timeout, a new rebalance (the generation changes) — leaves a consistent prefix,
and Faust's recovery replays the rest exactly as it would have replayed everything.  So a failed
preload costs time, never state: it is logged and the worker goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("kubefinops.tables.preload")

# Faust's key for the offset a partition database holds (faust.stores.rocksdb.Store.offset_key).
OFFSET_KEY = b"__faust\0offset__"
# A fetch that brings nothing for this long means the broker is not answering: leave the rest to
# Faust's recovery (which has its own timeouts and retries).
STALL_SECONDS = 20.0
# The consumer is kept between the tables of one rebalance (each table's store preloads in turn)
# and closed once idle this long.
IDLE_CLOSE_SECONDS = 5.0


@dataclass
class Loaded:
    """What one preload call wrote, per changelog partition."""

    records: int = 0
    bytes: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    complete: bool = True
    seconds: float = 0.0


class ChangelogPreload:
    """One per worker process, shared by the RocksDB stores of its tables."""

    def __init__(
        self,
        client_kwargs: Callable[[], dict[str, Any]],
        fetch_bytes: int,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._client_kwargs = client_kwargs
        self._fetch_bytes = fetch_bytes
        self._stall = stall_seconds
        self._consumer: AIOKafkaConsumer | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._warm: asyncio.Task[None] | None = None
        self._warm_jobs: list[Callable[[], Awaitable[None]]] = []

    async def _started(self) -> AIOKafkaConsumer:
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # below the log start (deleted): from its start
                max_partition_fetch_bytes=self._fetch_bytes,
                fetch_max_bytes=max(4 * self._fetch_bytes, 50 * 1024 * 1024),
                # The broker answers a connection's requests in order: an empty fetch held for
                # aiokafka's default 500 ms delays the offsets request queued behind it.
                fetch_max_wait_ms=20,
                client_id="kubefinops-changelog-preload",
            )
            await asyncio.wait_for(consumer.start(), timeout=self._stall)
            self._consumer = consumer
        return self._consumer

    def _close_later(self) -> None:
        loop = asyncio.get_running_loop()
        self._close_handle = loop.call_later(
            IDLE_CLOSE_SECONDS, lambda: loop.create_task(self.close())
        )

    async def close(self) -> None:
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception as exc:  # closing is best effort: nothing depends on it
                log.debug("changelog preload consumer stop: %s", type(exc).__name__)

    def warm_later(self, job: Callable[[], Awaitable[None]]) -> None:
        """Queue a table's warm-up (tables/store.py ``Store.warm``: every partition preloaded
        before any is assigned); one task runs the queue in order, :meth:`stop_warm` cancels it."""
        self._warm_jobs.append(job)
        if self._warm is None or self._warm.done():
            self._warm = asyncio.get_running_loop().create_task(self._run_warm())

    async def _run_warm(self) -> None:
        while self._warm_jobs:
            await self._warm_jobs.pop(0)()

    async def stop_warm(self) -> None:
        """Cancel the warm-up, if it still runs, and wait until it has stopped: it must not
        write a database while Faust's rebalance opens, reads or closes them."""
        task = self._warm
        self._warm_jobs.clear()
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # we ourselves are being cancelled
                raise
        except Exception as exc:  # the warm-up only saves time: never a reason to stop
            log.warning("changelog warm-up failed (%s)", type(exc).__name__)

    async def load(
        self,
        db_for: Callable[[int], Any],
        persisted: Callable[[int], int | None],
        tps: Iterable[tuple[str, int]],
        still_current: Callable[[], bool] = lambda: True,
        existing_only: bool = False,
    ) -> Loaded:
        """Read each (topic, partition) from past the offset its database holds to the end
        offset seen now, writing runs of records and the new offset in one batch each.

        ``db_for(partition)``: the partition's ``rocksdict.Rdict``; ``persisted(partition)``:
        the offset it holds (Faust's ``persisted_offset``); ``still_current()``: False once a
        newer rebalance made this one moot (the preload stops, what it wrote stays valid);
        ``existing_only``: first ask which topics exist and skip the others — a plain consumer's
        metadata request for an unknown topic asks the broker to create it, which a broker with
        ``auto.create.topics.enable`` does with its default (not compacted) configuration."""
        wanted = sorted(set(tps))
        done = Loaded()
        if not wanted:
            return done
        started = time.monotonic()
        async with self._lock:
            try:
                consumer = await self._started()
                if existing_only:
                    topics = await asyncio.wait_for(consumer.topics(), timeout=self._stall)
                    wanted = [(t, p) for t, p in wanted if t in topics]
                done = await self._read(consumer, db_for, persisted, wanted, still_current)
            except asyncio.CancelledError:
                # a warm-up stopped by the assignment (stop_warm): what it wrote is a prefix
                await self.close()
                raise
            except Exception as exc:
                # Faust's recovery replays whatever is left: the database holds a consistent
                # prefix (values and offset move together).  The exception's type only: its text
                # may carry broker addresses, never credentials, but nothing here needs it.
                done.complete = False
                log.warning(
                    "changelog preload stopped (%s); Faust's recovery replays the rest",
                    type(exc).__name__,
                )
                await self.close()
            else:
                self._close_later()
        done.seconds = time.monotonic() - started
        if done.records:
            topics = sorted({t for t, _ in done.offsets})
            log.info(
                "changelog preload: %d records, %.1f MiB of %s in %.2fs%s",
                done.records,
                done.bytes / (1024 * 1024),
                ", ".join(topics),
                done.seconds,
                "" if done.complete else " (incomplete)",
            )
        return done

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        db_for: Callable[[int], Any],
        persisted: Callable[[int], int | None],
        wanted: list[tuple[str, int]],
        still_current: Callable[[], bool],
    ) -> Loaded:
        done = Loaded()
        if not wanted:
            return done
        tps = [TopicPartition(t, p) for t, p in wanted]
        consumer.assign(tps)
        consumer.pause(*tps)  # no fetch before the offsets are known (see fetch_max_wait_ms)
        ends = await asyncio.wait_for(consumer.end_offsets(tps), timeout=self._stall)
        todo: set[TopicPartition] = set()
        for tp in tps:
            held = persisted(tp.partition)
            start = 0 if held is None else held + 1
            if ends[tp] > start:
                consumer.seek(tp, start)
                todo.add(tp)
        if not todo:
            return done
        consumer.resume(*todo)
        last_progress = time.monotonic()
        while todo:
            if not still_current():
                done.complete = False
                break
            fetched = await consumer.getmany(*todo, timeout_ms=500)
            if not fetched:
                if time.monotonic() - last_progress > self._stall:
                    raise TimeoutError("no changelog records fetched")
            else:
                last_progress = time.monotonic()
            for tp, records in fetched.items():
                if not records:
                    continue
                batch = rocksdict.WriteBatch(raw_mode=True)
                size = 0
                for record in records:
                    if record.key is None:  # not a table row (Faust never writes one)
                        continue
                    if record.value is None:
                        batch.delete(record.key)
                    else:
                        batch.put(record.key, record.value)
                        size += len(record.value)
                last = records[-1].offset
                batch.put(OFFSET_KEY, str(last).encode())
                db_for(tp.partition).write(batch)
                done.records += len(records)
                done.bytes += size
                done.offsets[(tp.topic, tp.partition)] = last
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
        return done
