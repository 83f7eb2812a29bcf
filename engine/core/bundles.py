"""Bundles: many workloads' ``kubefinops.metrics`` records of ONE partition in one Kafka record.

One record per workload and chunk, and one cycle-end marker per workload, each cost the worker
Faust's per-event work (consume, dispatch, commit bookkeeping: ~0.25 ms), as much as the
handlers' work on an hourly chunk.  The collector therefore groups the records it has at hand
(one Prometheus answer, one shard's markers) by the partition their workload id keys, and sends
each group as one value::

    {"type": "bundle", "records": [<a chunk, usage batch or cycle-end record>, ...]}

keyed by its first member's workload id, so Kafka's default partitioner puts it where every
member belongs.  Members are the records as they would be sent alone, in their order, so a
workload's chunks still come before its marker on its partition.  A group of one is sent as the
record itself.  The aggregator checks every member's partition (a member of another partition
would be kept by the wrong owner) and handles each alone: a bad member is dead-lettered, the
rest of the bundle goes on.

The partition is Kafka's default: murmur2 of the key bytes, as the Java client and aiokafka
compute it (``aiokafka.partitioner.murmur2``; the pure core imports no Kafka client, and the
unit tests compare the two on random keys).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.core.bounds import MAX_BUNDLE_RECORDS, MAX_RECORD_BYTES

_HEAD = b'{"type":"bundle","records":['
_TAIL = b"]}"
_M32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned 32-bit
    value."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & _M32
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & _M32
        k ^= k >> r
        k = (k * m) & _M32
        h = ((h * m) & _M32) ^ k
    rest = length % 4
    if rest >= 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & _M32
    h ^= h >> 13
    h = (h * m) & _M32
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def bundle(members: Iterable[bytes]) -> bytes:
    """A bundle value from its members' encoded records (not decoded again)."""
    return _HEAD + b",".join(members) + _TAIL


def bundled(
    records: Iterable[tuple[str, bytes]],
    partitions: int,
    *,
    max_bytes: int = MAX_RECORD_BYTES,
    max_members: int = MAX_BUNDLE_RECORDS,
) -> list[tuple[bytes, bytes]]:
    """``(workload id, encoded record)`` pairs -> the ``(key, value)`` records to send: one
    bundle per partition, or several when one would pass ``max_bytes`` or ``max_members``;
    members keep their order within a partition, and a group of one is the record itself.  A
    record alone over ``max_bytes`` stays alone (the caller's records are already split under
    it)."""
    groups: dict[int, tuple[bytes, list[bytes]]] = {}  # partition -> first key, members
    sizes: dict[int, int] = {}  # partition -> the bundle's bytes so far
    out: list[tuple[bytes, bytes]] = []

    def close(p: int) -> None:
        key, raws = groups.pop(p)
        out.append((key, raws[0] if len(raws) == 1 else bundle(raws)))

    overhead = len(_HEAD) + len(_TAIL)
    for wid, raw in records:
        key = wid.encode()
        p = partition_of(key, partitions)
        if p in groups and (
            len(groups[p][1]) >= max_members or sizes[p] + 1 + len(raw) + overhead > max_bytes
        ):
            close(p)
        if p in groups:
            groups[p][1].append(raw)
            sizes[p] += 1 + len(raw)
        else:
            groups[p] = (key, [raw])
            sizes[p] = len(raw)
    for p in list(groups):
        close(p)
    return out
