"""Records fetched before a seek of their partition are not handed out after it
(``engine.app.SeekFence``).

``drain`` below is Faust's fetcher loop reduced to its read-offset rule
(``faust.transport.consumer.Consumer._drain_messages``): a record at or above the partition's read
offset is handed to the agents (``deliver``, which may await a full queue), then the read offset
is raised to it; a record below it is dropped as already read.  ``seek`` is what a seek does to
the two sides: the consumer thread moves the position (aiokafka's ``Fetcher.seek_to``, which the
fence counts) and Faust's ``perform_seek`` lowers the read offset to the same offset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.app import SeekFence, create_app
from engine.settings import load_settings

A, B = ("metrics", 0), ("metrics", 1)


def fetched(fence: SeekFence, batch: list[tuple[Any, int]]) -> AsyncIterator[tuple[Any, int]]:
    """One batch as the consumer thread returns it (tagged then), yielded as Faust's getmany."""
    fence.on_fetched({tp for tp, _ in batch})

    async def records() -> AsyncIterator[tuple[Any, int]]:
        for item in batch:
            yield item

    return records()


async def drain(
    records: AsyncIterator[tuple[Any, int]],
    read_offset: dict[Any, int | None],
    deliver: Callable[[Any, int], Awaitable[None]],
) -> list[tuple[Any, int]]:
    dropped = []
    async for tp, offset in records:
        r_offset = read_offset.get(tp)
        if r_offset is None or offset >= r_offset:
            await deliver(tp, offset)
            read_offset[tp] = offset
        else:
            dropped.append((tp, offset))
    return dropped


def seek(fence: SeekFence, read_offset: dict[Any, int | None], tp: Any, offset: int) -> None:
    fence.on_reset(tp, offset)  # the consumer thread: Fetcher.seek_to
    read_offset[tp] = offset  # Faust's perform_seek, once the thread answered


async def test_a_batch_fetched_before_a_seek_is_not_handed_out_after_it() -> None:
    fence, read_offset, delivered = SeekFence(), {}, []  # type: ignore[var-annotated]

    async def deliver(tp: Any, offset: int) -> None:
        delivered.append((tp, offset))
        if len(delivered) == 2:  # the recovery ends while the batch is handed out
            seek(fence, read_offset, A, 10)

    batch = [(A, 10), (A, 11), (B, 5), (A, 12), (A, 13), (B, 6)]
    dropped = await drain(fence.guard(fetched(fence, batch), read_offset), read_offset, deliver)
    assert dropped == []
    # the rest of A's batch waits for the fetch from the committed offset; B was not sought
    assert delivered == [(A, 10), (A, 11), (B, 5), (B, 6)]
    assert read_offset[A] == 10  # the seek's, not the record's handed out across it
    refetch = [(A, 10), (A, 11), (A, 12), (A, 13)]
    dropped = await drain(fence.guard(fetched(fence, refetch), read_offset), read_offset, deliver)
    assert dropped == [] and delivered[4:] == refetch  # at-least-once: 10 and 11 twice, none lost


async def test_without_the_fence_the_refetched_records_are_dropped_as_read() -> None:
    """What the fence prevents (the model's check): the same seek, Faust's loop alone."""
    fence, read_offset, delivered = SeekFence(), {}, []  # type: ignore[var-annotated]

    async def deliver(tp: Any, offset: int) -> None:
        delivered.append((tp, offset))
        if (tp, offset) == (A, 11):
            seek(fence, read_offset, A, 10)

    await drain(fetched(fence, [(A, 10), (A, 11), (A, 12), (A, 13)]), read_offset, deliver)
    dropped = await drain(fetched(fence, [(A, 10), (A, 11), (A, 12)]), read_offset, deliver)
    assert dropped == [(A, 10), (A, 11), (A, 12)]


async def test_records_read_after_a_seek_are_handed_out_before_faust_lowers_the_offset() -> None:
    """The consumer thread seeks partition after partition; Faust lowers the read offsets only
    when the last one answered.  Records of a partition already sought, fetched in between,
    were below the read offset of what was handed out before the seek: dropped as read."""
    fence, read_offset, delivered = SeekFence(), {}, []  # type: ignore[var-annotated]

    async def deliver(tp: Any, offset: int) -> None:
        delivered.append((tp, offset))

    before = [(A, o) for o in range(10, 15)]
    await drain(fence.guard(fetched(fence, before), read_offset), read_offset, deliver)
    assert read_offset[A] == 14
    fence.on_reset(A, 10)  # the thread sought A; B's committed offset is still being asked for
    after = [(A, o) for o in range(10, 17)]
    dropped = await drain(fence.guard(fetched(fence, after), read_offset), read_offset, deliver)
    assert dropped == [] and delivered[5:] == after
    read_offset[A] = 10  # perform_seek, at last: lowers it again, which re-reads nothing here
    later = [(A, 17)]
    dropped = await drain(fence.guard(fetched(fence, later), read_offset), read_offset, deliver)
    assert dropped == [] and delivered[-1] == (A, 17) and read_offset[A] == 17


async def test_a_record_handed_over_across_a_seek_gets_the_seeks_read_offset() -> None:
    """A full agent queue: the hand-over awaits while the seek lowers the read offset; without
    the fence the record's own offset (20) came back after it and 15-19 were dropped."""
    fence, read_offset, delivered = SeekFence(), {}, []  # type: ignore[var-annotated]

    async def deliver(tp: Any, offset: int) -> None:
        delivered.append((tp, offset))
        if len(delivered) == 1:
            seek(fence, read_offset, A, 15)

    await drain(fence.guard(fetched(fence, [(A, 20)]), read_offset), read_offset, deliver)
    assert read_offset[A] == 15
    refetch = [(A, o) for o in range(15, 22)]
    dropped = await drain(fence.guard(fetched(fence, refetch), read_offset), read_offset, deliver)
    assert dropped == [] and delivered[1:] == refetch


async def test_a_batch_fetched_after_the_seek_is_handed_out_whole() -> None:
    fence, read_offset, delivered = SeekFence(), {}, []  # type: ignore[var-annotated]

    async def deliver(tp: Any, offset: int) -> None:
        delivered.append((tp, offset))

    seek(fence, read_offset, A, 3)
    fence.on_reset(B, None)  # a reset to the beginning (seek_to_beginning): no read offset
    batch = [(A, 3), (B, 0), (A, 4), (B, 1)]
    dropped = await drain(fence.guard(fetched(fence, batch), read_offset), read_offset, deliver)
    assert dropped == [] and delivered == batch
    assert fence.reset_to == {A: 3, B: None}


async def test_create_app_installs_the_fence_on_faust_and_aiokafka(tmp_path: Path) -> None:
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.consumer import Consumer

    create_app(load_settings(data_dir=tmp_path, kafka_security_protocol="PLAINTEXT"))
    create_app(load_settings(data_dir=tmp_path, kafka_security_protocol="PLAINTEXT"))  # once
    assert getattr(Consumer.getmany, "_kubefinops_fence", False)
    assert Fetcher.seek_to.__qualname__.startswith("_install_seek_fence")
    fetcher = object.__new__(Fetcher)  # the hooks keep their state on the fetcher
    fetcher._subscriptions = type("S", (), {"seek": lambda self, tp, offset: None})()
    fetcher._records = {}
    fetcher._notify = lambda future: None
    fetcher._wait_consume_future = None
    Fetcher.seek_to(fetcher, A, 7)
    Fetcher.seek_to(fetcher, A, 9)
    assert fetcher._kubefinops_fence.resets == {A: 2}
    assert fetcher._kubefinops_fence.reset_to == {A: 9}
