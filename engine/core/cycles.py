"""Cycle records of any size (pure): split into parts no bigger than a Kafka message should be,
and joined back into the one cycle the report describes.

A cycle of 10,000 decisions serialized as one ``CycleSummary`` is ~20 MB, far over Kafka's 1 MiB
default message limit (the send failed at ~580 decisions).  :func:`split_cycle` cuts it into
parts of at most ``max_bytes`` of decisions each, every part a complete, valid ``CycleSummary``
carrying ``part``/``parts`` and only its own decisions' share of the execution (applied ids and
``Execution.held``), so no record grows with the fleet.  :func:`join_cycle` is the
inverse: same decisions in the same order, the execution's lists re-united.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from engine.core.decision_log import DecisionLog, DecisionRef
from engine.core.model import CycleSummary, Execution

# Well under Kafka's 1 MiB default (message.max.bytes / max.request.size), leaving room for the
# envelope, the execution and the policy map, and for a broker configured lower than the default.
MAX_PART_BYTES = 256 * 1024


def _share(execution: Execution, refs: Sequence[DecisionRef], first: bool) -> Execution:
    """The part of ``execution`` about the decisions of ``refs`` (generic detail text goes in
    part 0)."""
    ids = {r.id for r in refs}
    wids = {r.workload_id for r in refs}
    pairs = [
        (w, d)
        for w, d in zip(execution.workload_ids, execution.decision_ids, strict=False)
        if d in ids
    ]
    return execution.model_copy(
        update={
            "workload_ids": [w for w, _ in pairs],
            "decision_ids": [d for _, d in pairs],
            "detail": execution.detail if first else "",
            "held": {w: why for w, why in execution.held.items() if w in wids},
        }
    )


def split_cycle(summary: CycleSummary, max_bytes: int = MAX_PART_BYTES) -> list[CycleSummary]:
    """``summary`` as parts of at most ``max_bytes`` of decisions each (one part if it fits).

    A single decision larger than ``max_bytes`` travels alone in its part.
    """
    header = summary.model_copy(update={"decisions": []})
    return list(split_log(header, DecisionLog(summary.decisions), max_bytes))


def split_log(
    header: CycleSummary, log: DecisionLog, max_bytes: int = MAX_PART_BYTES
) -> Iterator[CycleSummary]:
    """The parts of the cycle ``header`` (its decisions left out) with the decisions of ``log``,
    made one at a time: only one part's decisions are decoded at once (the executor's way of
    publishing a 10,000-decision cycle without holding it parsed)."""
    groups: list[list[DecisionRef]] = [[]]
    size = 0
    for ref in log.refs:
        n = len(ref.raw)
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(ref)
        size += n
    if len(groups) == 1:
        yield header.model_copy(update={"decisions": list(log), "part": 0, "parts": 1})
        return
    for i, group in enumerate(groups):
        yield header.model_copy(
            update={
                "decisions": [r.decision() for r in group],
                "execution": _share(header.execution, group, i == 0),
                "part": i,
                "parts": len(groups),
            }
        )


class IncompleteCycle(ValueError):
    """The parts given are not exactly parts ``0..parts-1`` of one cycle."""


def join_cycle(parts: list[CycleSummary]) -> CycleSummary:
    """The whole cycle from all its parts (any order; a re-delivered duplicate is ignored)."""
    if not parts:
        raise IncompleteCycle("no parts")
    by_index = {p.part: p for p in parts}
    first = by_index.get(0) or parts[0]
    total = first.parts
    if {p.cycle for p in parts} != {first.cycle} or {p.parts for p in parts} != {total}:
        raise IncompleteCycle(f"parts of different cycles or counts for {first.cycle}")
    if sorted(by_index) != list(range(total)):
        missing = sorted(set(range(total)) - set(by_index))
        raise IncompleteCycle(f"cycle {first.cycle}: missing parts {missing[:10]}")
    ordered = [by_index[i] for i in range(total)]
    held: dict[str, str] = {}
    for p in ordered:
        held.update(p.execution.held)
    execution = first.execution.model_copy(
        update={
            "workload_ids": [w for p in ordered for w in p.execution.workload_ids],
            "decision_ids": [d for p in ordered for d in p.execution.decision_ids],
            "held": held,
        }
    )
    policies: dict[str, int] = {}
    for p in ordered:
        policies.update(p.policies)
    return first.model_copy(
        update={
            "decisions": [d for p in ordered for d in p.decisions],
            "execution": execution,
            "policies": policies,
            "part": 0,
            "parts": 1,
        }
    )


def join_cycle_log(parts: Iterable[CycleSummary]) -> tuple[CycleSummary, DecisionLog]:
    """:func:`join_cycle` for a cycle too big to hold parsed: the parts are read one at a time
    (pass a generator that parses them), each part's decisions kept as JSON; returns the joined
    cycle without its decisions and the decisions, in order, as a :class:`DecisionLog`."""
    headers: list[CycleSummary] = []
    logs: dict[int, DecisionLog] = {}
    for part in parts:
        logs[part.part] = DecisionLog(part.decisions)  # a re-delivered duplicate replaces it
        headers.append(part.model_copy(update={"decisions": []}))
    whole = join_cycle(headers)  # raises IncompleteCycle unless parts 0..n-1 of one cycle
    return whole, DecisionLog.of_refs(r for i in sorted(logs) for r in logs[i].refs)
