"""A second ``resume()`` of a running flow must not drop what the agents' queues hold.

Faust ends a table recovery by seeking the stream partitions to their committed offsets and
then resuming its flow control, which cleared every agent queue even though the flow already
ran: records fetched after the seek were dropped and committed over (``engine.app``
``_install_keep_queued_on_resume``).  These are mode's real ``FlowControlEvent`` and
``FlowControlQueue``, the ones Faust's agents use, after ``create_app`` installed the rule.
"""

from __future__ import annotations

from pathlib import Path

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from engine.app import create_app
from engine.settings import load_settings


def queue_with(flow: FlowControlEvent, *items: str) -> FlowControlQueue[str]:
    # clear_on_resume: as Faust's channels (the agents' input) make their queues
    queue: FlowControlQueue[str] = FlowControlQueue(
        maxsize=10, flow_control=flow, clear_on_resume=True
    )
    for item in items:
        queue.put_nowait(item)
    return queue


async def test_resuming_a_running_flow_keeps_the_queued_records(tmp_path: Path) -> None:
    create_app(load_settings(data_dir=tmp_path, kafka_security_protocol="PLAINTEXT"))
    flow = FlowControlEvent()  # initially suspended, as Faust's
    flow.resume()  # the restore starts: the flow runs
    queue = queue_with(flow, "offset 5", "offset 6")
    flow.resume()  # the end of the recovery, after the seek
    assert flow.is_active()
    assert [queue.get_nowait(), queue.get_nowait()] == ["offset 5", "offset 6"]


async def test_a_suspended_flow_still_drops_its_stale_records_on_resume(tmp_path: Path) -> None:
    create_app(load_settings(data_dir=tmp_path, kafka_security_protocol="PLAINTEXT"))
    flow = FlowControlEvent()
    flow.resume()
    queue = queue_with(flow, "fetched before the rebalance")
    flow.suspend()  # a revocation: what is queued is stale, the seek fetches it again
    assert not flow.is_active()
    flow.resume()
    assert flow.is_active() and queue.empty()
