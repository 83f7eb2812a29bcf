"""A real MongoDB wire-protocol server for tests: SecantusDB (PyPI ``secantusdb``), per session.

No ``mongod`` is installable here; SecantusDB speaks the wire protocol over WiredTiger and is a
test/dev dependency only (GPL-2.0, run as a separate process, never imported).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness.proc import Server, free_port, port_open, wait_until


@dataclass(frozen=True)
class MongoInfo:
    uri: str
    port: int
    server: Server


def start_secantus(storage: str, log_dir: str, port: int | None = None) -> tuple[Server, int]:
    from pathlib import Path

    port = port or free_port()
    # the venv's bin is not on PATH when the venv's python is run directly (benchmarks)
    beside = Path(sys.executable).with_name("secantusd-py")
    exe = shutil.which("secantusd-py") or (str(beside) if beside.exists() else None)
    if exe is None:
        pytest.skip("secantusd-py not installed (pip install secantusdb)")
    server = Server(
        "secantusdb",
        [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage],
        log=Path(log_dir) / "secantusdb.log",
    ).start()
    try:
        wait_until(lambda: port_open(port), 30, "secantusdb", server.log)
    except BaseException:
        server.stop()
        raise
    return server, port


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoInfo]:
    work = tmp_path_factory.mktemp("mongo")
    (work / "data").mkdir()
    server, port = start_secantus(str(work / "data"), str(work))
    try:
        yield MongoInfo(uri=f"mongodb://127.0.0.1:{port}/", port=port, server=server)
    finally:
        server.stop()
