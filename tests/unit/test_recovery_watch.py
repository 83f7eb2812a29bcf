"""``engine.app.stalled_recovery``: which partitions of a running table recovery are reported as
stalled, and what the line says; ``RecoveryWatch``: the kick and the liveness verdict.  The Faust
and aiokafka objects are stand-ins with the same attribute names and methods (checked against
the installed faust-streaming: ``Consumer._paused_partitions``, ``_active_partitions``,
``can_resume_flow``, ``resume_partitions``, ``seek_wait``); the code reads their internals and
must never raise."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from engine.app import RecoveryWatch, stalled_recovery


class TP(NamedTuple):
    topic: str
    partition: int


USAGE_2, USAGE_3, WORK_2 = TP("x-usage-changelog", 2), TP("x-usage-changelog", 3), TP("w", 2)


def app(*, in_recovery: bool = True, started: float | None = 100.0, received: Any = None) -> Any:
    recovery = SimpleNamespace(
        _recovery_started_at=started,
        _active_events_received_at=received or {},
        active_tps={USAGE_2, USAGE_3, WORK_2},
        active_offsets={USAGE_2: -1, USAGE_3: 4, WORK_2: -1},
        active_highwaters={USAGE_2: 3, USAGE_3: 7, WORK_2: -1},  # WORK_2: empty, nothing to read
        signal_recovery_start=asyncio.Event(),  # set: a new rebalance will restart the recovery
    )
    states = {
        USAGE_2: SimpleNamespace(
            _position=4, paused=False, _status="CONSUMING", _reset_strategy=None
        ),
        USAGE_3: SimpleNamespace(
            _position=8, paused=True, _status="CONSUMING", _reset_strategy=None
        ),
    }
    assignment = SimpleNamespace(state_value=states.get)
    fence = SimpleNamespace(resets={USAGE_2: 2}, reset_to={USAGE_2: None}, applied={}, batch={})
    kafka = SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)),
        _fetcher=SimpleNamespace(_kubefinops_fence=fence),
    )
    consumer = Consumer(kafka)
    return SimpleNamespace(
        in_recovery=in_recovery,
        tables=SimpleNamespace(recovery=recovery),
        consumer=consumer,
    )


class Consumer:
    """Faust's consumer as the watch uses it: its pause set, the partitions its ``getmany``
    asks for, its flow, its read offsets; what a kick calls is recorded."""

    def __init__(self, kafka: Any) -> None:
        self._thread = SimpleNamespace(_consumer=kafka)
        self._read_offset = {USAGE_2: 3}
        self._paused_partitions = {USAGE_2}
        self._active_partitions: set[TP] | None = {USAGE_3, WORK_2}
        self.can_resume_flow = asyncio.Event()
        self.can_resume_flow.set()
        self.calls: list[tuple[str, Any]] = []
        self.seek_error: Exception | None = None

    def resume_partitions(self, tps: Any) -> None:
        self.calls.append(("resume", sorted(tps)))

    async def seek_wait(self, offsets: Any) -> None:
        if self.seek_error is not None:
            raise self.seek_error
        self.calls.append(("seek", dict(offsets)))


def test_partitions_behind_and_silent_for_long_enough_are_reported_with_the_consumer_state() -> (
    None
):
    lines = stalled_recovery(app(received={USAGE_3: 120.0}), now=140.0, after=30.0)
    assert lines == [
        "x-usage-changelog[2]: offset -1 of highwater 3, last record never; consumer position 4, "
        "paused False, status CONSUMING, reset None; Faust paused True, fetched False, flow on; "
        "Faust read offset 3; seek fence resets 2 (to None), applied None, last batch None"
    ]  # USAGE_3 had a record 20 s ago; WORK_2 has nothing to read
    later = stalled_recovery(app(received={USAGE_3: 120.0}), now=151.0, after=30.0)
    assert [line.split(":")[0] for line in later] == [
        "x-usage-changelog[2]",
        "x-usage-changelog[3]",
    ]
    assert "last record 31s ago; consumer position 8, paused True" in later[1]


def test_nothing_is_reported_outside_a_recovery_or_before_the_threshold() -> None:
    assert stalled_recovery(app(in_recovery=False), now=1000.0) == []
    assert stalled_recovery(app(started=None), now=1000.0) == []
    assert stalled_recovery(app(), now=129.0, after=30.0) == []


def test_internals_it_cannot_read_give_a_line_not_an_exception() -> None:
    assert stalled_recovery(SimpleNamespace(in_recovery=True), now=1.0) == [
        "recovery state unavailable (AttributeError)"
    ]
    broken = app()
    broken.consumer = None
    [first, _] = stalled_recovery(broken, now=1000.0)
    assert first.endswith("consumer state unavailable (AttributeError)")


def watch_run(watch: RecoveryWatch, a: Any, now: float) -> list[str]:
    return asyncio.run(watch.check(a, now))


def test_a_stalled_partition_is_kicked_once_per_recovery_as_faust_starts_one() -> None:
    a = app(received={USAGE_3: 120.0})
    watch = RecoveryWatch(after=30.0, unhealthy_after=180.0)
    assert watch_run(watch, a, 129.0) == [] and a.consumer.calls == []  # not yet 30 s
    lines = watch_run(watch, a, 140.0)
    # USAGE_2 (offset -1: nothing read) is resumed and sought to the start, as Faust's
    # _seek_offsets does; USAGE_3 had a record 20 s ago; WORK_2 has nothing to read
    assert a.consumer.calls == [("resume", [USAGE_2]), ("seek", {USAGE_2: 0})]
    assert lines[0].startswith("table recovery stalled: x-usage-changelog[2]: offset -1")
    assert lines[1] == "table recovery stalled: kicked x-usage-changelog[2]: resumed, sought to 0"
    assert watch.problem is None
    a.consumer.calls.clear()
    lines = watch_run(watch, a, 151.0)  # USAGE_3 silent for 31 s now: its own kick, at its offset
    assert a.consumer.calls == [("resume", [USAGE_3]), ("seek", {USAGE_3: 4})]
    a.consumer.calls.clear()
    watch_run(watch, a, 170.0)  # both kicked in this recovery already
    assert a.consumer.calls == []
    a.tables.recovery._recovery_started_at = 500.0  # a new recovery: kicked again if it stalls
    watch_run(watch, a, 531.0)
    assert [c[0] for c in a.consumer.calls] == ["resume", "seek"]
    assert a.consumer.calls[1][1] == {USAGE_2: 0, USAGE_3: 4}


def test_no_kick_when_a_rebalance_restarts_the_recovery_and_a_failed_kick_is_a_line() -> None:
    a = app()
    a.tables.recovery.signal_recovery_start.set()
    watch = RecoveryWatch(after=30.0, unhealthy_after=180.0)
    lines = watch_run(watch, a, 140.0)
    assert a.consumer.calls == [] and len(lines) == 2  # logged, not kicked
    a.tables.recovery.signal_recovery_start.clear()
    a.consumer.seek_error = RuntimeError("consumer thread gone")
    lines = watch_run(watch, a, 145.0)
    assert lines[-1] == (
        "table recovery stalled: the kick failed (RuntimeError: consumer thread gone)"
    )


@pytest.mark.parametrize("unhealthy_after", [180.0, 0.0])
def test_unhealthy_once_stalled_that_long_and_healthy_again_when_recovery_ends(
    unhealthy_after: float,
) -> None:
    a = app(received={USAGE_3: 120.0})
    watch = RecoveryWatch(after=30.0, unhealthy_after=unhealthy_after)
    watch_run(watch, a, 279.0)  # USAGE_2 silent since the start (100): 179 s
    assert watch.problem is None
    watch_run(watch, a, 300.0)  # 200 s; USAGE_3's last record 180 s ago
    if unhealthy_after:
        assert watch.problem == (
            "table recovery stalled: no record for 180s or more from x-usage-changelog[2], "
            "x-usage-changelog[3]"
        )
    else:
        assert watch.problem is None  # 0: never
    a.in_recovery = False
    watch_run(watch, a, 310.0)
    assert watch.problem is None


def test_a_watch_that_cannot_read_the_recovery_is_never_unhealthy() -> None:
    watch = RecoveryWatch(after=30.0, unhealthy_after=1.0)
    watch.problem = "stale"
    lines = watch_run(watch, SimpleNamespace(in_recovery=True), 1000.0)
    assert lines == ["table recovery stalled: recovery state unavailable (AttributeError)"]
    assert watch.problem is None
