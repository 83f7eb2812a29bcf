"""The cycle that closes a day against one within the day, in process (not a test).

    python bench/bench_midnight.py [--workloads 1000] [--repeat 2] [--state-only]

Every container of a fleet closes its daily window in the same hourly cycle (midnight UTC):
its closed days are decoded, re-packed and merged again.  This runs bench_scale's in-process
burst (aggregator ingest of a chunk + cycle-end marker per workload, recommender, gate with the
history outbox; in-memory tables) on 64 seeded 14-day templates for a chunk window within the
day (23:00-23:40) and one across midnight (23:40-00:20), alternately, and prints the CPU per
workload of each and their ratio.  ``--state-only``: the container state's own operations
alone (``ContainerUsage.ingest_arrays`` of the chunk, ``to_dict`` as the table write does, both
summaries), per container, on 400 states decoded from the same templates, best of three.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("ROOT") or str(Path(__file__).resolve().parents[1]))

from bench import bench_scale as bs
from bench.common import usage_templates


def state_only(templates: list[bytes], end: int) -> None:
    """Microseconds per container of each state operation, within the day and across midnight."""
    import json

    import numpy as np

    from engine.core.usage import ContainerUsage

    states = [json.loads(t) for t in templates]
    rng = np.random.default_rng(1)
    n = 400
    for name, start in (("within the day", end), ("across midnight", end + 2400)):
        best: dict[str, float] = {}
        for _ in range(3):
            objs = [ContainerUsage.from_dict(states[i % len(states)]) for i in range(n)]
            for o in objs:
                o.summary("cpu"), o.summary("memory")  # warm, as the worker's cache holds them
            ts = np.arange(start + 300, start + 2401, 300, dtype=float)
            arrays = [
                {"cpu": (ts, rng.random(ts.size)), "memory": (ts, rng.random(ts.size) * 1e8)}
                for _ in range(n)
            ]
            took = {"ingest": 0.0, "to_dict": 0.0, "summaries": 0.0}
            for o, a in zip(objs, arrays, strict=True):
                t0 = time.perf_counter()
                o.ingest_arrays(start, start + 2400, a, validated=True)
                t1 = time.perf_counter()
                o.to_dict()
                t2 = time.perf_counter()
                o.summary("cpu"), o.summary("memory")
                t3 = time.perf_counter()
                took["ingest"] += t1 - t0
                took["to_dict"] += t2 - t1
                took["summaries"] += t3 - t2
            for k, v in took.items():
                best[k] = min(best.get(k, v), v)
        print(f"{name}: " + ", ".join(f"{k} {1e6 * v / n:.0f}" for k, v in best.items()) + " us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--state-only", action="store_true", help="the state's operations alone")
    args = ap.parse_args()
    day = int(time.time()) // 86400 * 86400
    end = day - 3600  # the seeded history ends at 23:00 UTC yesterday
    chunk = 6 * 3600
    chunks = [(end - (k + 1) * chunk, end - k * chunk) for k in range(14 * 4)][::-1]
    templates = usage_templates(chunks, 300, 64)
    if args.state_only:
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, per container:")
        state_only(templates, end)
        return
    bs.STEP[0] = 300
    ns = argparse.Namespace(days=14, step=300, worker_env=[])
    wls = bs.workloads(args.workloads)
    runs: dict[str, list[float]] = {"within the day": [], "across midnight": []}
    for _ in range(args.repeat):
        for name, start in (("within the day", end), ("across midnight", end + 2400)):
            r = bs.in_process_burst(wls, start, start + 2400, ns, templates)
            runs[name].append(r["cpu_ms_per_workload"])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
    for name, ms in runs.items():
        print(f"{name}: {', '.join(f'{m:.2f}' for m in ms)} ms CPU per workload")
    ratio = min(runs["across midnight"]) / min(runs["within the day"])
    print(f"across midnight / within the day (best of each): {ratio:.2f}x")


if __name__ == "__main__":
    main()
