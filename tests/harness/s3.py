"""An S3 endpoint for integration tests: moto's server as a separate process.

``moto`` speaks the S3 REST API over HTTP like MinIO does, so code under test only needs an
endpoint URL, credentials, a region and path-style addressing (``S3Info.client_config()``).
moto accepts any credentials; the ones here are just what clients should send.

Outage tests: ``S3Info.stop()`` stops the server by PID and ``S3Info.start()`` starts a new
one on the SAME port (clients keep their endpoint URL). moto keeps everything in memory, so a
restart loses every bucket and object: an outage test must re-create its bucket after
``start()`` (or assert the loss). Use the function-scoped ``s3_outage`` fixture for them: it is
a private server for that one test (~1 s to start), so stopping it never disturbs the shared
session server or buckets other fixtures created there; it is stopped after the test.
Tests on the session server (``s3``) should use their own bucket names (``unique_bucket``).
``S3Info.reset()`` drops all state without a restart — only for private servers, for the
same reason.
"""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.proc import Server, free_port, port_open, wait_until

ACCESS_KEY = "kubefinops-test"
SECRET_KEY = "kubefinops-test-secret"  # moto accepts any credentials
REGION = "us-east-1"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class S3Info:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    server: Server

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def __repr__(self) -> str:
        return f"S3Info(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    def is_up(self) -> bool:
        return self.server.alive() and port_open(self.port)

    def stop(self) -> None:
        """Simulate an outage: stop the server by PID and wait until the port refuses."""
        self.server.stop(timeout=10.0)
        wait_until(lambda: not port_open(self.port), 10.0, "moto_server port release")

    def start(self) -> None:
        """Start a fresh server on the same port (all buckets are gone: state is in memory)."""
        if self.server.alive():
            return
        self.server.start()
        _wait_ready(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_up(self) -> None:
        """Bring the server back if a test left it stopped (or it died)."""
        if not self.is_up():
            self.server.stop()
            self.start()

    def reset(self) -> None:
        """Drop all buckets/objects without restarting (moto's /moto-api/reset)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def client_config(self) -> Any:
        """botocore Config: path-style addressing (MinIO-compatible), fail fast in tests."""
        from botocore.config import Config

        return Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=2,
            read_timeout=10,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", **kw)`` / ``aioboto3.Session().client``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": self.client_config(),
        }

    def boto3_client(self) -> Any:
        import boto3

        return boto3.client("s3", **self.client_kwargs())


def unique_bucket(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _ready(info: S3Info) -> bool:
    # ListBuckets answers 200 with XML once the server is up.
    with urllib.request.urlopen(f"{info.endpoint_url}/", timeout=2) as resp:
        return bool(resp.status == 200)


def _wait_ready(info: S3Info) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not info.server.alive():
            log = info.server.log
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"moto_server exited early\n{tail}")
        if port_open(info.port):
            try:
                if _ready(info):
                    return
            except Exception as exc:  # not ready yet
                last = exc
        time.sleep(0.05)
    raise TimeoutError(f"moto_server not ready after {START_TIMEOUT}s (last error: {last!r})")


def start_s3(workdir: Path) -> S3Info:
    port = free_port()
    server = Server(
        "moto_server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        workdir / "moto_server.log",
        cwd=workdir,
    )
    info = S3Info(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, REGION, server)
    server.start()
    try:
        _wait_ready(info)
    except BaseException:
        server.kill()
        raise
    return info


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Info]:
    """One moto S3 server for the session (HTTP, path-style, in-memory state)."""
    info = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield info
    finally:
        info.server.stop()


@pytest.fixture
def s3_outage(tmp_path: Path) -> Iterator[S3Info]:
    """A private moto server for one test that stops/starts it (never the session one)."""
    info = start_s3(tmp_path)
    try:
        yield info
    finally:
        info.server.stop()
