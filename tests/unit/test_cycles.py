"""Cycle records of any size: parts bounded in bytes, joined back exactly."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.core.cycles import (
    MAX_PART_BYTES,
    IncompleteCycle,
    join_cycle,
    join_cycle_log,
    split_cycle,
    split_log,
)
from engine.core.decision_log import DecisionLog
from engine.core.model import Action, CycleSummary, Execution
from tests.unit.test_report import T0, dec

KAFKA_DEFAULT_LIMIT = 1024 * 1024


def big_cycle(n: int) -> CycleSummary:
    decisions = [
        dec(f"svc-{i:05d}", Action.APPLY if i % 3 else Action.HOLD, guardrail="min-change")
        for i in range(n)
    ]
    to_apply = [d for d in decisions if d.action is Action.APPLY]
    held = {d.workload_id: "a human changed it concurrently" for d in to_apply[:40]}
    applied = to_apply[40:]
    execution = Execution(
        cycle="c1",
        workload_ids=[d.workload_id for d in applied],
        decision_ids=[d.id for d in applied],
        outcome="pushed", commit_sha="ab" * 20,
        detail=f"{len(held)} workload(s) held", held=held,
        executed_at=T0,
    )  # fmt: skip
    return CycleSummary(
        cycle="c1", decisions=decisions, execution=execution, policies={"default": 2}
    )


def test_a_five_thousand_decision_cycle_splits_into_bounded_parts_and_joins_back() -> None:
    whole = big_cycle(5000)
    assert len(whole.model_dump_json()) > 4 * KAFKA_DEFAULT_LIMIT  # one record would not go
    parts = split_cycle(whole)
    assert len(parts) > 1
    for i, p in enumerate(parts):
        assert (p.part, p.parts) == (i, len(parts))
        assert len(p.model_dump_json()) < MAX_PART_BYTES + 64 * 1024 < KAFKA_DEFAULT_LIMIT
        assert CycleSummary.model_validate_json(p.model_dump_json()) == p  # valid on its own
        assert set(p.execution.decision_ids) <= {d.id for d in p.decisions}
        assert set(p.execution.held) <= {d.workload_id for d in p.decisions}
    shuffled = [*parts, parts[1]]  # any order, with a re-delivered duplicate
    random.Random(3).shuffle(shuffled)
    assert join_cycle(shuffled) == whole


def test_a_small_cycle_is_one_part_unchanged() -> None:
    small = big_cycle(20)
    assert split_cycle(small) == [small]


def test_a_missing_part_is_refused() -> None:
    parts = split_cycle(big_cycle(3000), max_bytes=64 * 1024)
    with pytest.raises(IncompleteCycle, match="missing parts"):
        join_cycle(parts[:-1])
    other = big_cycle(3000).model_copy(update={"cycle": "c2"})
    with pytest.raises(IncompleteCycle):
        join_cycle([*parts[:-1], split_cycle(other, max_bytes=64 * 1024)[-1]])


def test_part_numbers_are_validated() -> None:
    doc = big_cycle(2).model_dump(mode="json")
    with pytest.raises(ValueError):
        CycleSummary.model_validate({**doc, "part": 2, "parts": 2})


@dataclass
class _Topic:
    sent: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    async def send(self, *, key: bytes | None = None, value: bytes | None = None) -> Any:
        self.sent.append((key, value))


def test_the_executor_publishes_a_big_cycle_in_parts_under_the_kafka_limit() -> None:
    from types import SimpleNamespace

    from agents.executor import publish

    whole = big_cycle(5000)
    topics = SimpleNamespace(cycles=_Topic(), executions=_Topic())
    rt: Any = SimpleNamespace(topics=topics)
    log = DecisionLog(whole.decisions)
    applies = [d for d in whole.decisions if d.action is Action.APPLY]
    asyncio.run(publish(rt, log, applies, whole.execution))
    records = [CycleSummary.model_validate_json(v or b"") for _, v in topics.cycles.sent]
    assert len(records) > 1
    assert all(len(v or b"") < KAFKA_DEFAULT_LIMIT for _, v in topics.cycles.sent)
    assert {k for k, _ in topics.cycles.sent} == {b"c1"}  # one key: one partition, in order
    joined = join_cycle(records)
    assert [d.id for d in joined.decisions] == [d.id for d in whole.decisions]
    assert joined.execution.workload_ids == whole.execution.workload_ids
    assert len(topics.executions.sent) == len(whole.execution.workload_ids)


def test_parts_made_from_a_log_are_full_bounded_parts_and_join_back_as_a_log() -> None:
    whole = big_cycle(3000)
    header = whole.model_copy(update={"decisions": []})
    limit = 64 * 1024
    from_log = list(split_log(header, DecisionLog(whole.decisions), max_bytes=limit))
    assert len(from_log) > 5
    assert [d for p in from_log for d in p.decisions] == whole.decisions  # same, in order
    sizes = [[len(d.model_dump_json().encode()) for d in p.decisions] for p in from_log]
    for i, (p, part_sizes) in enumerate(zip(from_log, sizes, strict=True)):
        assert (p.part, p.parts) == (i, len(from_log))
        assert sum(part_sizes) <= limit  # bounded ...
        if i + 1 < len(from_log):  # ... and full: the next part's first decision did not fit
            assert sum(part_sizes) + sizes[i + 1][0] > limit
        assert set(p.execution.decision_ids) <= {d.id for d in p.decisions}
        assert set(p.execution.held) <= {d.workload_id for d in p.decisions}
    shuffled = [*from_log, from_log[2]]  # any order, with a re-delivered duplicate
    random.Random(5).shuffle(shuffled)
    joined, log = join_cycle_log(iter(shuffled))
    assert joined.decisions == []
    assert joined.model_copy(update={"decisions": list(log)}) == whole
    with pytest.raises(IncompleteCycle, match="missing parts"):
        join_cycle_log(iter(from_log[1:]))
