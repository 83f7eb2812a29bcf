"""Agent handlers are total (issue 10): the guard, the producer refusing an output, apply cycles
keyed by collection cycle, and the MongoDB history outbox — driven without a broker."""

from __future__ import annotations

import asyncio
import json
from dataclasses import fields
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from agents import executor, gate, history
from agents.guard import failure_reason, guarded
from agents.runtime import Runtime, Sinks
from engine.core import outbox
from engine.core.apply_cycles import CycleManifest
from engine.core.model import Decision, HistoryRecord, Recommendation, WorkloadSpec
from engine.errors import DependencyUnavailable
from engine.services import Services
from engine.settings import load_settings
from tables.state import Tables

T0 = 1_800_000_000.0


class Recorder:
    """A topic that records what was sent (or refuses, when ``fail`` is set)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None]] = []
        self.fail: BaseException | None = None

    async def send(self, *, key: bytes | None = None, value: bytes | None = None) -> Any:
        if self.fail is not None:
            raise self.fail
        self.sent.append((key, value))

    def values(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.sent if v]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Store:
    """An in-memory MongoDB history that is away for its first ``down`` calls."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0

    async def save(self, kind: str, record: Any) -> None:
        self.calls += 1
        if self.calls <= self.down:
            raise DependencyUnavailable("MongoDB unavailable during decisions write")
        self.rows[(kind, record["id"])] = record


def runtime(**services: Any) -> tuple[Runtime, dict[str, Recorder], Clock]:
    sinks = {f.name: Recorder() for f in fields(Sinks)}
    clock = Clock()
    settings = load_settings(
        kafka_security_protocol="PLAINTEXT", apply_batch_seconds=3, apply_cycle_timeout_seconds=900
    )
    rt = Runtime(
        settings=settings,
        topics=Sinks(**sinks),  # type: ignore[arg-type]
        tables=Tables.in_memory(),
        services=Services(**services),
        clock=clock,
    )
    return rt, sinks, clock


def decision(name: str, cycle: str = "c1") -> Decision:
    return Decision.model_validate(
        {
            "id": f"dec-{name}",
            "recommendation_id": f"rec-{name}",
            "workload_id": f"ns/Deployment/{name}",
            "namespace": "ns",
            "kind": "Deployment",
            "name": name,
            "action": "apply",
            "guardrail": "autopilot",
            "reason": "policy p is in autopilot mode",
            "mode": "autopilot",
            "containers": [
                {
                    "name": "app",
                    "current": {"name": "app"},
                    "cpu_request": 0.5,
                    "confidence": "high",
                }
            ],
            "decided_at": T0,
            "collection_cycle": cycle,
        }
    )


# --- the guard ----------------------------------------------------------------------------------
async def test_a_raising_handler_dead_letters_the_record_and_goes_on() -> None:
    rt, sinks, _ = runtime()

    async def boom() -> None:
        raise ZeroDivisionError("division by zero")

    ran = await guarded(rt, boom, agent="gate", topic="kubefinops.x", key=b"k", raw=b"{}")
    assert ran is False
    [letter] = sinks["deadletter"].values()
    assert letter["reason"] == "ZeroDivisionError: division by zero"
    assert letter["agent"] == "gate" and letter["key"] == "k" and letter["value"] == "{}"


def test_a_validation_error_reason_names_the_field() -> None:
    with pytest.raises(Exception) as caught:
        WorkloadSpec.model_validate({"namespace": "ns", "kind": "Deployment", "name": "a\nb"})
    reason = failure_reason(caught.value)
    assert reason.startswith("ValidationError at WorkloadSpec.name:"), reason


async def test_cancellation_is_never_swallowed_and_a_dead_letter_failure_is_not_fatal() -> None:
    rt, sinks, _ = runtime()

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await guarded(rt, cancelled, agent="a", topic="t", key=None, raw=None)
    sinks["deadletter"].fail = RuntimeError("broker away")

    async def boom() -> None:
        raise ValueError("x")

    assert await guarded(rt, boom, agent="a", topic="t", key=None, raw=None) is False


# a recommendation for ns/Deployment/web with nothing to change (the gate's outputs below)
WEB_REC = {
    "id": "rec-1",
    "workload_id": "ns/Deployment/web",
    "namespace": "ns",
    "kind": "Deployment",
    "name": "web",
    "replicas": 1,
    "containers": [],
    "savings": {},
    "generated_at": T0,
}


async def test_an_output_the_producer_refuses_dead_letters_the_input() -> None:
    rt, sinks, _ = runtime()
    spec = WorkloadSpec(namespace="ns", kind="Deployment", name="web")
    rt.tables.workloads["ns/Deployment/web"] = spec
    sinks["decisions"].fail = MessageSizeTooLargeError()
    raw = json.dumps(WEB_REC).encode()
    assert await gate.handle(rt, b"ns/Deployment/web", raw) is None  # the guard is inside
    [letter] = sinks["deadletter"].values()
    assert letter["reason"].startswith("MessageSizeTooLargeError"), letter


async def test_an_outbox_message_the_producer_refuses_is_dead_lettered_whole() -> None:
    """The history is archived after the decision went out: a refused outbox message is
    dead-lettered (whole, so it can be replayed), the decision stays sent and nothing raises
    into the agent that made it (the aggregator, since the gate runs in its pass)."""
    rt, sinks, _ = runtime(history=Store())
    spec = WorkloadSpec(namespace="ns", kind="Deployment", name="web")
    rt.tables.workloads["ns/Deployment/web"] = spec
    sinks["history"].fail = MessageSizeTooLargeError()
    rec = Recommendation.model_validate(WEB_REC)
    made: list[gate.Decided] = []
    await gate.decide_made(rt, rec, raw(rec), made)
    await gate.archive(rt, made)
    assert [d["recommendation_id"] for d in sinks["decisions"].values()] == ["rec-1"]
    [letter] = sinks["deadletter"].values()
    assert (letter["agent"], letter["topic"]) == ("history", "kubefinops.history"), letter
    assert letter["reason"].startswith("MessageSizeTooLargeError"), letter
    kinds = [r["kind"] for r in json.loads(letter["value"])["records"]]
    assert kinds == ["recommendations", "decisions"]


# --- apply cycles keyed by collection cycle -----------------------------------------------------
def raw(model: Any) -> bytes:
    return model.model_dump_json().encode()


async def test_one_cycle_one_execution_whatever_the_arrival_spread() -> None:
    rt, sinks, clock = runtime()
    manifest = CycleManifest(cycle="c1", workloads=3, at=T0)
    assert await executor.accept(rt, b"c1", raw(manifest)) == []
    assert await executor.accept(rt, None, raw(decision("a"))) == []
    clock.now += 30  # ten apply windows later (a MongoDB outage used to split the cycle here)
    assert await executor.accept(rt, None, raw(decision("b"))) == []
    assert await executor.accept(rt, b"apply-tick", b'{"type":"apply-tick"}') == []
    clock.now += 30
    [execution] = await executor.accept(rt, None, raw(decision("c")))
    assert sorted(execution.workload_ids) == [
        "ns/Deployment/a",
        "ns/Deployment/b",
        "ns/Deployment/c",
    ]
    assert not executor.has_pending(rt)
    [summary] = sinks["cycles"].values()
    assert len(summary["decisions"]) == 3


async def test_two_cycles_interleaved_stay_apart_and_quiet_applies_without_a_manifest() -> None:
    rt, _, clock = runtime()
    await executor.accept(rt, None, raw(decision("a", "c1")))
    await executor.accept(rt, None, raw(decision("b", "c2")))
    await executor.accept(rt, None, raw(decision("c", "c1")))
    clock.now += 3
    done = await executor.accept(rt, b"apply-tick", b'{"type":"apply-tick"}')
    assert sorted(sorted(e.workload_ids) for e in done) == [
        ["ns/Deployment/a", "ns/Deployment/c"],
        ["ns/Deployment/b"],
    ]


async def test_a_cycle_decodes_each_pending_decision_once_not_once_per_arrival(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every arrival used to decode every pending decision of every cycle: n²/2 decodes for a
    # cycle of n (~0.5 M for a 1,000-workload burst, most of the worker's time).
    rt, sinks, _ = runtime()
    decoded: list[object] = []
    real = Decision.model_validate

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Decision:
        decoded.append(obj)
        return real(obj, *args, **kwargs)

    n = 300
    records = [raw(decision(f"w{i:03d}")) for i in range(n)]
    monkeypatch.setattr(Decision, "model_validate", counting)
    await executor.accept(rt, b"c1", raw(CycleManifest(cycle="c1", workloads=n, at=T0)))
    done = []
    for record in records:
        done += await executor.accept(rt, None, record)
    [execution] = done
    assert len(execution.workload_ids) == n
    assert len(decoded) == n  # once each, when the cycle is applied
    assert not executor.has_pending(rt)
    [summary] = sinks["cycles"].values()
    assert [d["name"] for d in summary["decisions"]] == [f"w{i:03d}" for i in range(n)]


async def test_a_redelivered_decision_counts_once_and_a_short_count_is_recounted() -> None:
    rt, _, _ = runtime()
    await executor.accept(rt, b"c1", raw(CycleManifest(cycle="c1", workloads=3, at=T0)))
    await executor.accept(rt, None, raw(decision("a")))
    assert await executor.accept(rt, None, raw(decision("a"))) == []  # re-delivered: still 1 of 3
    # a crash after the row of "b" was written but before its cycle's meta: on the replay the row
    # is there already, so the meta's count stays one short ...
    await executor.accept(rt, None, raw(decision("b")))
    rt.tables.pending_cycles["c1"] = {**rt.tables.pending_cycles["c1"], "stored": 1}
    await executor.accept(rt, None, raw(decision("b")))
    assert await executor.accept(rt, None, raw(decision("c"))) == []  # 2 of 3 by the meta
    # ... until the next apply tick counts the rows: complete, every decision in one execution
    [execution] = await executor.accept(rt, b"apply-tick", b'{"type":"apply-tick"}')
    assert sorted(execution.workload_ids) == [f"ns/Deployment/{w}" for w in "abc"]
    assert not executor.has_pending(rt)


async def test_a_bad_decision_is_dead_lettered_the_rest_of_its_cycle_applies() -> None:
    rt, sinks, clock = runtime()
    await executor.accept(rt, None, raw(decision("a")))
    await executor.accept(
        rt, None, raw(decision("b")).replace(b'"cpu_request":0.5', b'"cpu_request":NaN')
    )
    clock.now += 3
    [execution] = await executor.accept(rt, b"apply-tick", b'{"type":"apply-tick"}')
    assert execution.workload_ids == ["ns/Deployment/a"]
    [letter] = sinks["deadletter"].values()
    assert "cpu_request" in letter["reason"]


# --- the MongoDB history outbox -----------------------------------------------------------------
async def test_the_gate_queues_history_and_the_writer_stores_it_once_after_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history, "RETRY_FIRST_SECONDS", 0.01)
    store = Store(down=3)
    rt, sinks, _ = runtime(history=store)
    d = decision("a")
    await history.record(rt, "decisions", d, d.workload_id)
    [(key, value)] = sinks["history"].sent
    assert key == b"ns/Deployment/a"
    assert HistoryRecord.model_validate_json(value or b"").kind == "decisions"
    await history.write(rt, key, value)  # MongoDB away for 3 tries, then back
    await history.write(rt, key, value)  # a re-delivery replaces itself
    assert list(store.rows) == [("decisions", "dec-a")] and store.calls == 5


async def test_an_outbox_record_without_an_id_is_dead_lettered() -> None:
    rt, sinks, _ = runtime(history=Store())
    await history.write(rt, None, b'{"kind": "decisions", "record": {"x": 1}}')
    [letter] = sinks["deadletter"].values()
    assert "record" in letter["reason"]


async def test_the_gates_batch_goes_out_in_few_bounded_messages_and_is_stored_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two outbox messages per workload made a 1,000-workload burst 2,000 produced and 2,000
    # consumed records; now the gate's batch is packed into messages under the size bound.
    monkeypatch.setattr(outbox, "MAX_BATCH_BYTES", 8 * 1024)
    store = Store()
    rt, sinks, _ = runtime(history=store)
    decisions = [decision(f"w{i:03d}") for i in range(60)]
    items = [("decisions", d, d.workload_id) for d in decisions]
    await history.record_many(rt, items)  # type: ignore[arg-type]
    sent = sinks["history"].sent
    assert 1 < len(sent) < len(decisions) / 4
    assert all(len(v or b"") <= 8 * 1024 for _, v in sent)
    await history.write_batch(rt, sent)
    await history.write_batch(rt, sent[:2])  # a re-delivery replaces itself
    assert sorted(store.rows) == sorted(("decisions", d.id) for d in decisions)
    assert sinks["deadletter"].sent == []


async def test_a_bad_member_of_an_outbox_batch_is_dead_lettered_alone() -> None:
    store = Store()
    rt, sinks, _ = runtime(history=store)
    good = HistoryRecord(kind="decisions", record=decision("a").model_dump(mode="json"))
    bad = b'{"kind":"decisions","record":{"no_id":1}}'
    raw = b'{"type":"history-batch","records":[' + good.model_dump_json().encode()
    raw += b"," + bad + b"]}"
    await history.write_batch(rt, [(b"k", raw), (b"k", b'{"type":"history-batch","records":7}')])
    assert list(store.rows) == [("decisions", "dec-a")]
    first, second = sinks["deadletter"].values()
    assert "record" in first["reason"] and json.loads(first["value"]) == json.loads(bad)
    assert "records" in second["reason"]


def test_pack_history_round_trips_in_order_and_a_big_record_goes_alone() -> None:
    records = [
        HistoryRecord(
            kind="decisions", record={"id": f"d{i}", "pad": "x" * (900 if i == 3 else 50)}
        )
        for i in range(10)
    ]
    packed = outbox.pack_history(records, max_bytes=400)
    assert all(outbox.is_batch(m) for m in packed)
    assert [len(outbox.members(m)) for m in packed] == [3, 1, 3, 3]
    back = [outbox.member(doc) for m in packed for doc in outbox.members(m)]
    assert back == records
    assert not outbox.is_batch(records[0].model_dump_json().encode())
