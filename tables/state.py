"""Typed table values: what the agents read and write, as models (the tables store JSON dicts).

A :class:`TypedTable` wraps any mutable mapping — a Faust table in a worker, a plain ``dict`` in a
unit test — with a codec, so handlers get and put models while the changelog stays JSON that
kcat can read.  Decoded values are cached (:class:`tables.cache.ByteLRU`) and reused while the
mapping still holds the value that was decoded (or written) last — the very object (the memory
store), or the same bytes (RocksDB: :class:`RawAccess`).  This is what makes reading
the usage sketches for every message affordable; the usage cache is bounded by
``usage_cache_bytes`` so memory does not grow with the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.core.model import WorkloadSpec
from engine.core.policy import Policy, validate_policy
from engine.core.usage import ContainerUsage
from engine.core.verification import Verification
from engine.errors import InvalidPolicy
from engine.metrics import USAGE_CACHE_BYTES, USAGE_CACHE_EVICTIONS
from tables.cache import ByteLRU

DEFAULT_USAGE_CACHE_BYTES = 24 * 1024 * 1024  # = Settings.usage_cache_bytes
# Decoded specs / last actions / verifications kept per table (least recently used dropped and
# decoded again from the table when next read: ~20-50 us each).  Unbounded, the workloads cache
# held every workload's decoded spec: ~4.7 KB each, ~47 MiB at 10,000 workloads (tracemalloc of
# a bench_scale worker, docs/benchmarks.md).  A cycle reads a workload's spec right after
# writing it, so a small cache serves it.
MODEL_CACHE_ENTRIES = 2048

log = logging.getLogger("kubefinops.tables")

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)


class RawAccess(Protocol):
    """A store that hands out a value as the bytes it holds (a RocksDB table,
    :class:`tables.store.RawValues`): one read of the bytes, compared with those the cached
    decoded value came from, instead of Faust's read (a lookup, then the read again) and JSON
    decode of a ~8 KiB value and a comparison of two dicts on every cache hit."""

    def get_raw(self, key: str) -> bytes | None: ...

    def decode_raw(self, raw: bytes) -> Any:
        """The stored value (a JSON dict) of ``raw``."""

    def set_raw(self, key: str, stored: Any) -> bytes:
        """Write ``stored`` (with its changelog record); return the bytes the store holds."""


class Codec(Protocol[T]):
    def load(self, stored: Any) -> T: ...

    def dump(self, value: T) -> Any: ...

    def size(self, value: T) -> int:
        """Estimated bytes of a decoded value (what the cache bound counts)."""


class ModelCodec(Generic[B]):
    """A pydantic model stored as its JSON-mode dict.  ``size``: what one decoded value counts
    against its table's cache bound (0: not counted, for the few policies); the per-workload
    tables count entries (1 each) so their caches stay bounded whatever the fleet size."""

    def __init__(self, model: type[B], size: int = 0) -> None:
        self.model = model
        self._size = size

    def load(self, stored: Any) -> B:
        return self.model.model_validate(stored)

    def dump(self, value: B) -> Any:
        return value.model_dump(mode="json")

    def size(self, value: B) -> int:
        return self._size


class PolicyCodec(ModelCodec[Policy]):
    def __init__(self) -> None:
        super().__init__(Policy)

    def load(self, stored: Any) -> Policy:
        if not isinstance(stored, dict):
            raise InvalidPolicy("value", "not a JSON object")
        return validate_policy(stored)


class UsageCodec:
    """The windowed usage sketches of one container (:class:`ContainerUsage`), stored as the
    JSON dict of ``to_dict()`` (Faust encodes it, with ``orjson`` when installed).

    Pre-encoding the value to bytes with a ``raw`` changelog serializer was tried for issue 11
    and reverted: with it, two workers sharing the metrics topic stalled in 2 of 3 benchmark
    runs (one stayed idle with a lag after the rebalance; bench/bench_pipeline.py
    ``--cpu-workers 2``), never without it, for no measurable gain (Faust's JSON codec is orjson
    too).  The stall was later seen with JSON values too and traced to partitions never
    committed (``engine.app.seek_to_committed_or_reset``), not to the serializer.  Bytes still
    load, in case such a value is in a changelog."""

    def load(self, stored: Any) -> ContainerUsage:
        if isinstance(stored, bytes | bytearray | memoryview | str):
            stored = orjson.loads(stored)
        return ContainerUsage.from_dict(stored) if stored else ContainerUsage()

    def dump(self, value: ContainerUsage) -> Any:
        return value.to_dict()

    def size(self, value: ContainerUsage) -> int:
        return value.nbytes()


class LastAction(BaseModel):
    """The last change applied to a workload (the gate's cooldown and idempotency)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    applied_at: float | None = None  # None: only a verification outcome recorded so far
    decision_id: str | None = None
    commit_sha: str | None = None
    cycle: str = ""  # the apply cycle that applied it
    # verified apply (docs/verification.md): written from kubefinops.verifications
    verification: str | None = None  # the last outcome of its last change
    verification_id: str | None = None
    penalty_until: float | None = None  # no decrease before this time (a change regressed)
    penalty_cause: str | None = None
    hold_until: float | None = None  # not-synced: held until the cluster shows the change
    hold_reason: str | None = None
    hold_expected: list[dict[str, Any]] | None = None


_UNREADABLE = (ValueError, TypeError, KeyError, ValidationError, InvalidPolicy)  # orjson's too


UNBOUNDED = 2**62


class TypedTable(Generic[T]):
    """A mapping of ``str`` keys to ``T`` values over a mapping of JSON values."""

    def __init__(
        self,
        store: MutableMapping[Any, Any],
        codec: Codec[T],
        name: str = "",
        *,
        max_cache_bytes: int = UNBOUNDED,
        raw: RawAccess | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.name = name
        self.cache: ByteLRU[T] = ByteLRU(max_cache_bytes)
        # the store's bytes (RocksDB): the cache keys a decoded value by the bytes it came from
        self.raw = raw

    def get(self, key: str) -> T | None:
        """The value, or None when absent (or unreadable: logged, treated as absent)."""
        raw = self.raw
        stored = self.store.get(key) if raw is None else raw.get_raw(key)  # bytes under RocksDB
        if stored is None:
            self.cache.discard(key)
            return None
        cached = self.cache.get(key, stored)
        if cached is not None:
            return cached
        try:
            value = self.codec.load(stored if raw is None else raw.decode_raw(stored))
        except _UNREADABLE as exc:
            log.warning("table %s: ignoring unreadable value of %s: %s", self.name, key, exc)
            return None
        self._remember(key, stored, value)
        return value

    def __setitem__(self, key: str, value: T) -> None:
        stored = self.codec.dump(value)
        if self.raw is None:
            self.store[key] = stored
        else:
            stored = self.raw.set_raw(key, stored)
        self._remember(key, stored, value)

    def _remember(self, key: str, stored: Any, value: T) -> None:
        self.cache.put(key, stored, value, self.codec.size(value))

    def pop(self, key: str) -> None:
        self.store.pop(key, None)
        self.cache.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def keys(self) -> list[str]:
        return [str(k) for k in list(self.store.keys())]

    def items(self) -> Iterator[tuple[str, T]]:
        """Every readable value (unreadable ones are logged and skipped)."""
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value


class UsageTable(TypedTable[ContainerUsage]):
    """The ``usage`` table: decoded sketches bounded by bytes, with the cache's own metrics."""

    def __init__(
        self,
        store: MutableMapping[Any, Any],
        max_cache_bytes: int,
        raw: RawAccess | None = None,
    ) -> None:
        super().__init__(store, UsageCodec(), "usage", max_cache_bytes=max_cache_bytes, raw=raw)

    def _remember(self, key: str, stored: Any, value: ContainerUsage) -> None:
        before = self.cache.evictions
        super()._remember(key, stored, value)
        USAGE_CACHE_BYTES.set(self.cache.bytes)
        if self.cache.evictions > before:
            USAGE_CACHE_EVICTIONS.inc(self.cache.evictions - before)


@dataclass(frozen=True)
class Tables:
    """The agents' durable state (declared over Faust tables by :func:`tables.declare_tables`)."""

    usage: UsageTable
    workloads: TypedTable[WorkloadSpec]
    last_action: TypedTable[LastAction]
    watermarks: MutableMapping[str, float]
    policies: TypedTable[Policy]
    # The executor's decisions waiting for their cycle (agents/executor.py): cycle -> facts, and
    # "<cycle>|<workload id>" -> the decision (JSON dicts: one row per decision, never one
    # value that grows with the fleet).
    pending_cycles: MutableMapping[str, Any]
    pending_decisions: MutableMapping[str, Any]
    verifications: TypedTable[Verification]

    @classmethod
    def over(
        cls,
        *,
        usage: MutableMapping[Any, Any],
        workloads: MutableMapping[Any, Any],
        last_action: MutableMapping[Any, Any],
        watermarks: MutableMapping[str, float],
        policies: MutableMapping[Any, Any],
        verifications: MutableMapping[Any, Any],
        usage_cache_bytes: int = DEFAULT_USAGE_CACHE_BYTES,
        pending_cycles: MutableMapping[Any, Any] | None = None,
        pending_decisions: MutableMapping[Any, Any] | None = None,
        raw_access: Callable[[MutableMapping[Any, Any]], RawAccess] | None = None,
    ) -> Tables:
        """``raw_access``: the typed tables' stores read as bytes (RocksDB, :class:`RawAccess`)."""

        def raw(store: MutableMapping[Any, Any]) -> RawAccess | None:
            return None if raw_access is None else raw_access(store)

        return cls(
            usage=UsageTable(usage, usage_cache_bytes, raw(usage)),
            workloads=TypedTable(
                workloads,
                ModelCodec(WorkloadSpec, size=1),
                "workloads",
                max_cache_bytes=MODEL_CACHE_ENTRIES,
                raw=raw(workloads),
            ),
            last_action=TypedTable(
                last_action,
                ModelCodec(LastAction, size=1),
                "last-action",
                max_cache_bytes=MODEL_CACHE_ENTRIES,
                raw=raw(last_action),
            ),
            watermarks=watermarks,
            policies=TypedTable(policies, PolicyCodec(), "policies"),
            pending_cycles={} if pending_cycles is None else pending_cycles,
            pending_decisions={} if pending_decisions is None else pending_decisions,
            verifications=TypedTable(
                verifications,
                ModelCodec(Verification, size=1),
                "verifications",
                max_cache_bytes=MODEL_CACHE_ENTRIES,
                raw=raw(verifications),
            ),
        )

    @classmethod
    def in_memory(cls, usage_cache_bytes: int = DEFAULT_USAGE_CACHE_BYTES) -> Tables:
        """Plain dicts: the tables of a unit test."""
        return cls.over(
            usage={},
            workloads={},
            last_action={},
            watermarks={},
            policies={},
            verifications={},
            usage_cache_bytes=usage_cache_bytes,
        )
