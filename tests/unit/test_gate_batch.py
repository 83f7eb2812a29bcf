"""The gate decides a batch of recommendations; its history goes to the outbox, which the
history writer stores in one bulk write per kind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from typing import Any

from agents import gate, history
from agents.runtime import Runtime, Sinks
from engine.core.model import (
    Confidence,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Recommendation,
    ResourcePair,
    Savings,
    WorkloadSpec,
)
from engine.services import Services
from engine.settings import load_settings
from tables.state import Tables
from tests.fakes import RecordingTopic


@dataclass
class _Store:
    """Counts round trips: what the batching is about."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def save(self, kind: str, record: Any) -> None:
        await self.save_many(kind, [record])

    async def save_many(self, kind: str, records: list[Any]) -> int:
        self.calls.append((kind, len(records)))
        for r in records:
            self.rows[f"{kind}/{r['id']}"] = r
        return len(records)


def _rec(i: int) -> tuple[WorkloadSpec, Recommendation]:
    spec = WorkloadSpec(
        namespace="ns",
        kind="Deployment",
        name=f"w{i}",
        containers=[ContainerSpec(name="app", requests=ResourcePair(cpu=1.0, memory=2.0**30))],
    )
    rec = Recommendation(
        id=f"r{i}", workload_id=spec.workload_id, namespace="ns", kind="Deployment",
        name=f"w{i}", replicas=1,
        containers=[ContainerRecommendation(
            name="app", current=spec.containers[0], cpu_request=0.25, memory_request=2.0**29,
            confidence=Confidence.HIGH,
        )],
        savings=Savings(current_monthly=30.0, recommended_monthly=10.0, monthly_delta=-20.0,
                        monthly_savings=20.0),
        generated_at=1.0, cycle="c1",
    )  # fmt: skip
    return spec, rec


def _runtime(store: Any) -> tuple[Runtime, dict[str, RecordingTopic]]:
    sinks = {f.name: RecordingTopic() for f in fields(Sinks)}
    rt = Runtime(
        load_settings(kafka_username=None),
        Sinks(**sinks),
        Tables.in_memory(),
        Services(history=store),
    )
    return rt, sinks


def test_a_batch_is_decided_record_by_record_and_archived_in_two_bulk_writes() -> None:
    n = 1200
    pairs = [_rec(i) for i in range(n)]
    store = _Store()
    rt, sinks = _runtime(store)
    for spec, _ in pairs[:-1]:  # the last workload has no spec recorded
        rt.tables.workloads[spec.workload_id] = spec
    records = [(r.workload_id.encode(), r.model_dump_json().encode()) for _, r in pairs]
    records.append((b"x", b"{not json"))
    out = asyncio.run(gate.handle_batch(rt, records))
    assert len(out) == n + 1
    assert out[-1] is None and out[-2] is None  # bad JSON; no spec
    assert all(isinstance(d, Decision) for d in out[:-2])
    assert len(sinks["decisions"].sent) == n - 1 and len(sinks["deadletter"].sent) == 2
    assert store.calls == []  # the gate never waits on MongoDB
    asyncio.run(history.write_batch(rt, sinks["history"].sent))
    assert store.calls == [("recommendations", n - 1), ("decisions", n - 1)]
    assert {d.id for d in out[:-2] if d} == {
        k.split("/", 1)[1] for k in store.rows if k.startswith("decisions/")
    }


def test_a_store_without_bulk_writes_gets_one_save_per_record() -> None:
    @dataclass
    class _Plain:
        saved: list[str] = field(default_factory=list)

        async def save(self, kind: str, record: Any) -> None:
            self.saved.append(record["id"])

    store = _Plain()
    rt, sinks = _runtime(store)
    spec, rec = _rec(1)
    rt.tables.workloads[spec.workload_id] = spec
    decision = asyncio.run(
        gate.handle(rt, rec.workload_id.encode(), rec.model_dump_json().encode())
    )
    asyncio.run(history.write_batch(rt, sinks["history"].sent))
    assert decision is not None and store.saved == [rec.id, decision.id]
