"""Faust's seek back to committed offsets must also re-read partitions never committed.

aiokafka's ``seek_to_committed`` leaves a partition without a committed offset (or with 0) at
its current fetch position; after Faust dropped records it had fetched (a rebalance, recovery),
those records were skipped until a restart (docs/benchmarks.md, "Two workers stalled").  The
stand-in consumer below records what it was asked; the rule itself is pure.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from engine.app import seek_to_committed_or_reset


class RecordingConsumer:
    """The two aiokafka calls involved, with aiokafka's rule: only offsets > 0 are sought."""

    def __init__(self, committed: dict[TopicPartition, int | None], position: int) -> None:
        self.committed = committed
        self.positions = dict.fromkeys(committed, position)

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.positions[tp] = offset
        return dict(self.committed)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0


P0, P1, P2 = (TopicPartition("kfo.metrics", p) for p in range(3))
CHANGELOG = TopicPartition("kfo-usage-changelog", 0)


async def test_partitions_never_committed_are_read_again_from_their_beginning() -> None:
    consumer = RecordingConsumer({P0: None, P1: 120, P2: 0}, position=780)
    got: Any = await seek_to_committed_or_reset(consumer, "earliest")
    assert got == {P0: None, P1: 120, P2: 0}
    # without the reset P0 and P2 would stay at 780: 780 fetched-and-dropped records skipped
    assert consumer.positions == {P0: 0, P1: 120, P2: 0}


async def test_with_latest_nothing_is_read_again() -> None:
    consumer = RecordingConsumer({P0: None, P1: 120}, position=780)
    await seek_to_committed_or_reset(consumer, "latest")
    assert consumer.positions == {P0: 780, P1: 120}


async def test_table_changelogs_keep_the_position_their_recovery_set() -> None:
    consumer = RecordingConsumer({P0: None, CHANGELOG: None}, position=500)
    await seek_to_committed_or_reset(consumer, "earliest", {"kfo-usage-changelog"})
    assert consumer.positions == {P0: 0, CHANGELOG: 500}
