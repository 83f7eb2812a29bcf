"""Read a backtest samples file (CSV, optionally gzip-compressed) into container histories.

Schema (header row required, columns in any order, extra columns ignored), one row per sample:

==================  =========  ==========================================================
column              required   meaning
==================  =========  ==========================================================
``timestamp``       yes        Unix seconds (UTC)
``namespace``       yes        Kubernetes namespace
``kind``            yes        workload kind (``Deployment``, ``StatefulSet``...)
``workload``        yes        workload name
``container``       yes        container name
``cpu_cores``       yes        CPU used, cores
``memory_bytes``    yes        memory used (working set), bytes
``cpu_request``     no         provisioned CPU request, cores
``cpu_limit``       no         provisioned CPU limit, cores
``memory_request``  no         provisioned memory request, bytes
``memory_limit``    no         provisioned memory limit, bytes
``replicas``        no         replicas (an integer >= 0)
==================  =========  ==========================================================

The first row of a container is its starting spec; later provisioned values are the baseline of
"saving vs provisioned".  An empty optional cell means "not given".  A bad row raises
:class:`SampleFileError` naming the file, line and column; with ``skip_bad`` it is counted and
skipped instead (:attr:`SampleFile.skipped`, with the first few reasons kept).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from engine.core.backtest import ContainerHistory
from engine.errors import PermanentError

REQUIRED = (
    "timestamp",
    "namespace",
    "kind",
    "workload",
    "container",
    "cpu_cores",
    "memory_bytes",
)
OPTIONAL = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
COLUMNS = (*REQUIRED, *OPTIONAL, "replicas")
_KEEP_REASONS = 5


class SampleFileError(PermanentError):
    """A samples file that cannot be read, or a bad row (with its line number)."""


@dataclass
class SampleFile:
    histories: list[ContainerHistory]
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def _open(path: Path) -> IO[str]:
    raw = path.open("rb")
    head = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if head == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _number(text: str, column: str, *, optional: bool = False) -> float:
    text = text.strip()
    if not text:
        if optional:
            return math.nan
        raise ValueError(f"column {column}: empty")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"column {column}: not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"column {column}: must be a finite number >= 0, got {text!r}")
    return value


@dataclass
class _Acc:
    rows: list[tuple[float, ...]] = field(default_factory=list)
    replicas: int | None = None


def _rows(handle: IO[str], path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise SampleFileError(f"{path}: empty file (expected a header row)") from None
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise SampleFileError(f"{path}:1: cannot read: {exc}") from None
    names = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SampleFileError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    index = {c: names.index(c) for c in COLUMNS if c in names}
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(names):
                yield reader.line_num, {"__error__": f"{len(row)} fields, header has {len(names)}"}
                continue
            yield reader.line_num, {c: row[i] for c, i in index.items()}
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise SampleFileError(f"{path}:{reader.line_num}: cannot read: {exc}") from None


def _parse(cells: dict[str, str]) -> tuple[tuple[str, ...], tuple[float, ...], int | None]:
    if "__error__" in cells:
        raise ValueError(cells["__error__"])
    key = tuple(cells[c].strip() for c in ("namespace", "kind", "workload", "container"))
    for c, v in zip(("namespace", "kind", "workload", "container"), key, strict=True):
        if not v:
            raise ValueError(f"column {c}: empty")
    ts = _number(cells["timestamp"], "timestamp")
    values = (
        ts,
        _number(cells["cpu_cores"], "cpu_cores"),
        _number(cells["memory_bytes"], "memory_bytes"),
        *(_number(cells.get(c, ""), c, optional=True) for c in OPTIONAL),
    )
    replicas = None
    raw = cells.get("replicas", "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"column replicas: not an integer >= 0: {raw!r}")
        replicas = int(raw)
    return key, values, replicas


def read_samples(path: Path, *, skip_bad: bool = False) -> SampleFile:
    """Every container's samples, sorted by time (see the module docstring)."""
    try:
        handle = _open(path)
    except OSError as exc:
        raise SampleFileError(f"cannot open {path}: {exc.strerror}") from None
    out = SampleFile(histories=[])
    acc: dict[tuple[str, ...], _Acc] = {}
    with handle:
        for line, cells in _rows(handle, path):
            try:
                key, values, replicas = _parse(cells)
            except ValueError as exc:
                if not skip_bad:
                    raise SampleFileError(f"{path}:{line}: {exc}") from None
                out.skipped += 1
                if len(out.reasons) < _KEEP_REASONS:
                    out.reasons.append(f"line {line}: {exc}")
                continue
            a = acc.setdefault(key, _Acc())
            a.rows.append(values)
            if a.replicas is None and replicas is not None:
                a.replicas = replicas
            out.rows += 1
    for (ns, kind, workload, container), a in sorted(acc.items()):
        arr = np.asarray(a.rows, dtype=np.float64)
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        out.histories.append(
            ContainerHistory(
                namespace=ns,
                kind=kind,
                workload=workload,
                container=container,
                ts=np.ascontiguousarray(arr[:, 0]),
                cpu=np.ascontiguousarray(arr[:, 1]),
                memory=np.ascontiguousarray(arr[:, 2]),
                provisioned={
                    c: np.ascontiguousarray(arr[:, 3 + i]) for i, c in enumerate(OPTIONAL)
                },
                replicas=1 if a.replicas is None else a.replicas,
            )
        )
    return out


def write_samples(path: Path, histories: list[ContainerHistory]) -> None:
    """The inverse of :func:`read_samples` (gzip when the name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for h in histories:
            prov = [h.provisioned.get(c) for c in OPTIONAL]
            for i in range(h.ts.size):
                cells = [
                    "" if col is None or not math.isfinite(float(col[i])) else repr(float(col[i]))
                    for col in prov
                ]
                w.writerow(
                    [
                        repr(float(h.ts[i])),
                        h.namespace,
                        h.kind,
                        h.workload,
                        h.container,
                        repr(float(h.cpu[i])),
                        repr(float(h.memory[i])),
                        *cells,
                        h.replicas,
                    ]
                )
