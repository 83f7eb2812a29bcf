"""The verifier and the ledger's penalty, as plain handlers over in-memory tables and fakes."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import ledger, verifier
from agents.runtime import Runtime
from engine.core.model import CycleSummary
from engine.core.policy import validate_policy
from engine.core.verification import Phase, Verification
from engine.errors import DependencyUnavailable
from engine.services import Services
from engine.settings import load_settings
from tables.state import LastAction, Tables
from tests.fakes import FakeReverts, FakeTelemetry, recording_sinks, sent
from tests.unit.test_verification import T0, decision, execution


class StepClock:
    """T0, then one second later at every reading; ``jump`` moves it further on."""

    def __init__(self) -> None:
        self.t = T0 - 1

    def __call__(self) -> float:
        self.t += 1
        return self.t

    def jump(self, seconds: float) -> None:
        self.t += seconds


def runtime(mode: str = "autopilot", clock: StepClock | None = None, **services: Any) -> Runtime:
    settings = load_settings(kafka_security_protocol="PLAINTEXT", verification_interval_seconds=60)
    sinks = recording_sinks()
    tables = Tables.in_memory()
    tables.policies["p"] = validate_policy({"id": "p", "mode": mode})
    return Runtime(settings, sinks, tables, Services(**services), clock=clock or StepClock())


def tick(rt: Runtime) -> list[Verification]:
    """A fresh tick (stamped now, so never skipped as stale)."""
    record = verifier.VerifyTick(at=rt.clock()).model_dump_json().encode()
    out: list[Verification] = run(verifier.handle(rt, b"tick", record))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def start_record() -> bytes:
    return (
        verifier.VerifyStart(decision=decision(), execution=execution()).model_dump_json().encode()
    )


TICK = verifier.VerifyTick(at=T0).model_dump_json().encode()


def test_forward_sends_one_start_per_pushed_workload_change() -> None:
    rt = runtime(telemetry=FakeTelemetry())
    summary = CycleSummary(cycle="c1", decisions=[decision()], execution=execution())
    assert run(verifier.forward(rt, b"c1", summary.model_dump_json().encode())) == 1
    (start,) = sent(rt, "verification_queue")
    assert start["type"] == "start" and start["decision"]["id"] == "dec-1"
    held = summary.model_copy(
        update={"execution": execution().model_copy(update={"outcome": "held"})}
    )
    assert run(verifier.forward(rt, b"c1", held.model_dump_json().encode())) == 0
    blind = runtime()  # no telemetry configured: nothing is watched
    assert run(verifier.forward(blind, b"c1", summary.model_dump_json().encode())) == 0


def test_start_then_ticks_live_regressed_reverted_once() -> None:
    telemetry, git = FakeTelemetry(), FakeReverts()
    rt = runtime(telemetry=telemetry, git=git)
    (pending,) = run(verifier.handle(rt, b"w", start_record()))
    assert pending.phase is Phase.PENDING
    assert run(verifier.handle(rt, b"w", start_record())) == []  # redelivered: nothing new
    assert run(verifier.handle(rt, b"tick", TICK)) == []  # old values still: pending
    telemetry.live = True
    (live,) = run(verifier.handle(rt, b"tick", TICK))
    assert live.phase is Phase.LIVE
    telemetry.oom = True
    (done,) = run(verifier.handle(rt, b"tick", TICK))
    assert done.phase is Phase.REVERTED and done.cause == "oom" and git.reverts == [done.id]
    assert run(verifier.handle(rt, b"tick", TICK)) == [] and git.reverts == [done.id]
    phases = [r["phase"] for r in rt.topics.verifications.values()]  # type: ignore[attr-defined]
    assert phases == ["pending", "live", "reverted"]
    stored = rt.tables.verifications.get(done.workload_id)
    assert stored is not None and stored.phase is Phase.REVERTED


def test_a_tick_queued_behind_a_slow_check_is_skipped() -> None:
    telemetry = FakeTelemetry(live=True)
    rt = runtime(telemetry=telemetry)
    run(verifier.handle(rt, b"w", start_record()))
    stale = verifier.VerifyTick(at=T0 - 600).model_dump_json().encode()
    assert run(verifier.handle(rt, b"tick", stale)) == []  # would have gone live
    (live,) = run(verifier.handle(rt, b"tick", TICK))
    assert live.phase is Phase.LIVE


def test_recommend_mode_reports_without_a_revert() -> None:
    git = FakeReverts()
    rt = runtime("recommend", telemetry=FakeTelemetry(live=True, oom=True), git=git)
    run(verifier.handle(rt, b"w", start_record()))
    (out,) = run(verifier.handle(rt, b"tick", TICK))
    assert out.phase is Phase.REGRESSED and not out.revert_pending and git.reverts == []
    assert "revert recommended" in out.detail


def test_a_git_outage_keeps_the_revert_due_until_it_is_made() -> None:
    git, clock = FakeReverts(), StepClock()
    git.fail(1, DependencyUnavailable("git remote unreachable"))
    rt = runtime(telemetry=FakeTelemetry(live=True, oom=True), git=git, clock=clock)
    run(verifier.handle(rt, b"w", start_record()))
    (regressed,) = tick(rt)
    assert regressed.phase is Phase.REGRESSED and regressed.revert_pending
    assert tick(rt) == [] and git.reverts == []  # backing off: not tried again at once

    clock.jump(60)  # one check interval later
    (done,) = tick(rt)
    assert done.phase is Phase.REVERTED and git.reverts == [done.id]


def test_prometheus_down_postpones_every_watch_with_backoff_and_loses_nothing() -> None:
    telemetry, clock = FakeTelemetry(), StepClock()
    rt = runtime(telemetry=telemetry, clock=clock)
    run(verifier.handle(rt, b"w", start_record()))
    other = decision().model_copy(
        update={"id": "dec-2", "workload_id": "smarthealth/Deployment/billing", "name": "billing"}
    )
    start2 = verifier.VerifyStart(decision=other, execution=execution())
    run(verifier.handle(rt, b"w2", start2.model_dump_json().encode()))
    telemetry.fail(100, DependencyUnavailable("Prometheus at http://prom unavailable"))

    # One tick asks Prometheus once (not once per watch) and re-schedules both watches.
    assert tick(rt) == [] and telemetry.calls == 1
    watches = list((w for _, w in rt.tables.verifications.items()))
    assert [(w.phase, w.check_failures) for w in watches] == [(Phase.PENDING, 1)] * 2
    first_retry = watches[0].next_check_at
    assert first_retry is not None and first_retry > clock.t

    # Ticks before the retry time ask nothing (the queue drains); each failure doubles the wait,
    # up to ten intervals.
    assert tick(rt) == [] and telemetry.calls == 1
    waits = []
    for _ in range(6):
        w = next(iter((w for _, w in rt.tables.verifications.items())))
        assert w.next_check_at is not None
        before = w.next_check_at
        clock.t = before - 2  # the tick's record reads the clock once, the handler at `before`
        assert tick(rt) == []
        w = next(iter((w for _, w in rt.tables.verifications.items())))
        assert w.next_check_at is not None
        waits.append(round(w.next_check_at - (before + 1)))  # from the failure, a reading later
    assert waits == [120, 240, 480, 600, 600, 600], waits
    assert telemetry.calls == 7

    # Prometheus back: both watches checked at the next due tick, at the normal pace again.
    telemetry.failures.clear()
    telemetry.live = True
    clock.jump(600)
    moved = tick(rt)
    assert sorted(v.phase for v in moved) == [Phase.LIVE, Phase.LIVE]
    assert all(
        w.check_failures == 0 and w.next_check_at is None
        for w in (w for _, w in rt.tables.verifications.items())
    )
    phases = [r["phase"] for r in rt.topics.verifications.values()]  # type: ignore[attr-defined]
    assert phases == ["pending", "pending", "live", "live"]


def test_a_malformed_queue_record_is_dead_lettered() -> None:
    rt = runtime()
    assert run(verifier.handle(rt, b"x", b'{"type": "start"}')) == []
    (letter,) = sent(rt, "deadletter")
    assert letter["agent"] == "verifier" and "VerifyRecord" in letter["reason"]


def test_the_ledger_keeps_the_penalty_across_a_later_change() -> None:
    rt = runtime(telemetry=FakeTelemetry(live=True, oom=True), git=FakeReverts())
    run(verifier.handle(rt, b"w", start_record()))
    (done,) = run(verifier.handle(rt, b"tick", TICK))
    run(ledger.record_verification(rt, b"w", done.model_dump_json().encode()))
    last = rt.tables.last_action.get(done.workload_id)
    assert isinstance(last, LastAction) and last.penalty_until == done.penalty_until
    later = execution("b" * 40).model_copy(update={"executed_at": T0 + 500})
    run(ledger.record(rt, b"w", later.model_dump_json().encode()))
    last = rt.tables.last_action.get(done.workload_id)
    assert last is not None and last.applied_at == T0 + 500
    assert last.penalty_until == done.penalty_until and last.penalty_cause == "oom"


class CountingTelemetry(FakeTelemetry):
    """Pending forever (never live): records which watches each tick checked."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []

    async def rollout(self, v: Verification, at: float) -> Any:
        self.checked.append(v.workload_id)
        return await super().rollout(v, at)


def test_a_tick_checks_a_bounded_share_of_the_watches_the_longest_unchecked_first() -> None:
    from engine.core.model import Decision, Execution

    telemetry = CountingTelemetry()
    rt = runtime(telemetry=telemetry)
    rt.settings = rt.settings.model_copy(update={"verification_max_checks_per_tick": 2})
    names = [f"svc-{i}" for i in range(5)]
    for name in names:
        doc = decision().model_dump()
        d = Decision.model_validate(
            {
                **doc,
                "id": f"dec-{name}",
                "name": name,
                "workload_id": f"{doc['namespace']}/Deployment/{name}",
            }
        )
        ex = Execution.model_validate(
            {**execution().model_dump(), "workload_ids": [d.workload_id], "decision_ids": [d.id]}
        )
        run(
            verifier.handle(
                rt, b"w", verifier.VerifyStart(decision=d, execution=ex).model_dump_json().encode()
            )
        )
    rounds = []
    for _ in range(3):
        telemetry.checked.clear()
        tick(rt)
        rounds.append(sorted(n.rsplit("/", 1)[1] for n in telemetry.checked))
    assert rounds[0] == ["svc-0", "svc-1"] and rounds[1] == ["svc-2", "svc-3"]
    assert rounds[2] == ["svc-0", "svc-4"]  # svc-4 never checked yet, then the oldest check
    assert all(not v.finished for _, v in rt.tables.verifications.items())
    # 0 = every due watch in every tick
    rt.settings = rt.settings.model_copy(update={"verification_max_checks_per_tick": 0})
    telemetry.checked.clear()
    tick(rt)
    assert len(telemetry.checked) == 5
