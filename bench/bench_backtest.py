"""Benchmark (not a test): the closed-loop backtest over the Bitbrains July 2013 traces.

    python bench/bench_backtest.py [--data PATH] [--vms 1-500] [--start 2013-07-15]
                                   [--strategy kubefinops --strategy krr-simple ...]
                                   [--policy FILE] [--output table|json]

Each VM is one workload (``bitbrains/VM/vm-<id>``) with one container whose provisioned request
and limit are the VM's capacity (cores = ``cpu_cores``; bytes = ``mem_capacity_kb`` x 1024; rows
with zero capacity dropped; cores used = ``cpu_usage_mhz / (cpu_capacity_mhz / cpu_cores)``,
memory used = ``mem_usage_kb`` x 1024, as the data's README derives them).  History from the
file's start is warm-up; decisions walk forward daily from ``--start`` 00:00 UTC to the end of
the data; a VM-day is scored when it has >= 144 samples.  Prints the figures of ``kubefinops``
(defaults, autopilot policy), ``krr-simple`` and ``vpa-like`` side by side, the load and run
times, and the bar of issue 9 checked against the same run.  Skips cleanly when the data file
is absent (it is never copied into the repository).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.backtest import STRATEGIES, make_strategies, render_figures  # noqa: E402
from engine.core.backtest import DAY, Backtest, BacktestParams, ContainerHistory  # noqa: E402
from engine.core.backtest_score import figures  # noqa: E402
from engine.core.verified_backtest import VerifiedApply  # noqa: E402

BITBRAINS = Path("/work/shared/data/bitbrains-rnd/bitbrains_rnd_2013-07_all500vms.csv.gz")


def load_bitbrains(path: Path, vms: range) -> list[ContainerHistory]:
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",", skiprows=1)
    vm, ts, cores, cap_mhz, use_mhz, _pct, mem_cap_kb, mem_kb = a.T
    keep = (cores > 0) & (cap_mhz > 0) & (mem_cap_kb > 0) & np.isin(vm, list(vms))
    a = a[keep]
    a = a[np.lexsort((a[:, 1], a[:, 0]))]
    out = []
    for chunk in np.split(a, np.flatnonzero(np.diff(a[:, 0])) + 1):
        vm, ts, cores, cap_mhz, use_mhz, _pct, mem_cap_kb, mem_kb = chunk.T
        cpu_cap = cores.astype(np.float64)
        mem_cap = mem_cap_kb * 1024.0
        out.append(
            ContainerHistory(
                namespace="bitbrains",
                kind="VM",
                workload=f"vm-{int(vm[0])}",
                container="vm",
                ts=np.ascontiguousarray(ts),
                cpu=use_mhz / (cap_mhz / cores),
                memory=mem_kb * 1024.0,
                provisioned={
                    "cpu_request": cpu_cap,
                    "cpu_limit": cpu_cap,
                    "memory_request": mem_cap,
                    "memory_limit": mem_cap,
                },
            )
        )
    return out


def _vms(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=BITBRAINS)
    ap.add_argument("--vms", default="1-500", help="VM id range, e.g. 1-250 (tuning half)")
    ap.add_argument("--start", default="2013-07-15", help="first decision day, UTC")
    ap.add_argument("--strategy", action="append", choices=sorted(STRATEGIES))
    ap.add_argument("--policy", type=Path, help="policy document for kubefinops (JSON/YAML)")
    ap.add_argument("--output", choices=("table", "json"), default="table")
    ap.add_argument(
        "--uncapped",
        action="store_true",
        help="strategies see memory above the limit (no OOM kill in the observed trace)",
    )
    args = ap.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} not found (the traces are never committed)")
        return 0
    t0 = time.perf_counter()
    histories = load_bitbrains(args.data, _vms(args.vms))
    loaded = time.perf_counter() - t0
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp()
    end = max(float(h.ts[-1]) for h in histories) + 1.0
    params = BacktestParams(
        start=start,
        end=end,
        interval=DAY,
        min_day_samples=144,
        cap_observed_memory=not args.uncapped,
    )
    names = args.strategy or ["kubefinops", "kubefinops-classic", "krr-simple", "vpa-like"]
    strategies = make_strategies(names, policy_file=args.policy)
    t1 = time.perf_counter()
    verified = VerifiedApply(frozenset({"kubefinops-verified"}))  # docs/verification.md
    runs = Backtest(histories, params, hooks=[verified]).run(strategies)
    ran = time.perf_counter() - t1
    results = [figures(r, start=start, end=end)[0] for r in runs]
    if args.output == "json":
        doc = {"figures": [f.as_dict() for f in results], "load_s": loaded, "run_s": ran}
        print(json.dumps(doc, indent=2))
    else:
        print(render_figures(results))
        print(
            f"{len(histories)} VMs, {sum(h.ts.size for h in histories):,} samples;"
            f" load {loaded:.1f} s, backtest {ran:.1f} s for {len(runs)} strategies"
            f" ({ran / max(len(runs), 1):.1f} s each)"
        )
        exposure = ", ".join(f"{f.strategy} {f.memory_above:.1%}" for f in results)
        print(f"memory samples above the memory request (eviction exposure): {exposure}")
        if verified.reverts:
            print(f"verified apply: reverts {verified.reverts}")
    by = {f.strategy: f for f in results}
    krr = by.get("krr-simple")
    for label_, ours in (("defaults", by.get("kubefinops")),):
        if ours is None or args.output != "table":
            continue
        print(f"kubefinops ({label_}) against the bar of issue 9:")
        checks = [
            ("saving >= krr-simple's", krr is None or ours.saving >= krr.saving),
            ("CPU samples above request <= 3%", ours.cpu_above <= 0.03),
            ("OOM workload-days <= 1.5%", ours.oom_share <= 0.015),
            ("median rollouts <= 4 / 30 d", ours.rollouts_median_per_30d <= 4),
        ]
        for label, ok in checks:
            print(f"  {label}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
