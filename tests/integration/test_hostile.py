"""Hostile input and faults against real servers (issue 10).

* a chunk dated ten years ahead and a chunk on another workload's key, in the columnar format
  and in the per-container one before it, are dead-lettered with their reasons and leave the
  container's data intact (exact sample count afterwards, old and new records mixed); so are a
  broken member of a bundle and a member of a workload on another partition, alone, while the
  bundle's good members are ingested;
* the policy API: a 1 MB policy gets 413 and nothing reaches MongoDB; nested bodies, unknown
  charsets, 2^64 integers, Infinity, ids like ``../../etc/passwd`` or with a newline, an 8 KB
  audit user get 400/413/415; concurrent PUTs on one id get 200 or 409, never 500;
  ``/api/usage`` needs the read token once one is set; HEAD answers as GET without a body, a
  405 names the methods a route takes;
* an empty token is a settings error at start; a worker that cannot reach Kafka retries with one
  log line per attempt and exits non-zero when its budget is spent;
* SASL_SSL + SCRAM against a broker with a TLS listener (client certificate required) works, and
  a wrong CA ends the worker with one line;
* a live git child's ``/proc/<pid>/environ`` holds none of the worker's secrets, and the askpass
  directory is gone after the call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from pymongo import MongoClient

from engine.core.bundles import bundle, partition_of
from engine.core.model import CycleEnd
from tests.harness.kafka import KafkaInfo, create_topics, fetch_libs, start_kafka
from tests.harness.proc import free_port, wait_for
from tests.harness.tls import make_ca, make_tls
from tests.integration.samples import batches, encode, encode_chunks, workload
from tests.integration.workers import (
    Deployment,
    consume_all,
    consume_placed,
    http_json,
    produce,
)

pytestmark = pytest.mark.integration

TOKEN = "hostile-api-token"
READ_TOKEN = "hostile-read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YEAR = 365 * 86400


def raw_request(url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            return resp.status, await resp.text()

    return asyncio.run(go())


def head_of(url: str, method: str, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
    """The status, the ``Allow`` header and the body bytes of a body-less request."""

    async def go() -> tuple[int, str | None, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            return resp.status, resp.headers.get("Allow"), await resp.read()

    return asyncio.run(go())


def socket_status(port: int, request: bytes) -> int:
    """The status of a request written byte for byte (headers no HTTP client would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        head = conn.recv(64)
    return int(head.split(b" ", 2)[1])


def test_hostile_chunks_and_requests_against_one_worker(kafka: KafkaInfo, mongo, tmp_path: Path):
    database = f"hostile{int(time.time() * 1000)}"
    dep = Deployment(
        kafka=kafka,
        workdir=tmp_path,
        extra_env={
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": database,
            "KUBEFINOPS_API_TOKEN": TOKEN,
            "KUBEFINOPS_API_READ_TOKEN": READ_TOKEN,
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
        },
    )
    try:
        server, port = dep.start_worker("w1")
        dep.wait_ready(port, server=server)
        base = f"http://127.0.0.1:{port}"

        # --- 1. chunks: good, ten years ahead, on the wrong key, good again ---------------------
        spec, other = workload("cart"), workload("other")
        sent, cpu, _ = batches(spec, np.random.default_rng(7), hours=4)
        early, late = sent[:2], sent[2:]
        future = early[-1].model_copy(
            update={
                "start": early[-1].end,
                "end": early[-1].end + 10 * YEAR,
                "samples": {"cpu": [(early[-1].end + 30, 0.5)], "memory": []},
            }
        )
        # the early hours in the format before columnar chunks (left in the topic by an
        # upgrade), the later ones as the collector sends them now; hostile records in both
        (future_chunk,) = encode_chunks([future])
        (wrong_key,) = encode_chunks([late[0]])
        # the later chunks in a bundle, as the collector sends them since 2026-12-03, with a
        # broken member and one of a workload that keys another partition among them
        home = partition_of(spec.workload_id.encode(), dep.partitions)
        stranger = next(
            w
            for w in (workload(f"s{i}") for i in range(64))
            if partition_of(w.workload_id.encode(), dep.partitions) != home
        )
        (stranger_chunk,) = encode_chunks(batches(stranger, np.random.default_rng(8), hours=1)[0])
        members = [raw for _, raw in encode_chunks(late)]
        late_bundle = bundle([*members[:1], b'{"type": "chunk"}', stranger_chunk[1], *members[1:]])
        records = [
            *encode(early),
            (spec.workload_id.encode(), future.model_dump_json().encode()),
            (spec.workload_id.encode(), future_chunk[1]),
            (other.workload_id.encode(), late[0].model_dump_json().encode()),  # wrong key
            (other.workload_id.encode(), wrong_key[1]),
            (spec.workload_id.encode(), late_bundle),
            *encode([CycleEnd(cycle="c1", spec=spec)]),
        ]
        asyncio.run(produce(kafka, dep.topic("metrics"), records))
        letters = asyncio.run(consume_all(kafka, dep.topic("deadletter"), expect=6, timeout=60))
        reasons = sorted(json.loads(v)["reason"] for _, v in letters)
        assert sum(r.startswith("future-chunk") for r in reasons) == 2, reasons
        assert sum(r.startswith("key-mismatch") for r in reasons) == 2, reasons
        assert sum(r.startswith("bundle member: MetricsRecord.chunk.") for r in reasons) == 1
        (moved,) = [json.loads(v) for _, v in letters if b"partition-mismatch" in v]
        assert moved["key"] == stranger.workload_id and '"workload":"s' in moved["value"], moved
        # what readers of the topics rely on: keyed by the workload, on its key's partition
        # (murmur2, Kafka's default), the decision on the decisions topic's one partition
        recs = asyncio.run(consume_placed(kafka, dep.topic("recommendations"), expect=1))
        assert [(p, k) for p, k, _ in recs] == [(home, spec.workload_id.encode())]
        decided = asyncio.run(consume_placed(kafka, dep.topic("decisions"), expect=1))
        assert [(p, k) for p, k, _ in decided] == [(0, spec.workload_id.encode())]
        assert json.loads(decided[0][2] or b"{}")["workload_id"] == spec.workload_id

        usage_url = f"{base}/api/usage/shop/Deployment/cart"
        assert http_json(usage_url)[0] == 401
        assert http_json(usage_url, headers={"Authorization": "Bearer "})[0] == 401
        status, usage = http_json(usage_url, headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert status == 200, usage
        # every good sample counted once; the hostile chunks moved nothing
        assert usage["containers"]["app"]["cpu"]["count"] == cpu.size

        # --- 5. the policy API --------------------------------------------------------------
        put = f"{base}/api/policies"
        json_headers = {**AUTH, "Content-Type": "application/json"}
        huge = json.dumps({"mode": "observe", "name": "x" * (1024 * 1024)}).encode()
        assert raw_request(f"{put}/big", "PUT", huge, json_headers)[0] == 413
        nested = b'{"selectors": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert raw_request(f"{put}/p", "PUT", nested, json_headers)[0] in (400, 413)
        deep = b'{"selectors": ' + b"[" * 40 + b"]" * 40 + b"}"
        assert raw_request(f"{put}/p", "PUT", deep, json_headers)[0] == 400
        odd_charset = {**AUTH, "Content-Type": "application/json; charset=x-klingon"}
        assert raw_request(f"{put}/p", "PUT", b"{}", odd_charset)[0] == 415
        assert raw_request(f"{put}/p", "PUT", b"{}", {**AUTH, "Content-Type": "text/xml"})[0] == 415
        big_int = b'{"priority": ' + str(2**64).encode() + b"}"
        assert raw_request(f"{put}/p", "PUT", big_int, json_headers)[0] == 400
        infinite = b'{"estimator": {"cpu_floor": Infinity}}'
        assert raw_request(f"{put}/p", "PUT", infinite, json_headers)[0] == 400
        for bad_id in ("a%0Ab", "a%00b", "a%E2%80%AEb", "..%2F..%2Fetc%2Fpasswd", "UPPER"):
            status, text = raw_request(f"{put}/{bad_id}", "PUT", b"{}", json_headers)
            assert status in (400, 404), (bad_id, status, text)
        long_user = {**json_headers, "X-Kubefinops-User": "u" * 8192}
        assert raw_request(f"{put}/p", "PUT", b"{}", long_user)[0] in (400, 431)
        newline_user = {**json_headers, "X-Kubefinops-User": "bob<script>"}
        assert raw_request(f"{put}/p", "PUT", b"{}", newline_user)[0] == 400
        assert raw_request(f"{put}/p", "PUT", b"{}", {"Authorization": "Bearer "})[0] == 401
        # a key twice: which one a reader keeps is the parser's choice, so it is refused
        twice = b'{"mode": "observe", "mode": "autopilot"}'
        status, text = raw_request(f"{put}/p", "PUT", twice, json_headers)
        assert status == 400 and "duplicate key 'mode'" in text, (status, text)
        # a body naming another policy is not silently stored under the path's id
        status, text = raw_request(f"{put}/p", "PUT", b'{"id": "other"}', json_headers)
        assert status == 400 and "path" in text, (status, text)
        # a token that is not UTF-8 (header and cookie) is a wrong token, not a 500
        for header in (b"Authorization: Bearer t\xf6k", b"Cookie: kubefinops_read=\xff"):
            request = b"GET /api/stats HTTP/1.1\r\nHost: w\r\n" + header + b"\r\n\r\n"
            assert socket_status(port, request) == 401, header
        # Faust's own views are off: they answered without a token (a policy, any usage state)
        for path in ("/router/", "/router/topics", "/table/", "/table/policies/race/"):
            assert raw_request(base + path, "GET", b"", {})[0] == 404, path
        # HEAD of a GET route answers as the GET would, without a body (a monitor's probe);
        # a method a route does not take is a 405 that says which ones it does
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert head_of(f"{base}/health", "HEAD", {}) == (200, None, b"")
        assert head_of(f"{base}/api/stats", "HEAD", {})[0] == 401
        assert head_of(f"{base}/api/stats", "HEAD", read) == (200, None, b"")
        assert head_of(f"{base}/api/cycles", "HEAD", AUTH)[:2] == (405, "POST")
        assert head_of(f"{base}/health", "DELETE", {})[:2] == (405, "GET,HEAD")
        allowed = head_of(f"{put}/p", "PATCH", AUTH)[:2]
        assert allowed == (405, "DELETE,GET,HEAD,PUT"), allowed
        # a metric name that is not one: the 400 says which
        status, text = raw_request(f"{base}/metrics?name[]=up&name[]=no-such!", "GET", b"", {})
        assert status == 400 and "'no-such!' is not a metric name" in text, (status, text)
        # a request line over aiohttp's 8 KiB limit: a 400, and a warning line counting such
        # requests instead of an ERROR with a traceback for each (anyone could fill the log)
        too_long = b"GET /" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: w\r\n\r\n"
        assert socket_status(port, too_long) == 400
        wait_for(
            lambda: "refused malformed HTTP requests with 400" in server.log.read_text(),
            10,
            "the malformed-request warning",
        )
        assert "Error handling request" not in server.log.read_text()
        # the decisions' query parameters: each error says which and what it takes
        decisions = f"{base}/api/decisions"
        for query, said in (
            ("limit=abc", "limit must be an integer from 1 to 500"),
            ("limit=0", "limit must be"),
            ("limit=1000000", "limit must be"),
            ("limit=" + "9" * 5000, "limit must be"),
            ("before=nan", "before must be a Unix time"),
            ("before=1e309", "before must be a Unix time"),
            ("before_id=d1", "before_id needs before"),
        ):
            status, text = raw_request(f"{decisions}?{query}", "GET", b"", read)
            assert status == 400 and said in text, (query, status, text)

        db = MongoClient(mongo.uri)[database]
        assert db["policies"].count_documents({}) == 0, "a refused policy was stored"
        assert db["policy_history"].count_documents({}) == 0

        # concurrent PUTs of one id: each is stored as its own version or refused with 409
        def one(i: int) -> int:
            body = json.dumps({"mode": "observe", "priority": i}).encode()
            return raw_request(f"{put}/race", "PUT", body, json_headers)[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(one, range(20)))
        assert set(statuses) <= {200, 409}, statuses
        versions = db["policy_history"].count_documents({"policy_id": "race"})
        assert versions == statuses.count(200), (versions, statuses)
        assert server.alive()
    finally:
        dep.stop_all()


def run_worker(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_an_empty_token_is_a_settings_error(tmp_path: Path):
    proc = run_worker({"KUBEFINOPS_API_TOKEN": "", "KUBEFINOPS_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "api_token" in lines[0], proc.stderr


def test_a_worker_waits_for_kafka_with_backoff_then_exits(tmp_path: Path):
    dead = f"127.0.0.1:{free_port()}"
    proc = run_worker(
        {
            "KUBEFINOPS_KAFKA_BOOTSTRAP_SERVERS": dead,
            "KUBEFINOPS_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "KUBEFINOPS_KAFKA_WAIT_SECONDS": "4",
            "KUBEFINOPS_DATA_DIR": str(tmp_path),
        }
    )
    assert proc.returncode == 4, proc.stderr
    # one log line per attempt (the log goes to stdout), one line on stderr at the end
    attempts = [line for line in proc.stdout.splitlines() if "Kafka not reachable" in line]
    assert len(attempts) >= 2, proc.stdout
    assert [n for n in range(1, len(attempts) + 1)] == [
        int(line.split("attempt ")[1].split(",")[0]) for line in attempts
    ]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gave up after 4s" in lines[0], proc.stderr


def test_a_metrics_topic_with_another_partition_count_is_a_settings_error(
    kafka: KafkaInfo, tmp_path: Path
):
    """The tables are partitioned like the metrics topic: a worker whose
    KUBEFINOPS_TOPIC_PARTITIONS differs from the broker's count refuses to start, in one line
    naming the topic and both counts (before, every bundle member was dead-lettered as
    partition-mismatch), and creates nothing."""
    dep = Deployment(kafka=kafka, workdir=tmp_path, partitions=2)
    create_topics(kafka, [dep.topic("metrics")], partitions=3)
    env = dep.env(free_port(), "w1")
    proc = run_worker({**env, "KUBEFINOPS_KAFKA_WAIT_SECONDS": "10"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"{dep.topic('metrics')} has 3 (expected 2)" in lines[0], lines
    assert "KUBEFINOPS_TOPIC_PARTITIONS is 2" in lines[0], lines
    assert kafka.password not in proc.stdout + proc.stderr
    assert dep.topic("decisions") not in asyncio.run(topic_names(kafka))  # nothing created


async def topic_names(kafka: KafkaInfo) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


# --- Kafka over TLS -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kafka_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaInfo]:
    """A second broker for this module only, with a SASL_SSL listener (client cert required)."""
    work = tmp_path_factory.mktemp("kafka-tls")
    info, server = start_kafka(work / "broker", fetch_libs(), tls=make_tls(work / "tls"))
    try:
        yield info
    finally:
        server.stop(timeout=20.0)


def tls_env(info: KafkaInfo, ca: Path) -> dict[str, str]:
    assert info.tls is not None and info.tls_bootstrap is not None
    return {
        "KUBEFINOPS_KAFKA_BOOTSTRAP_SERVERS": info.tls_bootstrap,
        "KUBEFINOPS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KUBEFINOPS_KAFKA_SSL_CAFILE": str(ca),
        "KUBEFINOPS_KAFKA_SSL_CERTFILE": str(info.tls.client_cert),
        "KUBEFINOPS_KAFKA_SSL_KEYFILE": str(info.tls.client_key),
    }


def test_sasl_ssl_with_scram_and_a_client_certificate(kafka_tls: KafkaInfo, tmp_path: Path):
    assert kafka_tls.tls is not None
    dep = Deployment(
        kafka=kafka_tls,
        workdir=tmp_path,
        extra_env={
            **tls_env(kafka_tls, kafka_tls.tls.ca),
            "KUBEFINOPS_PROMETHEUS_URL": "http://127.0.0.1:9",
        },
    )
    try:
        server, port = dep.start_worker("tls")
        state = dep.wait_ready(port, server=server)
        assert state["assigned_partitions"] > 0
    finally:
        dep.stop_all()


def test_a_wrong_ca_ends_the_worker_with_one_line(kafka_tls: KafkaInfo, tmp_path: Path):
    other_ca, _, _ = make_ca(tmp_path / "other", "other-ca")
    dep = Deployment(kafka=kafka_tls, workdir=tmp_path)
    proc = run_worker({**dep.env(0, "wrong-ca"), **tls_env(kafka_tls, other_ca)})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "TLS handshake with Kafka" in lines[0] and "certificate verify failed" in lines[0]
    assert kafka_tls.password not in proc.stderr + proc.stdout


# --- child processes ------------------------------------------------------------------------
SECRETS = {
    "KUBEFINOPS_MONGODB_URI": "mongodb://app:mongo-SECRET-1@db:27017",
    "KUBEFINOPS_S3_SECRET_KEY": "s3-SECRET-2",
    "KUBEFINOPS_KAFKA_PASSWORD": "kafka-SECRET-3",
    "KUBEFINOPS_API_TOKEN": "api-SECRET-4",
}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def test_git_children_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from engine.adapters.gitops import GitOpsWriter
    from engine.errors import KubeFinOpsError
    from engine.settings import load_settings

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    # A "remote" that accepts the connection and never answers: git stays alive to be read.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    settings = load_settings(
        git_remote_url=f"http://127.0.0.1:{port}/repo.git",
        git_token="git-SECRET-5",
        git_workdir=tmp_path / "work",
        kafka_password="kafka-SECRET-3",
    )
    writer = GitOpsWriter(settings)
    before = set(Path(tempfile.gettempdir()).glob("kubefinops-askpass-*"))
    environs: dict[int, dict[str, str]] = {}

    # what the clone raised, read in this thread: a pytest.raises inside the thread would only
    # warn when nothing is raised
    outcome: list[BaseException | None] = []

    def open_repo() -> None:  # what a cycle does first: clone (hangs on the silent remote)
        try:
            with writer._askpass():
                writer._open()
        except BaseException as exc:  # asserted below, in the test's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=open_repo)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not environs:
        for pid in _descendants(os.getpid()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if cmdline and Path(cmdline[0].decode()).name.startswith("git"):
                environs[pid] = dict(
                    item.split("=", 1) for item in raw.decode().split("\0") if "=" in item
                )
        time.sleep(0.05)
    for conn in accepted:
        conn.close()
    listener.close()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the clone did not give up when its remote went away"
    assert len(outcome) == 1 and isinstance(outcome[0], KubeFinOpsError), outcome
    assert environs, "no git child seen"
    for pid, env in environs.items():
        text = "\0".join(f"{k}={v}" for k, v in env.items())
        for secret in [*SECRETS.values(), "kafka-SECRET-3"]:
            assert secret not in text, (pid, sorted(env))
        assert not [k for k in env if k.startswith("KUBEFINOPS_") and "ASKPASS" not in k], env
        assert "PATH" in env
    assert set(Path(tempfile.gettempdir()).glob("kubefinops-askpass-*")) == before
