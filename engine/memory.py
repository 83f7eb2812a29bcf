"""The worker's memory: freed heap given back to the OS (glibc ``malloc_trim``), and CPython's
cyclic garbage collector kept out of the way (:func:`tune_gc`, :func:`freeze_heap`,
:class:`GcPauses`).

Giving freed heap memory back to the operating system (glibc ``malloc_trim``):

The worker frees a lot of memory in bursts — changelog records replayed at start, fetch buffers
of an ingest backlog, a cycle's decisions — in blocks that CPython hands to glibc's ``malloc``
(objects over 512 bytes: the usage values, fetched records). glibc keeps freed blocks in the
middle of its heaps mapped, so RSS stays at the high-water mark of the last burst although
Python no longer uses it. ``malloc_trim(0)`` releases the free pages of every arena
(``madvise(MADV_DONTNEED)``); the worker calls it on a timer (``malloc_trim_interval_seconds``).
Not glibc (musl, macOS): a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
import tracemalloc
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("kubefinops.memory")


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def trim() -> bool:
    """Return freed heap pages to the OS; True when glibc released any."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def set_mmap_threshold(nbytes: int) -> bool:
    """Serve blocks of ``nbytes`` and more with their own ``mmap`` (unmapped when freed) — a
    fixed threshold, which also stops glibc from raising it (up to 32 MiB) each time such a
    block is freed.  With the dynamic threshold the multi-MiB fetch responses and batches of a
    cycle land in the heap and keep RSS at their high-water mark.  0: leave glibc's default.
    True when glibc took it."""
    libc = _libc()
    if libc is None or nbytes <= 0:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(nbytes)))


def after_signal(*_: object, **__: object) -> None:
    """``trim`` as a Faust/mode signal receiver (e.g. ``app.on_rebalance_complete``)."""
    trim()


# --- CPython's cyclic garbage collector ------------------------------------------------------
# A collection stops the worker's event loop while it walks every tracked object of its
# generation.  With CPython's default thresholds (a young collection every 700 net allocations of
# containers) a 1,000-workload burst ran 154-408 young, 14-37 middle and 1-3 full collections,
# the full ones 120-250 ms each: 0.44-0.88 s of a 7-9 s burst (1.1 s in a 10,000-workload worker),
# pauses that show in every latency figure (docs/benchmarks.md, "Burst: the garbage
# collector").  Nearly all of the worker's objects live as long as the process (modules, the
# app, the agents, the tables and their decoded states), and the event-per-record pipeline
# allocates mostly acyclic, short-lived objects that reference counting frees at once: a larger
# first threshold makes the young collections rare, and freezing what is alive once the worker
# is ready takes the long-lived objects out of every later full collection.


def tune_gc(gen0_threshold: int) -> None:
    """Collect the young generation after ``gen0_threshold`` net allocations instead of
    CPython's 700; the older generations' thresholds stay.  0: leave CPython's."""
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def freeze_heap() -> int:
    """Collect what is garbage now, then move every surviving object to the permanent generation
    (``gc.freeze``), which no later collection walks; returns how many objects are frozen.

    Once per process, when the worker first becomes ready: the objects alive then are the
    process's own (modules, app, agents, recovered tables).  A frozen object is still freed by
    reference counting; only a reference cycle among frozen objects that later becomes garbage
    is never collected, which the collection just before the freeze keeps to the objects that
    were alive at that moment."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Time spent in garbage collections, per generation (0 young, 1 middle, 2 full), from
    ``gc.callbacks``.  Plain totals, read by the metrics collector at scrape time: a callback
    runs inside whatever allocation triggered the collection, in any thread, so it takes no
    lock and touches no Prometheus object.  The time is wall time: it includes finalizers that
    the collection ran."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self.max_seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]  # CPython's: 0, 1 or 2
        took = time.perf_counter() - self._started
        self.seconds[gen] += took
        self.collections[gen] += 1
        if took > self.max_seconds[gen]:
            self.max_seconds[gen] = took

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


GC_PAUSES = GcPauses()  # the process's one meter; installed by the worker (engine/worker.py)


def rss_bytes() -> int:
    """This process's resident set (VmRSS), 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class HeapDumps:
    """Debug only (``KUBEFINOPS_DEBUG_TRACEMALLOC_FRAMES`` > 0, off by default: tracing slows the
    worker and costs memory): ``tracemalloc`` runs from start, and each SIGUSR2 writes to
    ``out_dir`` (the worker's ``_on_sigusr2``: mode's would enter pdb) the top allocations by
    traceback still alive, their difference to the previous
    dump (what a cycle retained), and the traced total next to RSS: a big RSS over the traced
    total is allocator fragmentation or non-Python memory (RocksDB, OpenSSL...), not live
    objects."""

    def __init__(self, out_dir: Path, frames: int, top: int = 30) -> None:
        self.out_dir, self.frames, self.top = out_dir, frames, top
        self.previous: tracemalloc.Snapshot | None = None
        self.count = 0

    def install(self) -> None:
        tracemalloc.start(self.frames)

    def dump(self) -> Path:
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        snapshot = tracemalloc.take_snapshot().filter_traces(ignore)
        traced, peak = tracemalloc.get_traced_memory()
        self.count += 1
        path = self.out_dir / f"heap-{os.getpid()}-{self.count}.txt"
        lines = [
            f"traced {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f}), "
            f"RSS {rss_bytes() / 2**20:.1f} MiB",
            "",
            f"== top {self.top} by traceback",
        ]
        for stat in snapshot.statistics("traceback")[: self.top]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9,d} blocks")
            lines += [f"    {line}" for line in stat.traceback.format(limit=self.frames)]
        if self.previous is not None:
            lines += ["", f"== top {self.top} differences to the previous dump (by line)"]
            for diff in snapshot.compare_to(self.previous, "lineno")[: self.top]:
                lines.append(str(diff))
        self.previous = snapshot
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        log.warning("heap dump written to %s", path)
        return path
