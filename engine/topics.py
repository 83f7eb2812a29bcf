"""Topic inspection for operators: ``kubefinops topics | tail | deadletters``.

Same settings, same SASL/SCRAM code and the same pre-flight as the worker (a refused password is
the worker's one line, exit 3), so whoever can run a worker can read its topics without knowing
kcat's flags or the JSON shapes:

* :func:`describe_topics` — every topic of the app (``<prefix>.*`` and Faust's
  ``<app_id>-*`` changelogs): partitions, start/end offsets, cleanup policy and retention, and the
  lag of the agent that consumes it (the app's consumer group is the app id; one agent per topic).
* :func:`tail` — records decoded with the wire schema (:mod:`engine.core.records`); a record
  that does not decode is shown raw with the reason.
* :func:`read_dead_letters` / :func:`replay` — dead letters grouped by reason; replay sends a
  letter's value back to its original topic with its original key only if it is valid now
  (at-least-once: downstream agents are idempotent — per-key high-water marks, content-hash ids).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from engine.adapters.kafka import client_kwargs, partitions, preflight
from engine.app import topic_specs
from engine.core.model import DeadLetter, parse
from engine.core.records import Decoded, Letter, decode, replay_check, short_name
from engine.errors import DependencyUnavailable, InvalidRecord, PermanentError
from engine.settings import Settings

REPLAY_HEADER = "kubefinops-replayed-from"
MAX_PARKED_BYTES = 256 * 1024  # agents.runtime parks at most this much of a value


class UnknownTopic(PermanentError):
    """The topic named on the command line is not one of the app's."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    start_offsets: int  # sum over partitions
    end_offsets: int
    cleanup: str
    retention_ms: int | None
    consumer: str  # the agent that consumes it, "" if none
    lag: int | None  # None: the consumer group never committed on this topic

    @property
    def records(self) -> int:
        return self.end_offsets - self.start_offsets


def consumers(settings: Settings) -> dict[str, str]:
    """Full topic name -> the agent consuming it (from :func:`engine.app.topic_specs`)."""
    return {settings.topic(s.name): s.consumer for s in topic_specs(settings).values()}


def app_topic(name: str, settings: Settings) -> bool:
    return name.startswith(settings.topic_prefix + ".") or name.startswith(settings.app_id + "-")


def resolve(name: str, settings: Settings) -> str:
    """``metrics`` or ``kubefinops.metrics`` -> the full name; anything else is refused."""
    full = name if app_topic(name, settings) else settings.topic(name)
    if short_name(full, settings.topic_prefix) not in topic_specs(settings) and not full.startswith(
        settings.app_id + "-"
    ):
        known = ", ".join(sorted(topic_specs(settings)))
        raise UnknownTopic(f"unknown topic {name!r}: one of {known} (or a changelog)")
    return full


async def connect(settings: Settings) -> None:
    """The worker's pre-flight: one clear error for a refused password or an absent broker."""
    await preflight(settings, timeout=15.0)


def _config(resources: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for response in resources:
        for res in response.resources:
            _err, _msg, _type, name, entries = res[:5]
            out[name] = {e[0]: e[1] for e in entries}
    return out


async def describe_topics(settings: Settings) -> list[TopicInfo]:
    await connect(settings)
    kwargs = client_kwargs(settings)
    admin = AIOKafkaAdminClient(**kwargs)
    consumer = AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False)
    try:
        await admin.start()
        await consumer.start()
        names = sorted(t for t in await admin.list_topics() if app_topic(t, settings))
        if not names:
            return []
        configs = _config(
            await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
            )
        )
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        parts_of = await partitions(admin, names)
        tps = [TopicPartition(n, p) for n in names for p in parts_of.get(n, [])]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka: {type(exc).__name__}: {exc}") from None
    finally:
        await consumer.stop()
        await admin.close()
    agents = consumers(settings)
    out = []
    for name in names:
        parts = [tp for tp in tps if tp.topic == name]
        lag: int | None = None
        for tp in parts:
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                lag = (lag or 0) + max(0, ends[tp] - meta.offset)
            elif lag is not None or any(committed.get(p) for p in parts):
                lag = (lag or 0) + ends[tp] - starts[tp]
        cfg = configs.get(name, {})
        retention = cfg.get("retention.ms")
        out.append(
            TopicInfo(
                name=name,
                partitions=len(parts),
                start_offsets=sum(starts[tp] for tp in parts),
                end_offsets=sum(ends[tp] for tp in parts),
                cleanup=cfg.get("cleanup.policy", "?"),
                retention_ms=int(retention)
                if retention and retention.lstrip("-").isdigit()
                else None,
                consumer=agents.get(name, ""),
                lag=lag,
            )
        )
    return out


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: float  # Unix seconds
    key: str | None
    decoded: Decoded
    headers: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key,
            "kind": self.decoded.kind,
            "value": self.decoded.value,
        }
        if self.decoded.error:
            doc["error"] = self.decoded.error
        if self.headers:
            doc["headers"] = dict(self.headers)
        return doc


async def read(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = False,
    last: int | None = None,
    follow: bool = False,
    key: str | None = None,
    idle_poll_ms: int = 500,
) -> AsyncGenerator[Record, None]:
    """Records of ``topic`` in offset order per partition.

    Without ``follow`` it stops at the end offsets seen when it started.  The start is the
    beginning (``from_beginning``), else the last ``last`` records of each partition, else the
    end (only new records: for ``follow``).
    """
    await connect(settings)
    full = resolve(topic, settings)
    short = short_name(full, settings.topic_prefix)
    kwargs = client_kwargs(settings)
    consumer = AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        await admin.start()
        try:
            parts = (await partitions(admin, [full])).get(full, [])
        finally:
            await admin.close()
        await consumer.start()
        if not parts:
            raise UnknownTopic(f"topic {full} does not exist on the broker")
        tps = [TopicPartition(full, p) for p in parts]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if from_beginning:
                consumer.seek(tp, starts[tp])
            elif last is not None:
                consumer.seek(tp, max(starts[tp], ends[tp] - last))
            else:
                consumer.seek(tp, ends[tp])
        pending = {tp for tp in tps if (await consumer.position(tp)) < ends[tp]}
        while follow or pending:
            batch = await consumer.getmany(*tps, timeout_ms=idle_poll_ms)
            for tp, messages in sorted(batch.items(), key=lambda kv: kv[0].partition):
                for msg in messages:
                    if not follow and msg.offset >= ends[tp]:
                        continue
                    k = None if msg.key is None else msg.key.decode("utf-8", errors="replace")
                    if key is None or k == key:
                        yield Record(
                            topic=full,
                            partition=tp.partition,
                            offset=msg.offset,
                            timestamp=msg.timestamp / 1000.0,
                            key=k,
                            decoded=decode(short, msg.value),
                            headers=tuple(
                                (h, v.decode("utf-8", errors="replace"))
                                for h, v in (msg.headers or ())
                            ),
                        )
            for tp in list(pending):
                if (await consumer.position(tp)) >= ends[tp]:
                    pending.discard(tp)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka: {type(exc).__name__}: {exc}") from None
    finally:
        await consumer.stop()


async def tail(
    settings: Settings,
    topic: str,
    *,
    limit: int | None = 10,
    from_beginning: bool = False,
    follow: bool = False,
    key: str | None = None,
) -> AsyncGenerator[Record, None]:
    """``kubefinops tail``: the last ``limit`` records by time (the first ``limit`` with
    ``from_beginning``); ``follow`` then keeps printing new ones until interrupted."""
    if follow:
        last = None if from_beginning else (limit or 0)
        async with aclosing(
            read(settings, topic, from_beginning=from_beginning, last=last, follow=True, key=key)
        ) as records:
            async for rec in records:
                yield rec
        return
    if from_beginning:
        shown = 0
        async with aclosing(read(settings, topic, from_beginning=True, key=key)) as records:
            async for rec in records:
                yield rec
                shown += 1
                if limit is not None and shown >= limit:
                    return
        return
    # The last N of a key may lie anywhere in its partition: scan from the beginning then.
    found = [
        r
        async for r in read(
            settings,
            topic,
            from_beginning=key is not None,
            last=limit if key is None else None,
            key=key,
        )
    ]
    order = sorted(found, key=lambda r: (r.timestamp, r.partition, r.offset))
    for rec in order if limit is None else order[-limit:] if limit else []:
        yield rec


def letters_of(records: Iterable[Record]) -> tuple[list[Letter], list[Record]]:
    """Dead letters, and the records of the dead-letter topic that are not one."""
    letters, broken = [], []
    for rec in records:
        if rec.decoded.kind != "DeadLetter":
            broken.append(rec)
            continue
        letters.append(
            Letter(rec.partition, rec.offset, DeadLetter.model_validate(rec.decoded.value))
        )
    return letters, broken


async def read_dead_letters(settings: Settings) -> tuple[list[Letter], list[Record]]:
    records = [r async for r in read(settings, "deadletter", from_beginning=True)]
    return letters_of(records)


@dataclass
class ReplayResult:
    replayed: list[Letter]
    refused: list[tuple[Letter, str]]


def letters_from_file(lines: Iterable[str]) -> list[Letter]:
    """Dead letters an operator fixed up: ``deadletters --output json`` lines, edited.

    Each line is ``{"partition", "offset", "letter": {...DeadLetter...}}`` (what the JSON output
    prints); a line that is not one is an :class:`InvalidRecord` naming the line.
    """
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            letter = parse(DeadLetter, json.dumps(doc["letter"]))
            out.append(Letter(int(doc.get("partition", 0)), int(doc.get("offset", -1)), letter))
        except (ValueError, KeyError, TypeError, InvalidRecord) as exc:
            raise InvalidRecord(f"line {n}: not a dead letter ({exc})") from None
    return out


async def replay(settings: Settings, letters: Iterable[Letter]) -> ReplayResult:
    """Send every letter whose value is valid now back to its original topic (same key).

    A letter that is still invalid is refused with the reason and stays where it is.  The
    producer waits for every acknowledgement (acks=all) before reporting success.
    """
    result = ReplayResult([], [])
    todo: list[Letter] = []
    for item in letters:
        why = replay_check(item.letter, settings.topic_prefix, MAX_PARKED_BYTES)
        if why is None:
            todo.append(item)
        else:
            result.refused.append((item, why))
    if not todo:
        return result
    await connect(settings)
    dl_topic = settings.topic("deadletter")
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    try:
        await producer.start()
        futures = []
        for item in todo:
            letter = item.letter
            origin = f"{dl_topic}:{item.partition}:{item.offset}".encode()
            futures.append(
                await producer.send(
                    letter.topic,
                    value=letter.value.encode("utf-8"),
                    key=letter.key.encode("utf-8") if letter.key is not None else None,
                    headers=[(REPLAY_HEADER, origin)],
                )
            )
        await asyncio.gather(*futures)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka: {type(exc).__name__}: {exc}") from None
    finally:
        await producer.stop()
    result.replayed.extend(todo)
    return result


def fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
