"""A cycle's decisions held as their JSON and decoded one at a time (pure).

A parsed :class:`~engine.core.model.Decision` is ~12 KB of Python objects for ~2.8 KB of JSON.
The executor held a 10,000-decision cycle parsed while it applied it (99 MiB), and the reporter
held it parsed again while it rendered the report (118 MiB): the two steps that set the worker's
peak at fleet scale (docs/benchmarks.md, "The 10,000-decision cycle held as JSON").  A
:class:`DecisionLog` keeps each decision's ``model_dump_json()`` bytes and the few fields the
cycle's bookkeeping reads (ids, action, time, policy) — ~28 MiB at 10,000 — and is a
``Sequence[Decision]``: iterating decodes one decision at a time, so code written for a list of
decisions reads it unchanged.

The bytes are exactly what ``Decision.model_dump_json()`` wrote for a validated decision, so
decoding them gives an equal decision (tests/unit/test_decision_log.py) and
``orjson.loads(raw)`` equals ``decision.model_dump(mode="json")`` (the audit snapshot's form)
without building the model at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson

from engine.core.model import Action, Decision


@dataclass(frozen=True, slots=True)
class DecisionRef:
    """One decision of a log: what the cycle's bookkeeping reads, and the decision's JSON."""

    id: str
    workload_id: str
    action: Action
    decided_at: float
    policy_id: str | None
    policy_version: int | None
    monthly_delta: float  # savings.monthly_delta: the executor counts realised savings with it
    raw: bytes  # Decision.model_dump_json() of the validated decision

    @classmethod
    def of(cls, d: Decision) -> DecisionRef:
        return cls(
            d.id,
            d.workload_id,
            d.action,
            d.decided_at,
            d.policy_id,
            d.policy_version,
            d.savings.monthly_delta,
            d.model_dump_json().encode(),
        )

    def decision(self) -> Decision:
        return Decision.model_validate_json(self.raw)


class DecisionLog(Sequence[Decision]):
    """Decisions in order, each kept as its JSON; reading one decodes it (see the module doc)."""

    __slots__ = ("_refs",)

    def __init__(self, decisions: Iterable[Decision] = ()) -> None:
        self._refs: list[DecisionRef] = [DecisionRef.of(d) for d in decisions]

    @classmethod
    def of_refs(cls, refs: Iterable[DecisionRef]) -> DecisionLog:
        log = cls()
        log._refs = list(refs)
        return log

    def append(self, decision: Decision) -> None:
        self._refs.append(DecisionRef.of(decision))

    @property
    def refs(self) -> Sequence[DecisionRef]:
        """Every decision's bookkeeping fields and JSON, in order, nothing decoded."""
        return self._refs

    def __len__(self) -> int:
        return len(self._refs)

    @overload
    def __getitem__(self, index: int) -> Decision: ...

    @overload
    def __getitem__(self, index: slice) -> DecisionLog: ...

    def __getitem__(self, index: int | slice) -> Decision | DecisionLog:
        if isinstance(index, slice):
            return DecisionLog.of_refs(self._refs[index])
        return self._refs[index].decision()

    def __iter__(self) -> Iterator[Decision]:
        for ref in self._refs:
            yield ref.decision()

    def sorted_by(self, key: Callable[[DecisionRef], Any]) -> DecisionLog:
        """A new log in the order of ``key`` (stable), nothing decoded."""
        return DecisionLog.of_refs(sorted(self._refs, key=key))

    def where(self, keep: Callable[[DecisionRef], bool]) -> DecisionLog:
        """The decisions whose ref passes ``keep``, in order, nothing decoded."""
        return DecisionLog.of_refs(r for r in self._refs if keep(r))

    def json_docs(self) -> Iterator[dict[str, Any]]:
        """Each decision as ``model_dump(mode="json")`` would give it, without the model."""
        for ref in self._refs:
            doc: dict[str, Any] = orjson.loads(ref.raw)
            yield doc

    @property
    def nbytes(self) -> int:
        """Bytes of JSON held (what the log costs, besides ~0.2 KB of refs per decision)."""
        return sum(len(r.raw) for r in self._refs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DecisionLog):
            return [r.raw for r in self._refs] == [r.raw for r in other._refs]
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"DecisionLog({len(self)} decisions, {self.nbytes} bytes of JSON)"


def as_log(decisions: Sequence[Decision]) -> DecisionLog:
    """``decisions`` as a log (the same object when it already is one)."""
    return decisions if isinstance(decisions, DecisionLog) else DecisionLog(decisions)


def identities(decisions: Sequence[Decision]) -> Sequence[DecisionRef] | Sequence[Decision]:
    """What reads only ids (``id``, ``workload_id``, ``action``) iterates: a log's refs, nothing
    decoded, or the decisions themselves."""
    return decisions.refs if isinstance(decisions, DecisionLog) else decisions


def select(decisions: Sequence[Decision], keep: Callable[[Decision], bool]) -> Sequence[Decision]:
    """The decisions ``keep`` accepts, in order.  From a log a log: each decision is decoded
    while it is tested and none is kept parsed; from anything else a list."""
    if isinstance(decisions, DecisionLog):
        return DecisionLog.of_refs(r for r in decisions.refs if keep(r.decision()))
    return [d for d in decisions if keep(d)]
