"""Benchmark of the incremental collector against a full re-query (not a test).

    python bench/bench_collector.py [--repeat 3]

Starts a real Prometheus (apt's /usr/bin/prometheus) on a TSDB backfilled with ``promtool`` from
the deterministic synthetic cluster of :mod:`tests.harness.prometheus` (cached blocks, ``DAYS``
days ending at the last UTC midnight), then with the project's own
:class:`engine.adapters.prometheus.Collector` (step 60 s, 6-hour chunks, as in production):

* **incremental**: one hourly cycle — the plan for a watermark one hour behind the horizon,
  i.e. one ``(end - 1h, end]`` chunk, as every cycle after the first one asks;
* **full re-query**: the whole history window of the same containers, the way KRR asks on every
  run (it re-reads the full 14 days each time).

It prints Prometheus samples returned to the collector (``Collector.samples_read``: range-query
points), the raw TSDB samples Prometheus itself touched for those queries (``stats=all``:
``totalQueryableSamples``), the ratio full/incremental and the wall time of both.  The TSDB
holds fewer than 14 days, so the 14-day figures are extrapolated linearly from the measured
window (printed as such).  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.adapters.prometheus import Collector, PrometheusClient
from engine.core.collect import cpu_expr, first_eval_time, memory_expr, plan_chunks
from engine.settings import load_settings
from tests.harness.prometheus import build_cluster_tsdb, start_prometheus

STEP = 60
CHUNK = 6 * 3600
HOUR = 3600
DAY = 86_400
FULL_DAYS = 14


def raw_samples_touched(url: str, chunks: list[tuple[float, float]], rate_window: int) -> int:
    """Raw TSDB samples Prometheus loaded for the collector's two range queries per chunk."""
    total = 0
    for start, end in chunks:
        first = first_eval_time(start, STEP)
        for expr in (cpu_expr(rate_window), memory_expr(STEP)):
            form = urllib.parse.urlencode(
                {"query": expr, "start": first, "end": end, "step": STEP, "stats": "all"}
            ).encode()
            with urllib.request.urlopen(f"{url}/api/v1/query_range", data=form, timeout=60) as resp:
                doc = json.loads(resp.read())
            stats = doc.get("data", {}).get("stats", {}).get("samples", {})
            total += int(stats.get("totalQueryableSamples", 0))
    return total


async def run(url: str, chunks: list[tuple[float, float]]) -> tuple[int, int, float]:
    """(samples read, batches, seconds) for collecting ``chunks`` with the project's Collector."""
    settings = load_settings(prometheus_url=url, kafka_security_protocol="PLAINTEXT")
    async with PrometheusClient(settings) as client:
        collector = Collector(client, step=STEP)
        batches = 0
        started = time.perf_counter()
        for start, end in chunks:
            batches += len(await collector.collect_chunk(start, end))
        return collector.samples_read, batches, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is printed)")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
    cache = Path.home() / ".cache" / "kubefinops-tests"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    blocks, truth, t0, t1 = build_cluster_tsdb(cache)
    work = Path(tempfile.mkdtemp(prefix="kfo-bench-prom-"))
    tsdb = work / "tsdb"
    shutil.copytree(blocks, tsdb, ignore=shutil.ignore_patterns("done"))
    server, url = start_prometheus(tsdb, work)
    try:
        days = (t1 - t0) / DAY
        containers = len(truth.memory)
        print(
            f"# prometheus {url}, TSDB {days:g} days of 30 s cAdvisor samples, "
            f"{containers} pod-containers ({time.monotonic() - started:.1f}s to set up)"
        )
        now = t1 + 120  # the horizon (now - scrape lag) is the end of the data
        incremental = plan_chunks(
            t1 - HOUR, now, scrape_lag=120, history=FULL_DAYS * DAY, chunk=CHUNK, step=STEP
        )
        # full re-query of what exists (the first evaluation needs a rate window of data)
        full = plan_chunks(
            None, now, scrape_lag=120, history=t1 - t0 - HOUR, chunk=CHUNK, step=STEP
        )
        rate_window = max(2 * STEP, 60)
        results = {}
        for name, chunks in (("incremental", incremental), ("full", full)):
            best = None
            for _ in range(args.repeat):
                read, batches, secs = asyncio.run(run(url, chunks))
                best = (read, batches, secs) if best is None or secs < best[2] else best
            assert best is not None
            raw = raw_samples_touched(url, chunks, rate_window)
            span = (chunks[-1][1] - chunks[0][0]) / HOUR if chunks else 0
            results[name] = (*best, raw, span)
            print(
                f"{name:12s} {len(chunks):3d} chunk(s), {span:6.1f} h: samples read "
                f"{best[0]:10,}  raw TSDB samples touched {raw:12,}  batches {best[1]:6,}  "
                f"wall {best[2] * 1000:8.1f} ms (best of {args.repeat})"
            )
        inc, fl = results["incremental"], results["full"]
        print(
            f"ratio full/incremental over the measured {fl[4]:.0f} h: samples read "
            f"{fl[0] / inc[0]:.0f}x, raw samples {fl[3] / inc[3]:.0f}x, "
            f"wall {fl[2] / inc[2]:.0f}x"
        )
        k = FULL_DAYS * 24 / fl[4]
        print(
            f"EXTRAPOLATED to a {FULL_DAYS}-day re-query (linear, x{k:.2f} the measured window): "
            f"samples read ~{fl[0] * k:,.0f} = {fl[0] * k / inc[0]:.0f}x one hourly cycle, "
            f"raw ~{fl[3] * k:,.0f} = {fl[3] * k / inc[3]:.0f}x, wall ~{fl[2] * k:.2f}s = "
            f"{fl[2] * k / inc[2]:.0f}x"
        )
        per_c = inc[0] / containers
        print(
            f"per pod-container and hour: {per_c:.0f} samples read (2 resources x 60 steps); "
            f"at 2,000 containers an hourly cycle reads ~{per_c * 2000:,.0f}, a 14-day "
            f"re-query ~{per_c * 2000 * FULL_DAYS * 24:,.0f}"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
