"""The benchmarks' server stack stops what it started when a later server fails to start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench.common as common


class _FakeServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = 0

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped += 1


def test_kafka_is_stopped_when_mongo_fails_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kafka = _FakeServer("kafka")

    def start_kafka(workdir: Path, libs: Path) -> tuple[Any, _FakeServer]:
        return object(), kafka

    def start_secantus(storage: str, log_dir: str) -> Any:
        raise RuntimeError("secantusdb did not come up")

    monkeypatch.setattr(common, "fetch_libs", lambda: tmp_path)
    monkeypatch.setattr(common, "start_kafka", start_kafka)
    monkeypatch.setattr(common, "start_secantus", start_secantus)
    stack = common.Stack(workdir=tmp_path / "stack")
    with pytest.raises(RuntimeError, match="did not come up"):
        stack.start()
    assert kafka.stopped == 1 and stack.servers == []
    stack.close()  # idempotent
    assert kafka.stopped == 1
