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

from engine.core.model import CycleSummary, Decision, Execution

# Well under Kafka's 1 MiB default (message.max.bytes / max.request.size), leaving room for the
# envelope, the execution and the policy map, and for a broker configured lower than the default.
MAX_PART_BYTES = 256 * 1024


def _share(execution: Execution, decisions: list[Decision], first: bool) -> Execution:
    """The part of ``execution`` about ``decisions`` (generic detail text goes in part 0)."""
    ids = {d.id for d in decisions}
    wids = {d.workload_id for d in decisions}
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
    groups: list[list[Decision]] = [[]]
    size = 0
    for d in summary.decisions:
        n = len(d.model_dump_json())
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(d)
        size += n
    if len(groups) == 1:
        return [summary.model_copy(update={"part": 0, "parts": 1})]
    return [
        summary.model_copy(
            update={
                "decisions": group,
                "execution": _share(summary.execution, group, i == 0),
                "part": i,
                "parts": len(groups),
            }
        )
        for i, group in enumerate(groups)
    ]


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
