"""engine.memory.trim: freed heap pages go back to the OS (glibc), a no-op elsewhere."""

from __future__ import annotations

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
    out = subprocess.run(
        [sys.executable, "-c", _MMAP_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    after_raised, after_fixed = int(out[0]), int(out[1])
    assert after_raised < 4 * 1024 * 1024  # raised threshold: from the heap
    assert after_fixed >= 4 * 1024 * 1024  # fixed 1 MiB threshold: its own mapping
    assert out[2] == "False"  # 0: glibc's default left alone
