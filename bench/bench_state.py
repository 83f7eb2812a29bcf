"""Benchmark of the aggregator's pure state (not a test): throughput, bytes, accuracy.

    python bench/bench_state.py [--batches 400] [--bitbrains PATH] [--no-bitbrains]

Prints
1. samples/s of validate_samples + ContainerUsage.ingest for ~1000-sample batches (pure, no
   Kafka), with and without the table's changelog encoding (to_dict + json.dumps), against a
   baseline of plain per-sample ``ddsketch`` ``add()``; plus the pydantic JSON parse cost of the
   same batches (the agent pays it too) for the end-to-end picture.
2. serialized bytes per container-resource after 14 days of 1-minute synthetic samples.
3. the same on real Bitbrains GWA-T-12 Rnd traces (5-minute samples, last 14 days of every VM;
   each VM treated as a container) and the P95/P99 relative error against the exact percentile
   (numpy method="lower") of the retained samples, per VM.  Skipped when the file is absent.
   The data is read in place, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ddsketch import LogCollapsingLowestDenseDDSketch

from engine.core.model import MetricsBatch
from engine.core.samples import validate_batch
from engine.core.sketch import exact_quantile, relative_error
from engine.core.usage import ContainerUsage

DAY = 86_400
BITBRAINS = Path("/work/shared/data/bitbrains-rnd/bitbrains_rnd_2013-07_all500vms.csv.gz")


def _batch(
    cid: int, ts: np.ndarray, cpu: np.ndarray, mem: np.ndarray, start: float
) -> MetricsBatch:
    tl = ts.tolist()
    return MetricsBatch(
        namespace="bench",
        kind="Deployment",
        workload=f"w{cid}",
        container="app",
        start=start,
        end=float(ts[-1]),
        samples={
            "cpu": list(zip(tl, cpu.tolist(), strict=True)),
            "memory": list(zip(tl, mem.tolist(), strict=True)),
        },
    )


def _synthetic(n: int, seed: int, profile: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 60.0
    diurnal = 1 + 0.5 * np.sin(t / DAY * 2 * np.pi + rng.uniform(0, 6.3))
    base = rng.uniform(0.002, 2.0)
    if profile == "steady":
        cpu = base * diurnal * rng.lognormal(0, 0.2, n)
    elif profile == "bursty":
        cpu = base * diurnal * rng.lognormal(0, 0.8, n)
        cpu[rng.random(n) < 0.01] *= 20
    else:  # idle with zeros
        cpu = rng.lognormal(np.log(0.0005), 0.5, n)
        cpu[rng.random(n) < 0.3] = 0.0
    mem = rng.uniform(5e7, 4e9) * (diurnal * 0.2 + 0.8) * rng.normal(1, 0.02, n)
    return cpu, np.abs(mem)


def bench_throughput(n_batches: int) -> None:
    per_res = 500  # 2 resources x 500 = 1000 samples per batch
    n_cont = 50
    t0 = 1_750_000_000.0
    batches, raw = [], []
    for i in range(n_batches):
        cid, k = i % n_cont, i // n_cont
        cpu, mem = _synthetic(per_res, i, ("steady", "bursty", "idle")[cid % 3])
        ts = t0 + 60.0 * (k * per_res + np.arange(1, per_res + 1))
        b = _batch(cid, ts, cpu, mem, float(ts[0] - 60))
        batches.append((cid, b))
        raw.append(b.model_dump_json())
    total = sum(len(s) for _, b in batches for s in b.samples.values())
    now = t0 + 60.0 * (n_batches // n_cont + 1) * per_res

    def run(changelog: bool) -> float:
        states = [ContainerUsage() for _ in range(n_cont)]
        start = time.perf_counter()
        for cid, b in batches:
            v = validate_batch(b, now=now)
            states[cid].ingest(v.batch, arrays=v.arrays)
            if changelog:
                json.dumps(states[cid].to_dict(), separators=(",", ":"))
        return total / (time.perf_counter() - start)

    def parse() -> float:
        start = time.perf_counter()
        for r in raw:
            MetricsBatch.model_validate_json(r)
        return total / (time.perf_counter() - start)

    def baseline() -> float:
        sketches = [
            [LogCollapsingLowestDenseDDSketch(0.0099, 1024) for _ in range(2)]
            for _ in range(n_cont)
        ]
        start = time.perf_counter()
        for cid, b in batches:
            for j, r in enumerate(("cpu", "memory")):
                sk = sketches[cid][j]
                for _, v in b.samples[r]:
                    sk.add(v)
        return total / (time.perf_counter() - start)

    ours, ours_cl, parse_rate, base = run(False), run(True), parse(), baseline()
    e2e = 1 / (1 / ours_cl + 1 / parse_rate)
    print(f"== throughput: {n_batches} batches x 1000 samples, {n_cont} containers")
    print(f"validate+ingest                         {ours:12,.0f} samples/s")
    print(f"validate+ingest+to_dict+json (changelog){ours_cl:12,.0f} samples/s")
    print(f"pydantic MetricsBatch JSON parse        {parse_rate:12,.0f} samples/s")
    print(f"parse+validate+ingest+changelog         {e2e:12,.0f} samples/s  (target 500,000)")
    print(f"baseline ddsketch add() per sample      {base:12,.0f} samples/s")
    print(f"speed-up vs baseline: {ours / base:.1f}x (with changelog {ours_cl / base:.1f}x)")


def _sizes(cu: ContainerUsage) -> dict[str, int]:
    return {
        r: len(json.dumps(wu.to_dict(), separators=(",", ":"))) for r, wu in cu.resources.items()
    }


def bench_synthetic_size() -> None:
    n = 14 * 1440
    t0 = 1_750_000_000.0
    ts = t0 + 60.0 * np.arange(1, n + 1)
    rows = []
    for seed in range(12):
        profile = ("steady", "bursty", "idle")[seed % 3]
        cpu, mem = _synthetic(n, 1000 + seed, profile)
        cu = ContainerUsage()
        for i in range(0, n, 60):  # hourly chunks
            cu.ingest(_batch(seed, ts[i : i + 60], cpu[i : i + 60], mem[i : i + 60], ts[i] - 60))
        s = _sizes(cu)
        rows.append((profile, s["cpu"], s["memory"]))
    cpu_b = np.array([r[1] for r in rows])
    mem_b = np.array([r[2] for r in rows])
    print(
        "== synthetic: 14 days x 1-min samples (20,160 per resource), hourly chunks, 12 containers"
    )
    for p in ("steady", "bursty", "idle"):
        sel = [r for r in rows if r[0] == p]
        print(f"  {p:7s} cpu bytes {[r[1] for r in sel]}  memory bytes {[r[2] for r in sel]}")
    print(f"  cpu    median {np.median(cpu_b):.0f} B, max {cpu_b.max()} B (budget 4096)")
    print(f"  memory median {np.median(mem_b):.0f} B, max {mem_b.max()} B (budget 4096)")
    raw = 20_160 * 16
    print(f"  vs raw (ts,value) float64 pairs {raw} B: {raw / np.median(cpu_b):.0f}x smaller")


def bench_bitbrains(path: Path) -> None:
    if not path.exists():
        print(f"== bitbrains: {path} absent, skipped")
        return
    start = time.perf_counter()
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2, 3, 4, 6, 7))
    took = time.perf_counter() - start
    print(f"== bitbrains GWA-T-12 Rnd: {data.shape[0]:,} rows read in {took:.1f}s")
    vm, ts, cores, cap, used, memcap, memkb = data.T
    ok = (cores > 0) & (cap > 0) & (memcap > 0)
    vm, ts, cpu, mem = vm[ok], ts[ok], used[ok] / (cap[ok] / cores[ok]), memkb[ok] * 1024.0
    order = np.lexsort((ts, vm))
    vm, ts, cpu, mem = vm[order], ts[order], cpu[order], mem[order]
    bounds = np.flatnonzero(np.diff(vm)) + 1
    sizes: dict[str, list[int]] = {"cpu": [], "memory": []}
    errs: dict[str, dict[float, list[float]]] = {r: {0.95: [], 0.99: []} for r in ("cpu", "memory")}
    ingest_time, n_samples, skipped = 0.0, 0, 0
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, vm.size], strict=True):
        t, c, m = ts[lo:hi], np.clip(cpu[lo:hi], 0, None), np.clip(mem[lo:hi], 0, None)
        last = np.r_[np.diff(t) > 0, True]  # 24 rows share a timestamp: keep the last
        t, c, m = t[last], c[last], m[last]
        t = t[t > t[-1] - 14 * DAY - DAY]  # enough to fill 14 days + the partial oldest window
        if t.size < 288:
            skipped += 1
            continue
        c, m = c[-t.size :], m[-t.size :]
        cu = ContainerUsage()
        s0 = time.perf_counter()
        prev = float(t[0]) - 300
        for i in range(0, t.size, 12):  # hourly chunks of 5-min samples
            sl = slice(i, i + 12)
            b = _batch(int(vm[lo]), t[sl], c[sl], m[sl], prev)
            v = validate_batch(b, now=float(t[-1]))
            cu.ingest(v.batch, arrays=v.arrays)
            prev = b.end
        ingest_time += time.perf_counter() - s0
        n_samples += 2 * t.size
        for r, values in (("cpu", c), ("memory", m)):
            wu = cu.resources[r]
            kept = values[t >= min(wu.windows)]
            s = cu.summary(r)
            assert s.count == kept.size
            for q, got in ((0.95, s.p95), (0.99, s.p99)):
                exact = exact_quantile(kept, q)
                errs[r][q].append(
                    0.0 if exact <= 1e-9 and got <= 1e-9 else relative_error(got, exact)
                )
        for r, nbytes in _sizes(cu).items():
            sizes[r].append(nbytes)
    print(f"  {len(sizes['cpu'])} VMs (skipped {skipped} with < 1 day), 5-min samples, "
          f"hourly chunks, last 14 days")  # fmt: skip
    print(f"  batch-building+validate+ingest rate {n_samples / ingest_time:,.0f} samples/s")
    for r in ("cpu", "memory"):
        arr = np.array(sizes[r])
        print(f"  {r:6s} bytes/container-resource: median {np.median(arr):.0f}, "
              f"p95 {np.percentile(arr, 95):.0f}, max {arr.max()} (budget 4096; "
              f"{np.mean(arr <= 4096) * 100:.1f}% within)")  # fmt: skip
        for q in (0.95, 0.99):
            e = np.array(errs[r][q]) * 100
            print(f"  {r:6s} P{int(q * 100)} rel. error vs exact: median {np.median(e):.3f}%, "
                  f"max {e.max():.3f}%")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--bitbrains", type=Path, default=BITBRAINS)
    ap.add_argument("--no-bitbrains", action="store_true")
    args = ap.parse_args()
    bench_throughput(args.batches)
    bench_synthetic_size()
    if not args.no_bitbrains:
        bench_bitbrains(args.bitbrains)


if __name__ == "__main__":
    main()
