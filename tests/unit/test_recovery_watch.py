"""``engine.app.stalled_recovery``: which partitions of a running table recovery are reported as
stalled, and what the line says.  The Faust and aiokafka objects are stand-ins with the same
attribute names (the function reads their internals and must never raise)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

from engine.app import stalled_recovery


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
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=kafka), _read_offset={USAGE_2: 3})
    return SimpleNamespace(
        in_recovery=in_recovery, tables=SimpleNamespace(recovery=recovery), consumer=consumer
    )


def test_partitions_behind_and_silent_for_long_enough_are_reported_with_the_consumer_state() -> (
    None
):
    lines = stalled_recovery(app(received={USAGE_3: 120.0}), now=140.0, after=30.0)
    assert lines == [
        "x-usage-changelog[2]: offset -1 of highwater 3, last record never; consumer position 4, "
        "paused False, status CONSUMING, reset None; Faust read offset 3; seek fence resets 2 "
        "(to None), applied None, last batch None"
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
