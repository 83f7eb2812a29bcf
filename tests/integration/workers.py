"""Run real ``kubefinops worker`` processes against the session's real servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from engine.topics import partitions
from tests.harness.kafka import KafkaInfo, kcat_args
from tests.harness.proc import Server, free_port, wait_for, wait_until


@dataclass
class Deployment:
    """One isolated installation: its own topic prefix and app id on the shared broker."""

    kafka: KafkaInfo
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"kfo{uuid.uuid4().hex[:8]}")
    partitions: int = 4
    workers: list[tuple[Server, int]] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def env(self, port: int, name: str) -> dict[str, str]:
        return {
            "KUBEFINOPS_APP_ID": self.prefix,
            "KUBEFINOPS_TOPIC_PREFIX": self.prefix,
            "KUBEFINOPS_TOPIC_PARTITIONS": str(self.partitions),
            "KUBEFINOPS_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KUBEFINOPS_KAFKA_USERNAME": self.kafka.username,
            "KUBEFINOPS_KAFKA_PASSWORD": self.kafka.password,
            "KUBEFINOPS_DATA_DIR": str(self.workdir / name),
            "KUBEFINOPS_WEB_HOST": "127.0.0.1",
            "KUBEFINOPS_WEB_PORT": str(port),
            "KUBEFINOPS_WEB_CANONICAL_URL": f"http://127.0.0.1:{port}",
            "KUBEFINOPS_BROKER_SESSION_TIMEOUT": "10",
            "KUBEFINOPS_COLLECT_INTERVAL_SECONDS": "3600",
            "KUBEFINOPS_APPLY_BATCH_SECONDS": "3",
            "KUBEFINOPS_LOG_LEVEL": "info",
            **self.extra_env,
        }

    def start_worker(self, name: str = "w1", port: int | None = None) -> tuple[Server, int]:
        """A worker process; ``port``: reuse an address (a container restarted in its pod)."""
        port = port or free_port()
        server = Server(
            name=name,
            argv=[sys.executable, "-m", "engine.cli", "worker"],
            log=self.workdir / f"{name}.log",
            env=self.env(port, name),
        ).start()
        self.workers.append((server, port))
        return server, port

    def wait_ready(self, port: int, timeout: float = 90.0, server: Server | None = None) -> dict:
        """Poll ``/ready`` until it says ready.  Every answer on the way must be a probe's: 200
        when ready, else 503 with a ``reason`` — never a 500 from Faust's half-started state."""
        state: dict[str, Any] = {}
        wrong: list[tuple[int, Any]] = []

        def ready() -> bool:
            if server is not None and not server.alive():
                raise RuntimeError(f"worker exited: {server.log.read_text()[-3000:]}")
            status, body = http_json(f"http://127.0.0.1:{port}/ready")
            ok = isinstance(body, dict) and body.get("ready") is True
            if not (status == 200 and ok) and not (
                status == 503 and isinstance(body, dict) and body.get("reason")
            ):
                wrong.append((status, body if isinstance(body, dict) else str(body)[:300]))
            state.clear()
            state.update(body if isinstance(body, dict) else {})
            return status == 200 and ok

        wait_until(ready, timeout, f"worker on :{port}", server.log if server else None)
        assert not wrong, f"/ready answered other than 200 or 503 with a reason: {wrong[:3]}"
        return state

    def wait_stable(self, members: int, timeout: float = 120.0) -> None:
        """Wait until the consumer group has ``members`` members, is ``Stable`` at the broker and
        every worker answers ``/ready`` with partitions assigned: a rebalance is over."""
        ports = [port for _, port in self.workers]
        seen: dict[str, Any] = {}

        def stable() -> bool:
            state, count = asyncio.run(group_state(self.kafka, self.prefix))
            seen.update(group=state, members=count)
            if state != "Stable" or count != members:
                time.sleep(0.5)
                return False
            readies = [http_json(f"http://127.0.0.1:{p}/ready")[1] for p in ports]
            seen["ready"] = readies
            return all(r.get("ready") and r.get("assigned_partitions", 0) > 0 for r in readies)

        def said() -> str:
            """What was last seen, and each worker's last log lines: the timeout says why."""
            tails = "".join(
                f"\n--- {server.name} (alive: {server.alive()}) {server.log}:\n"
                + "\n".join(server.log.read_text(errors="replace").splitlines()[-25:])
                for server, _ in self.workers
                if server.log.exists()
            )
            head = f"consumer group {self.prefix} stable with {members} members"
            return f"{head} (last seen: {seen}){tails}"

        wait_until(stable, timeout, said)

    def stop_all(self) -> None:
        for server, _ in self.workers:
            server.stop(timeout=20)


def http_json(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                url,
                json=body,
                headers=headers or {},
                timeout=aiohttp.ClientTimeout(total=20),
            ) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    return asyncio.run(go())


def counter(port: int, name: str, **labels: str) -> float:
    """The sum of a worker's ``name`` samples (from its ``/metrics``) whose labels include
    ``labels``; 0 when it has none yet."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_json(f"http://127.0.0.1:{port}/metrics?name[]={name}")
    assert status == 200, (status, text)
    return sum(
        sample.value
        for family in text_string_to_metric_families(str(text))
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def put_policy(port: int, policy_id: str, document: dict[str, Any], token: str) -> dict[str, Any]:
    """PUT a policy through the worker's API and wait until the worker's global table holds that
    version (the one the recommender and the gate read): the next cycle runs under it."""
    base = f"http://127.0.0.1:{port}/api/policies"
    auth = {"Authorization": f"Bearer {token}"}
    status, stored = http_json(f"{base}/{policy_id}", "PUT", document, auth)
    assert status == 200, stored

    def in_table() -> bool:
        listed = http_json(base, headers=auth)[1].get("policies", [])
        return any(p["id"] == policy_id and p["version"] == stored["version"] for p in listed)

    wait_for(in_table, 30, f"policy {policy_id} v{stored['version']} in the worker's table")
    return dict(stored)


async def group_state(info: KafkaInfo, group: str) -> tuple[str, int]:
    """The consumer group's state at the broker (``Stable``, ``PreparingRebalance``, ...) and
    how many members it has."""
    admin = AIOKafkaAdminClient(**info.client_kwargs())
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
    return str(state), len(members)


async def consumer_lag(info: KafkaInfo, group: str, topic: str) -> int:
    """End offsets minus the group's committed offsets, summed over ``topic``'s partitions: 0
    once the group processed (and committed) every record on it."""
    admin = AIOKafkaAdminClient(**info.client_kwargs())
    consumer = AIOKafkaConsumer(**info.client_kwargs(), enable_auto_commit=False, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        # From the broker: an unsubscribed consumer's metadata does not know the topic, and
        # its ``partitions_for_topic`` was None — every lag was 0, whatever the group did.
        parts = [
            TopicPartition(topic, p) for p in (await partitions(admin, [topic])).get(topic, [])
        ]
        assert parts, f"topic {topic} has no partitions"
        starts = await consumer.beginning_offsets(parts)
        ends = await consumer.end_offsets(parts)
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)

        def done(tp: TopicPartition) -> int:
            # a partition the group never committed is reported at offset -1: nothing of it
            # is consumed (counting from -1 made an empty partition one record behind for ever)
            meta = committed.get(tp)
            return meta.offset if meta is not None and meta.offset >= 0 else starts[tp]

        return sum(max(0, end - done(tp)) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def wait_consumed(info: KafkaInfo, group: str, topic: str, timeout: float = 120.0) -> None:
    """Wait until the group committed every record on ``topic`` (an observable end, instead of
    sleeping while re-deliveries may still be in flight)."""
    last = ["never measured"]

    def done() -> bool:
        try:
            lag = asyncio.run(consumer_lag(info, group, topic))
        except Exception as exc:  # the admin client failed this time: said if it times out
            last[0] = f"{type(exc).__name__}: {exc}"
            raise
        last[0] = f"{lag} records"
        if lag == 0:
            return True
        time.sleep(0.5)
        return False

    # the last lag seen, asked at the timeout (a message formatted before the first check
    # always said "lag []")
    wait_until(done, timeout, lambda: f"{group} to consume {topic} (last lag: {last[0]})")


async def produce(
    info: KafkaInfo, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(**info.client_kwargs(), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def consume_all(
    info: KafkaInfo, topic: str, *, expect: int, timeout: float = 60.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Read from the beginning until ``expect`` records arrived or the timeout passed."""
    return [(k, v) for _, k, v in await consume_placed(info, topic, expect=expect, timeout=timeout)]


async def consume_placed(
    info: KafkaInfo, topic: str, *, expect: int, timeout: float = 60.0
) -> list[tuple[int, bytes | None, bytes | None]]:
    """:func:`consume_all` with each record's partition: ``(partition, key, value)``."""
    consumer = AIOKafkaConsumer(
        **info.client_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < expect:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.5)
                await consumer._client.force_metadata_update()
                continue
            if not consumer.assignment():
                consumer.assign([TopicPartition(topic, p) for p in parts])
                await consumer.seek_to_beginning()
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.partition, r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out


def kcat_read(
    info: KafkaInfo, topic: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Read ``count`` JSON values with kcat (a librdkafka client), SASL/SCRAM included.

    ``-e`` makes kcat stop at the end of the topic, so poll until enough records are there.
    """
    deadline = time.monotonic() + timeout
    values: list[dict[str, Any]] = []
    while True:
        proc = subprocess.run(
            [
                "kcat",
                *kcat_args(info),
                "-C",
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%s\n",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        values = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if len(values) >= count or time.monotonic() > deadline:
            return values
        time.sleep(1.0)
