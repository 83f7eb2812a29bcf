"""The collector's memory and CPU per chunk answer: samples as tuples vs as arrays (not a test).

    python bench/bench_collector_memory.py [--series 2000,20000] [--points 120,360,1440]
                                           [--tuple-limit 8000000]

For each ``series x points`` a synthetic range-query answer in Prometheus' own layout
(``{"metric": {...}, "values": [[t, "v"], ...]}``, timestamps on the query grid, values with
the digits cAdvisor rates have) is built in memory, then turned into the collector's records
the two ways the code can:

* **tuples** (the collector before 2026-12-02, still the backtest's ``collect_chunk``):
  ``orjson.loads`` of the body, :func:`parse_result` (a ``(t, v)`` tuple of floats per sample),
  :func:`build_chunks`;
* **arrays** (the collector now): :func:`parse_matrix_body` (numpy arrays per series, the
  grid's timestamps computed), :func:`build_chunks` on them.

Printed per path: the peak of Python's allocations while parsing and building (``tracemalloc``,
which numpy reports its buffers to; the body itself, the same for both, is printed apart), the
bytes per point of that peak, and the CPU time (best of ``--repeat``).  The collector asks one
such answer for cpu and one for memory per chunk, one after the other.  Figures are printed,
never asserted.  The tuples path is skipped above ``--tuple-limit`` points (it would need
several GiB).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.collect import (
    Owners,
    build_chunks,
    grid_of,
    parse_matrix_body,
    parse_result,
)

STEP = 60
START = 1_764_547_200.0  # a UTC midnight


def answer(series: int, points: int, seed: int = 5) -> bytes:
    """A matrix answer of ``series`` pods' usage over ``points`` steps (the layout and number
    formatting of Prometheus' JSON)."""
    rng = np.random.default_rng(seed)
    t0, _ = grid_of(START, START + points * STEP, STEP)
    times = [f"{t0 + i * STEP:.0f}" for i in range(points)]
    out = [b'{"status":"success","data":{"resultType":"matrix","result":[']
    for k in range(series):
        values = rng.gamma(2.0, 0.05, points)
        pairs = ",".join(f'[{t},"{v:.17g}"]' for t, v in zip(times, values, strict=True))
        metric = f'{{"container":"app","namespace":"ns-{k % 50}","pod":"w-{k}-7d9f-x{k % 7}"}}'
        out.append(f'{"," if k else ""}{{"metric":{metric},"values":[{pairs}]}}'.encode())
    out.append(b"]}}")
    return b"".join(out)


def tuples_path(body: bytes, start: float, end: float) -> int:
    series = parse_result(orjson.loads(body), "matrix")
    return len(build_chunks(series, [], Owners(), start, end, STEP))


def arrays_path(body: bytes, start: float, end: float) -> int:
    grid = (grid_of(start, end, STEP)[0], STEP)
    series = parse_matrix_body(body, orjson.loads, grid)
    return len(build_chunks(series, [], Owners(), start, end, STEP))


def measure(fn: object, body: bytes, end: float, repeat: int) -> tuple[int, float, int]:
    """(peak bytes, best CPU seconds, records) of ``fn(body, START, end)``."""
    assert callable(fn)
    gc.collect()
    tracemalloc.start()
    records = fn(body, START, end)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.process_time()
        fn(body, START, end)
        best = min(best, time.process_time() - t)
    return peak, best, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="2000,20000")
    ap.add_argument("--points", default="120,360,1440")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tuple-limit", type=int, default=8_000_000)
    args = ap.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}; one answer (one resource) per line"
    )
    for series in (int(s) for s in args.series.split(",")):
        for points in (int(p) for p in args.points.split(",")):
            body = answer(series, points)
            end = START + points * STEP
            total = series * points
            line = (
                f"{series:6,} series x {points:5,} points = {total / 1e6:6.2f} M points, "
                f"body {len(body) / 2**20:7.1f} MiB ({len(body) / total:4.1f} B/pt)"
            )
            results = {}
            for name, fn in (("tuples", tuples_path), ("arrays", arrays_path)):
                if name == "tuples" and total > args.tuple_limit:
                    continue
                peak, cpu, records = measure(fn, body, end, args.repeat)
                results[name] = (peak, cpu)
                line += (
                    f" | {name}: peak {peak / 2**20:7.1f} MiB ({peak / total:5.1f} B/pt), "
                    f"{cpu:6.2f} CPU-s ({cpu / total * 1e9:5.0f} ns/pt), {records:,} records"
                )
            if len(results) == 2:
                (tp, tc), (ap_, ac) = results["tuples"], results["arrays"]
                line += f" | arrays/tuples: memory {ap_ / tp:.2f}, CPU {ac / tc:.2f}"
            print(line, flush=True)
            del body
            gc.collect()


if __name__ == "__main__":
    main()
