"""``/ready`` is total: whatever state Faust is in, readiness answers (not ready, with a reason)
instead of raising (a probe that raises is a 500 and a restart loop for the pod)."""

from __future__ import annotations

from typing import Any

import faust
import pytest

from engine.app import readiness


def test_an_unstarted_worker_is_not_ready_and_says_why() -> None:
    app = faust.App("readiness-test", broker="kafka://127.0.0.1:9")
    with pytest.raises(Exception, match="not yet started"):  # what the probe used to let out
        app.consumer.assignment()
    ok, state = readiness(app)
    assert not ok
    assert state["reason"] == "consumer not available (ConsumerNotStarted)"
    assert state["assigned_partitions"] == 0


class Consumer:
    def __init__(self, assigned: set[Any]) -> None:
        self.assigned = assigned

    def assignment(self) -> set[Any]:
        return self.assigned


class App:
    def __init__(self, *, assigned: int, rebalancing: bool, in_recovery: bool) -> None:
        self.consumer = Consumer({("t", p) for p in range(assigned)})
        self.rebalancing = rebalancing
        self.in_recovery = in_recovery


@pytest.mark.parametrize(
    ("assigned", "rebalancing", "in_recovery", "reason"),
    [
        (0, False, False, "no partitions assigned yet"),
        (3, True, False, "consumer group rebalancing"),
        (3, False, True, "tables recovering from their changelogs"),
    ],
)
def test_each_not_ready_state_has_its_reason(
    assigned: int, rebalancing: bool, in_recovery: bool, reason: str
) -> None:
    app = App(assigned=assigned, rebalancing=rebalancing, in_recovery=in_recovery)
    ok, state = readiness(app)  # type: ignore[arg-type]
    assert (ok, state["reason"], state["assigned_partitions"]) == (False, reason, assigned)


def test_ready_when_assigned_settled_and_recovered() -> None:
    ok, state = readiness(App(assigned=2, rebalancing=False, in_recovery=False))  # type: ignore[arg-type]
    assert ok and "reason" not in state and state["assigned_partitions"] == 2


@pytest.mark.parametrize("session_timeout", [10.0, 30.0, 120.0])
def test_a_join_request_outlives_the_rebalance_it_waits_for(
    session_timeout: float, tmp_path: Any
) -> None:
    """The broker holds a JoinGroup until every member rejoined or the rebalance timeout passed;
    a request timeout shorter than that (Faust's 60 s default against our 40 s) timed the
    waiting members out and cost one more rebalance round."""
    from engine.app import create_app
    from engine.settings import load_settings

    settings = load_settings(
        kafka_security_protocol="PLAINTEXT",
        broker_session_timeout=session_timeout,
        data_dir=tmp_path,
    )
    conf = create_app(settings).conf
    assert conf.broker_request_timeout > conf.broker_rebalance_timeout >= min(session_timeout, 30)
    assert conf.broker_heartbeat_interval < conf.broker_session_timeout / 2
