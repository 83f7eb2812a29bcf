"""A real Apache Kafka broker (KRaft, single node) for integration tests.

The session-scoped ``kafka`` fixture:

1. runs ``scripts/fetch-kafka.sh`` (jars from Maven Central, cached in
   ``${KUBEFINOPS_CACHE:-~/.cache/kubefinops}/kafka-<version>/libs``; a no-op once cached),
2. formats KRaft storage in a temp dir with ``kafka.tools.StorageTool format --standalone``,
   adding one SCRAM-SHA-256 user with a random per-session password,
3. starts ``kafka.Kafka`` as broker+controller with three loopback listeners:
   ``CLIENT`` (SASL_PLAINTEXT, SCRAM-SHA-256 — the only one tests use, like production's
   ``infra-kafka``), ``BROKER`` (PLAINTEXT, inter-broker) and ``CONTROLLER`` (PLAINTEXT, KRaft),
4. waits until a SCRAM-authenticated aiokafka client gets metadata, yields ``KafkaInfo`` and
   stops the JVM by PID at session end.

Topics are never auto-created (``auto.create.topics.enable=false``, as in production):
create them with ``create_topics`` / ``acreate_topics``. Use ``unique_topic`` for names so
tests sharing the session broker do not collide.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import secrets
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from tests.harness.proc import Server, free_port, port_open
from tests.harness.tls import TlsFiles

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch-kafka.sh"
USERNAME = "kubefinops"
MECHANISM = "SCRAM-SHA-256"

# Light JVM for a 2-core machine: serial GC, small heap, C1 only (starts faster; throughput
# is irrelevant for tests).
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
]

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.kafkaconfig.name = kafka.server.KafkaConfig
logger.kafkaconfig.level = WARN
"""

T = TypeVar("T")


@dataclass(frozen=True)
class KafkaInfo:
    """How to reach the session broker. ``bootstrap`` is the SASL_PLAINTEXT/SCRAM listener."""

    bootstrap: str
    username: str
    password: str
    libs_dir: Path
    log: Path
    # A SASL_SSL listener (SCRAM over TLS, client certificate required), when started with TLS.
    tls_bootstrap: str | None = None
    tls: TlsFiles | None = None

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }

    def __repr__(self) -> str:  # keep the password out of assertion messages and logs
        return (
            f"KafkaInfo(bootstrap={self.bootstrap!r}, username={self.username!r}, log={self.log})"
        )


def kcat_args(info: KafkaInfo) -> list[str]:
    """kcat flags for the session broker: ``-b`` plus SASL_PLAINTEXT/SCRAM-SHA-256."""
    return [
        "-b", info.bootstrap,
        "-X", "security.protocol=SASL_PLAINTEXT",
        "-X", f"sasl.mechanisms={MECHANISM}",
        "-X", f"sasl.username={info.username}",
        "-X", f"sasl.password={info.password}",
    ]  # fmt: skip


def unique_topic(prefix: str = "test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even while an event loop is running."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def acreate_topics(
    info: KafkaInfo,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
    wait_s: float = 30.0,
) -> None:
    """Create topics (idempotent) and wait until every partition has a leader."""
    wanted = list(names)
    admin = AIOKafkaAdminClient(**info.client_kwargs())
    await admin.start()
    try:
        new = [NewTopic(n, partitions, 1, topic_configs=config or {}) for n in wanted]
        response = await admin.create_topics(new, timeout_ms=int(wait_s * 1000))
        for topic, code, message, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"create topic {topic!r} failed: error {code} {message}")
    finally:
        await admin.close()
    await _wait_for_leaders(info, wanted, wait_s)


def create_topics(
    info: KafkaInfo,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
    wait_s: float = 30.0,
) -> None:
    """Sync wrapper of ``acreate_topics`` (usable from sync fixtures and async tests)."""
    run_sync(acreate_topics(info, names, partitions, config, wait_s))


async def _wait_for_leaders(info: KafkaInfo, topics: list[str], wait_s: float) -> None:
    client = AIOKafkaClient(**info.client_kwargs())
    await client.bootstrap()
    try:
        deadline = time.monotonic() + wait_s
        while True:
            cluster = await client.fetch_all_metadata()
            ready = all(
                (parts := cluster.partitions_for_topic(t))
                and all(
                    cluster.leader_for_partition(TopicPartition(t, p)) not in (None, -1)
                    for p in parts
                )
                for t in topics
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {topics} have no leaders after {wait_s}s")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _metadata_ok(info: KafkaInfo) -> bool:
    client = AIOKafkaClient(**info.client_kwargs(), request_timeout_ms=5000)
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
        return len(cluster.brokers()) > 0
    finally:
        await client.close()


def fetch_libs() -> Path:
    """Run scripts/fetch-kafka.sh (a no-op once cached) and return the libs dir."""
    done = subprocess.run(
        ["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/fetch-kafka.sh failed ({done.returncode}):\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def _tls_properties(tls: TlsFiles) -> dict[str, str]:
    """A ``CLIENTTLS`` listener: SASL_SSL with SCRAM, PKCS#12 keystore, PEM truststore, client
    certificates required."""
    prefix = "listener.name.clienttls."
    return {
        f"{prefix}scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}ssl.keystore.type": "PKCS12",
        f"{prefix}ssl.keystore.location": str(tls.server),
        f"{prefix}ssl.keystore.password": tls.key_password,
        f"{prefix}ssl.key.password": tls.key_password,
        f"{prefix}ssl.truststore.type": "PEM",
        f"{prefix}ssl.truststore.location": str(tls.ca),
        f"{prefix}ssl.client.auth": "required",
    }


def _server_properties(
    data: Path,
    client: int,
    broker: int,
    controller: int,
    tls_port: int | None = None,
    tls: TlsFiles | None = None,
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}",
        "controller.listener.names": "CONTROLLER",
        "listeners": (
            f"CLIENT://127.0.0.1:{client},BROKER://127.0.0.1:{broker},"
            f"CONTROLLER://127.0.0.1:{controller}"
        ),
        "advertised.listeners": f"CLIENT://127.0.0.1:{client},BROKER://127.0.0.1:{broker}",
        "listener.security.protocol.map": (
            "CLIENT:SASL_PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "inter.broker.listener.name": "BROKER",
        "sasl.enabled.mechanisms": MECHANISM,
        "listener.name.client.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "log.dirs": str(data),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Lets tests use short consumer session timeouts (broker default minimum: 6 s).
        "group.min.session.timeout.ms": "1000",
        # Light on a 2-core machine.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.cleaner.backoff.ms": "1000",
        "connection.failed.authentication.delay.ms": "0",
    }
    if tls is not None and tls_port is not None:
        props["listeners"] += f",CLIENTTLS://127.0.0.1:{tls_port}"
        props["advertised.listeners"] += f",CLIENTTLS://127.0.0.1:{tls_port}"
        props["listener.security.protocol.map"] += ",CLIENTTLS:SASL_SSL"
        props.update(_tls_properties(tls))
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start_kafka(
    workdir: Path, libs: Path, timeout: float = 60.0, tls: TlsFiles | None = None
) -> tuple[KafkaInfo, Server]:
    """Format storage in ``workdir`` and start a broker; return once SCRAM clients can connect.

    With ``tls``, the broker also listens with SASL_SSL (``KafkaInfo.tls_bootstrap``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    client, broker, controller = free_port(), free_port(), free_port()
    tls_port = free_port() if tls is not None else None
    password = secrets.token_hex(16)
    props = workdir / "server.properties"
    props.write_text(
        _server_properties(workdir / "data", client, broker, controller, tls_port, tls)
    )
    log4j = workdir / "log4j2.properties"
    log4j.write_text(LOG4J2)
    log = workdir / "kafka.log"
    java = [
        "java", *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*",
    ]  # fmt: skip
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    with log.open("ab") as out:
        fmt = subprocess.run(
            [
                *java, "kafka.tools.StorageTool", "format", "--standalone",
                # "-t ID" breaks when a random id starts with "-"
                f"--cluster-id={cluster_id}", "-c", str(props),
                "--add-scram", f"{MECHANISM}=[name={USERNAME},password={password}]",
            ],
            stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )  # fmt: skip
    if fmt.returncode != 0:
        raise RuntimeError(f"kafka StorageTool format failed; see {log}")
    info = KafkaInfo(
        f"127.0.0.1:{client}",
        USERNAME,
        password,
        libs,
        log,
        tls_bootstrap=f"127.0.0.1:{tls_port}" if tls_port else None,
        tls=tls,
    )
    server = Server("kafka", [*java, "kafka.Kafka", str(props)], log, cwd=workdir).start()
    try:
        _wait_ready(info, server, client, timeout)
    except BaseException:
        server.kill()
        raise
    return info, server


def _wait_ready(info: KafkaInfo, server: Server, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"kafka exited early (code {server.proc and server.proc.poll()})\n{_tail(info.log)}"
            )
        if port_open(port):
            try:
                if run_sync(_metadata_ok(info)):
                    return
            except Exception as exc:  # not ready yet: keep polling
                last = exc
        time.sleep(0.2)
    raise TimeoutError(
        f"kafka not ready after {timeout}s (last error: {last!r})\n{_tail(info.log)}"
    )


def _tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaInfo]:
    """One real Kafka broker for the whole test session (SASL_PLAINTEXT + SCRAM-SHA-256)."""
    info, server = start_kafka(tmp_path_factory.mktemp("kafka"), fetch_libs())
    try:
        yield info
    finally:
        server.stop(timeout=20.0)
