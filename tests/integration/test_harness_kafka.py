"""The Kafka harness gives a real broker that only SCRAM-SHA-256 clients with the right password
can use, with no topic auto-creation, readable by aiokafka and kcat alike."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnknownTopicOrPartitionError,
)

from tests.harness.kafka import (
    KafkaInfo,
    acreate_topics,
    create_topics,
    kcat_args,
    unique_topic,
)

pytestmark = pytest.mark.integration


async def _produce_json(info: KafkaInfo, topic: str, records: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(**info.client_kwargs(), acks="all")
    await producer.start()
    try:
        for i, record in enumerate(records):
            await producer.send_and_wait(topic, json.dumps(record).encode(), key=f"k{i}".encode())
    finally:
        await producer.stop()


def _require_kcat() -> None:
    # Not a skip: CI must install it (`apt-get install -y kcat`), the docs tell SREs to use it.
    assert shutil.which("kcat"), "kcat is not installed: apt-get install -y kcat"


async def test_scram_round_trip_through_a_consumer_group(kafka: KafkaInfo) -> None:
    topic = unique_topic("harness.roundtrip")
    await acreate_topics(kafka, [topic], partitions=3)
    sent = [{"container": f"c{i}", "cpu": i / 10} for i in range(12)]
    await _produce_json(kafka, topic, sent)

    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=unique_topic("harness.group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[dict[str, object]] = []
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    received.extend(json.loads(m.value) for m in messages)
        await consumer.commit()
        committed = {tp.partition: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()

    key = lambda r: str(r["container"])  # noqa: E731
    assert sorted(received, key=key) == sorted(sent, key=key)
    assert sum(v or 0 for v in committed.values()) == len(sent)
    assert len(committed) == 3


async def test_wrong_password_is_refused(kafka: KafkaInfo) -> None:
    host, port = kafka.bootstrap.split(":")
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"}

    good = await create_conn(
        host, int(port), **sasl, sasl_plain_username=kafka.username,
        sasl_plain_password=kafka.password,
    )  # fmt: skip
    good.close()

    with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
        await create_conn(
            host, int(port), **sasl, sasl_plain_username=kafka.username,
            sasl_plain_password=kafka.password + "-wrong",
        )  # fmt: skip
    with pytest.raises(SaslAuthenticationFailed):
        await create_conn(
            host, int(port), **sasl, sasl_plain_username="nobody",
            sasl_plain_password=kafka.password,
        )  # fmt: skip

    # What a real client (producer/consumer/admin) sees: it cannot bootstrap at all.
    wrong = {**kafka.client_kwargs(), "sasl_plain_password": "not-the-password"}
    producer = AIOKafkaProducer(**wrong)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()

    assert "invalid credentials with SASL mechanism SCRAM-SHA-256" in kafka.log.read_text(
        errors="replace"
    )


async def test_client_listener_requires_sasl(kafka: KafkaInfo) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()


async def test_create_topics_is_idempotent_and_sets_partitions(kafka: KafkaInfo) -> None:
    names = [unique_topic("harness.create"), unique_topic("harness.create")]
    create_topics(kafka, names, partitions=4, config={"cleanup.policy": "compact"})
    create_topics(kafka, names, partitions=4)  # already there: no error

    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, names[0], {"cleanup.policy": None})]
        )
    finally:
        await admin.close()
    assert sorted(t["topic"] for t in described) == sorted(names)
    assert all(len(t["partitions"]) == 4 for t in described)
    entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
    assert entries["cleanup.policy"] == "compact"


async def test_topics_are_not_auto_created(kafka: KafkaInfo) -> None:
    topic = unique_topic("harness.missing")
    producer = AIOKafkaProducer(**kafka.client_kwargs(), request_timeout_ms=1000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()

    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat not installed (apt-get install kcat)"
)
async def test_kcat_reads_the_json_we_produced(kafka: KafkaInfo) -> None:
    _require_kcat()
    topic = unique_topic("harness.kcat")
    await acreate_topics(kafka, [topic], partitions=1)
    sent = [{"workload": "api", "i": i, "note": "ünïcode"} for i in range(5)]
    await _produce_json(kafka, topic, sent)

    proc = await asyncio.create_subprocess_exec(
        "kcat", *kcat_args(kafka), "-C", "-t", topic, "-o", "beginning", "-e", "-q",
        "-f", "%k\t%s\n",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    lines = out.decode().splitlines()
    assert [line.split("\t", 1)[0] for line in lines] == [f"k{i}" for i in range(5)]
    assert [json.loads(line.split("\t", 1)[1]) for line in lines] == sent


async def test_kcat_with_a_wrong_password_fails(kafka: KafkaInfo) -> None:
    _require_kcat()
    args = [
        a if not a.startswith("sasl.password=") else "sasl.password=nope" for a in kcat_args(kafka)
    ]
    proc = await asyncio.create_subprocess_exec(
        "kcat", *args, "-L", "-m", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _out, err = await proc.communicate()
    assert proc.returncode != 0
    assert b"Authentication failed" in err or b"SASL authentication error" in err, err
