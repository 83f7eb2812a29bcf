"""A least-recently-used cache of decoded table values, bounded by (estimated) bytes.

The ``usage`` table holds each container's state as its compact JSON value (~4-8 KiB); the
decoded object the aggregator works on is several times larger.  Keeping every decoded value
would make memory grow with the fleet (1.6 GiB at 10,000 workloads was measured), so the decoded
copies live here, bounded by ``usage_cache_bytes``: the least recently used ones are dropped and
decoded again from the table when next needed.  An entry is valid only while the table still
holds the value it was decoded from (or written as): the very object (the memory store hands
back what it holds), or equal bytes (under RocksDB the typed tables read a value as the bytes
the store holds, :class:`tables.store.RawValues`: comparing ~8 KiB of bytes is a memcmp, where
decoding them is a JSON parse and a state decode).  A value
replaced by a different one (recovered from the changelog after a rebalance) is decoded again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """``key -> (stored, decoded, size)``; evicts least recently used beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._items: OrderedDict[str, tuple[object, V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, stored: object) -> V | None:
        """The decoded value of ``stored`` if cached (marks it recently used), else None."""
        item = self._items.get(key)
        if item is None or (item[0] is not stored and item[0] != stored):
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: str, stored: object, value: V, size: int) -> None:
        """Remember ``value`` as the decoding of ``stored``; a value larger than the whole
        bound is not kept (it would only evict everything else)."""
        self.discard(key)
        if size > self.max_bytes:
            return
        self._items[key] = (stored, value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def discard(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= item[2]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
