"""Decoded values of the ``usage`` table, shared by the aggregator and the recommender."""

from __future__ import annotations

from typing import Any

from engine.core.usage import ContainerUsage


class UsageCache:
    """Decoded ``ContainerUsage`` objects, reused while the table holds the very dict we wrote.

    Decoding the sketches for every message would dominate the cost; identity of the stored dict
    tells whether the table value changed under us (changelog recovery after a rebalance).
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[dict[str, Any], ContainerUsage]] = {}

    def load(self, key: str, stored: dict[str, Any] | None) -> ContainerUsage:
        cached = self._items.get(key)
        if cached is not None and stored is cached[0]:
            return cached[1]
        usage = ContainerUsage.from_dict(stored) if stored else ContainerUsage()
        return usage

    def remember(self, key: str, stored: dict[str, Any], usage: ContainerUsage) -> None:
        self._items[key] = (stored, usage)
