"""Decoded values of the ``usage`` table, shared by the aggregator and the recommender."""

from __future__ import annotations

from typing import Any

from engine.core.usage import ContainerUsage
from engine.metrics import USAGE_CACHE_BYTES, USAGE_CACHE_EVICTIONS
from tables.cache import ByteLRU

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class UsageCache:
    """Decoded ``ContainerUsage`` objects, reused while the table holds the very dict we wrote.

    Decoding the sketches for every message would dominate the cost; identity of the stored dict
    tells whether the table value changed under us (changelog recovery after a rebalance).  The
    decoded objects are bounded by ``max_bytes`` (least recently used dropped first, see
    :class:`tables.cache.ByteLRU`), so memory does not grow with the number of containers.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._lru: ByteLRU[ContainerUsage] = ByteLRU(max_bytes)

    @property
    def lru(self) -> ByteLRU[ContainerUsage]:
        return self._lru

    def load(self, key: str, stored: dict[str, Any] | None) -> ContainerUsage:
        if not stored:
            self._lru.discard(key)
            return ContainerUsage()
        usage = self._lru.get(key, stored)
        if usage is None:
            usage = ContainerUsage.from_dict(stored)
            self.remember(key, stored, usage)
        return usage

    def remember(self, key: str, stored: dict[str, Any], usage: ContainerUsage) -> None:
        before = self._lru.evictions
        self._lru.put(key, stored, usage, usage.nbytes())
        USAGE_CACHE_BYTES.set(self._lru.bytes)
        if self._lru.evictions > before:
            USAGE_CACHE_EVICTIONS.inc(self._lru.evictions - before)
