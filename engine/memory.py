"""Give freed heap memory back to the operating system (glibc ``malloc_trim``).

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
import logging
from functools import cache

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


def after_signal(*_: object, **__: object) -> None:
    """``trim`` as a Faust/mode signal receiver (e.g. ``app.on_rebalance_complete``)."""
    trim()
