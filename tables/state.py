"""Typed table values: what the agents read and write, as models (the tables store JSON dicts).

A :class:`TypedTable` wraps any mutable mapping — a Faust table in a worker, a plain ``dict`` in a
unit test — with a codec, so handlers get and put models while the changelog stays JSON that
kcat can read.  Decoding is cached per key and reused while the mapping still holds the very
object that was decoded (or written) last: a value recovered from the changelog after a
rebalance is a new object and is decoded again.  This is what makes reading the usage sketches
for every message affordable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.core.model import WorkloadSpec
from engine.core.policy import Policy, validate_policy
from engine.core.usage import ContainerUsage
from engine.core.verification import Verification
from engine.errors import InvalidPolicy

log = logging.getLogger("kubefinops.tables")

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)


class Codec(Protocol[T]):
    def load(self, stored: Any) -> T: ...

    def dump(self, value: T) -> Any: ...


class ModelCodec(Generic[B]):
    """A pydantic model stored as its JSON-mode dict."""

    def __init__(self, model: type[B]) -> None:
        self.model = model

    def load(self, stored: Any) -> B:
        return self.model.model_validate(stored)

    def dump(self, value: B) -> Any:
        return value.model_dump(mode="json")


class PolicyCodec(ModelCodec[Policy]):
    def __init__(self) -> None:
        super().__init__(Policy)

    def load(self, stored: Any) -> Policy:
        if not isinstance(stored, dict):
            raise InvalidPolicy("value", "not a JSON object")
        return validate_policy(stored)


class UsageCodec:
    """The windowed usage sketches of one container (:class:`ContainerUsage`)."""

    def load(self, stored: Any) -> ContainerUsage:
        return ContainerUsage.from_dict(stored) if stored else ContainerUsage()

    def dump(self, value: ContainerUsage) -> Any:
        return value.to_dict()


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


_UNREADABLE = (ValueError, TypeError, KeyError, ValidationError, InvalidPolicy)


class TypedTable(Generic[T]):
    """A mapping of ``str`` keys to ``T`` values over a mapping of JSON values."""

    def __init__(self, store: MutableMapping[Any, Any], codec: Codec[T], name: str = "") -> None:
        self.store = store
        self.codec = codec
        self.name = name
        self._decoded: dict[str, tuple[Any, T]] = {}

    def get(self, key: str) -> T | None:
        """The value, or None when absent (or unreadable: logged, treated as absent)."""
        stored = self.store.get(key)
        if stored is None:
            self._decoded.pop(key, None)
            return None
        cached = self._decoded.get(key)
        if cached is not None and cached[0] is stored:
            return cached[1]
        try:
            value = self.codec.load(stored)
        except _UNREADABLE as exc:
            log.warning("table %s: ignoring unreadable value of %s: %s", self.name, key, exc)
            return None
        self._decoded[key] = (stored, value)
        return value

    def __setitem__(self, key: str, value: T) -> None:
        stored = self.codec.dump(value)
        self.store[key] = stored
        self._decoded[key] = (stored, value)

    def pop(self, key: str) -> None:
        self.store.pop(key, None)
        self._decoded.pop(key, None)

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


@dataclass(frozen=True)
class Tables:
    """The agents' durable state (declared over Faust tables by :func:`tables.declare_tables`)."""

    usage: TypedTable[ContainerUsage]
    workloads: TypedTable[WorkloadSpec]
    last_action: TypedTable[LastAction]
    watermarks: MutableMapping[str, float]
    policies: TypedTable[Policy]
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
    ) -> Tables:
        return cls(
            usage=TypedTable(usage, UsageCodec(), "usage"),
            workloads=TypedTable(workloads, ModelCodec(WorkloadSpec), "workloads"),
            last_action=TypedTable(last_action, ModelCodec(LastAction), "last-action"),
            watermarks=watermarks,
            policies=TypedTable(policies, PolicyCodec(), "policies"),
            verifications=TypedTable(verifications, ModelCodec(Verification), "verifications"),
        )

    @classmethod
    def in_memory(cls) -> Tables:
        """Plain dicts: the tables of a unit test."""
        return cls.over(
            usage={}, workloads={}, last_action={}, watermarks={}, policies={}, verifications={}
        )
