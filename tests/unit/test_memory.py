"""engine.memory.trim: freed heap pages go back to the OS (glibc), a no-op elsewhere."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import memory


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(memory._libc() is None, reason="not glibc: trim is a no-op")
def test_trim_returns_freed_pages_that_glibc_keeps_mapped() -> None:
    # 60 MB in 3 KB blocks, then every block but one in 50 freed: the survivors pin glibc's heap
    # top, so without a trim the freed pages stay in RSS
    blocks = [bytes(3000) for _ in range(20_000)]
    keep = blocks[::50]
    del blocks
    before = rss_kib()
    assert memory.trim() is True
    after = rss_kib()
    assert before - after > 30_000, (before, after)
    assert len(keep) == 400


def test_trim_without_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.trim() is False


def test_after_signal_trims_whatever_the_signal_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1) or True)
    memory.after_signal(object(), signal=object())
    assert calls == [1]


def test_heap_dumps_show_what_stays_alive_between_two_dumps(tmp_path: Path) -> None:
    dumps = memory.HeapDumps(tmp_path, frames=4, top=50)
    import tracemalloc

    tracemalloc.start(4)
    try:
        dumps.dump()
        retained = [bytearray(4096) for _ in range(500)]  # ~2 MiB kept alive
        second = dumps.dump().read_text()
    finally:
        tracemalloc.stop()
    assert second.startswith("traced ") and "RSS" in second.splitlines()[0]
    diff = second.split("differences to the previous dump", 1)[1]
    assert "test_memory.py" in diff.splitlines()[1], diff[:500]  # the largest growth: ours
    assert len(retained) == 500


def run_probe(code: str) -> list[str]:
    """``code`` run in a fresh interpreter from the repository root; its stdout's words."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()


_MMAP_PROBE = r"""
import ctypes, sys
from engine import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = memory._libc()
libc.mallinfo2.restype = MallInfo2
mapped = lambda: int(libc.mallinfo2().hblkhd)  # bytes in blocks served by their own mmap
assert memory.set_mmap_threshold(8 * 1024 * 1024 + 1)
before = mapped()
in_heap = bytearray(4 * 1024 * 1024)
after_raised = mapped() - before
assert memory.set_mmap_threshold(1024 * 1024)
own_map = bytearray(4 * 1024 * 1024)
after_fixed = mapped() - before
print(after_raised, after_fixed, memory.set_mmap_threshold(0))
"""


@pytest.mark.skipif(memory._libc() is None, reason="not glibc: no mmap threshold")
def test_fixed_mmap_threshold_maps_big_blocks_that_the_dynamic_one_keeps_in_the_heap() -> None:
    # glibc raises its dynamic threshold to the size of a freed mmapped block: after one 8 MB
    # block, 4 MB blocks are carved from the heap (and stay in RSS after free until a trim).
    # In a fresh interpreter: in this one, free heap chunks left by earlier tests can serve a
    # 4 MB block whatever the threshold (glibc only maps when no free chunk fits).
    out = run_probe(_MMAP_PROBE)
    after_raised, after_fixed = int(out[0]), int(out[1])
    assert after_raised < 4 * 1024 * 1024  # raised threshold: from the heap
    assert after_fixed >= 4 * 1024 * 1024  # fixed 1 MiB threshold: its own mapping
    assert out[2] == "False"  # 0: glibc's default left alone


def test_tune_gc_raises_the_young_threshold_only_and_zero_leaves_it() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        memory.tune_gc(0)
        assert gc.get_threshold() == (700, 10, 10)
        memory.tune_gc(50_000)
        assert gc.get_threshold() == (50_000, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_gc_pauses_are_counted_per_generation_until_uninstalled() -> None:
    enabled = gc.isenabled()
    gc.disable()  # only the explicit collections below run: exact counts
    pauses = memory.GcPauses().install()
    try:
        pauses.install()  # twice: still one callback
        assert gc.callbacks.count(pauses._callback) == 1
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.uninstall()
        if enabled:
            gc.enable()
    assert pauses._callback not in gc.callbacks
    assert pauses.collections == [1, 0, 2]  # each counted once, in its own generation
    n = list(pauses.collections)
    gc.collect()
    assert pauses.collections == n  # uninstalled: no longer counted


def test_gc_pauses_reach_the_metrics_endpoint() -> None:
    from engine import metrics

    def full_collections() -> float:
        text = metrics.scrape().decode()
        assert 'kubefinops_gc_pause_seconds_total{generation="2"}' in text, text[-2000:]
        found = re.search(r'^kubefinops_gc_collections_total\{generation="2"\} (\S+)$', text, re.M)
        assert found, text[-2000:]
        return float(found.group(1))

    enabled = gc.isenabled()
    gc.disable()  # no automatic full collection between the two scrapes
    memory.GC_PAUSES.install()
    try:
        before = full_collections()
        gc.collect()
        assert full_collections() == before + 1
        assert 'kubefinops_gc_collections_total{generation="0"}' in metrics.scrape().decode()
    finally:
        memory.GC_PAUSES.uninstall()  # the rest of the session runs without the callback
        if enabled:
            gc.enable()


_FREEZE_PROBE = r"""
import gc, weakref
from engine import memory

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

garbage = cycle()
dead = weakref.ref(garbage)
del garbage  # a cycle: only a collection frees it
alive = [[i] for i in range(100_000)]  # the process's long-lived objects (lists: tracked)
kept = Node()
kept_ref = weakref.ref(kept)
gc.collect()
gc.disable()  # no automatic collection between here and the counts below
dead_later = cycle()
dead_later_ref = weakref.ref(dead_later)
del dead_later
tracked = len(gc.get_objects())
frozen = memory.freeze_heap()
print(dead_later_ref() is None, frozen >= 100_000, len(gc.get_objects()) < tracked // 10)
del kept  # frozen, still freed by reference counting
print(kept_ref() is None, len(alive))
"""


def test_freeze_heap_collects_then_takes_the_survivors_out_of_later_collections() -> None:
    # In a fresh interpreter: freezing this one would hide pytest's objects from every later
    # test's collections.
    out = run_probe(_FREEZE_PROBE)
    # the garbage cycle made just before was collected, not frozen; >= 100k objects frozen,
    # and the collector's generations hold almost nothing afterwards
    assert out[:3] == ["True", "True", "True"], out
    assert out[3] == "True"  # a frozen object is still freed when its last reference goes
    assert out[4] == "100000"
