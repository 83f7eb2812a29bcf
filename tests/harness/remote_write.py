"""Live samples into a real Prometheus through its remote-write receiver.

Prometheus 2.42 started with ``--web.enable-remote-write-receiver`` accepts
``POST /api/v1/write``: a snappy-compressed protobuf ``WriteRequest``.  Both encodings are small
enough to write here without a dependency: the protobuf messages are four fields deep
(``WriteRequest{timeseries} / TimeSeries{labels, samples} / Label{name, value} /
Sample{value, timestamp}``), and a snappy block made only of literals is valid snappy (it is
simply not compressed).  A sample with the value ``STALE`` is Prometheus' staleness marker: the
series ends there, exactly as when a scraped pod disappears.

Fixture ``prometheus_rw`` (function scope): an empty Prometheus with the receiver on, and a
:class:`RemoteWriter` for it.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.proc import Server
from tests.harness.prometheus import start_prometheus

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 timestamps: two's complement, like protobuf
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _sample(value: float, ts_ms: int) -> bytes:
    # struct keeps a NaN's payload, so STALE goes out as Prometheus' exact staleness marker
    return bytes([1 << 3 | 1]) + struct.pack("<d", value) + _varint(2 << 3 | 0) + _varint(ts_ms)


def write_request(series: Iterable[tuple[Mapping[str, str], list[tuple[int, float]]]]) -> bytes:
    out = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name in sorted(labels):  # Prometheus requires labels sorted by name
            label = _field(1, name.encode()) + _field(2, labels[name].encode())
            ts += _field(1, label)
        for ts_ms, value in samples:
            ts += _field(2, _sample(value, ts_ms))
        out += _field(1, bytes(ts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """A valid snappy block of literals only (no compression)."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


@dataclass
class RemoteWriter:
    url: str
    _last: dict[tuple[tuple[str, str], ...], int] = field(default_factory=dict)

    def write(self, samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """One sample per series at the current time (kept strictly increasing per series)."""
        now = int(time.time() * 1000)
        batch = []
        for labels, value in samples:
            key = tuple(sorted(labels.items()))
            ts = max(now, self._last.get(key, 0) + 1)
            self._last[key] = ts
            batch.append((labels, [(ts, value)]))
        body = snappy_literal(write_request(batch))
        request = urllib.request.Request(
            f"{self.url}/api/v1/write",
            data=body,
            method="POST",
            headers={
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status in (200, 204), resp.status

    def query(self, expr: str) -> list[dict[str, object]]:
        data = urllib.parse.urlencode({"query": expr}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])


@dataclass(frozen=True)
class LivePrometheus:
    url: str
    writer: RemoteWriter
    server: Server


def start_live_prometheus(workdir: Path) -> LivePrometheus:
    """An empty Prometheus whose remote-write receiver is on."""
    workdir.mkdir(parents=True, exist_ok=True)
    server, url = start_prometheus(
        workdir / "tsdb", workdir, extra_args=["--web.enable-remote-write-receiver"]
    )
    return LivePrometheus(url, RemoteWriter(url), server)


@pytest.fixture
def prometheus_rw(tmp_path: Path) -> Iterator[LivePrometheus]:
    prom = start_live_prometheus(tmp_path / "prometheus-live")
    try:
        yield prom
    finally:
        prom.server.stop()
