"""One verification tick after a cycle of many changes (not a test): queries and time.

    python bench/bench_verify.py [--workloads 2000] [--namespaces 20] [--budget N]
                                 [--baseline DIR] [--repeat R]

Starts an empty Prometheus with its remote-write receiver (tests/harness/remote_write.py) and
writes, per workload, what kube-state-metrics and cAdvisor report for a Deployment of two pods
(tests/integration/cluster_sim.py), spread over ``--namespaces`` namespaces; one change per
workload was pushed (a lowered memory request and limit), none is live yet, so every watch is
pending: each check asks the rollout and the restarts.  Then one tick of the verifier
(``agents.verifier.check_all``) with the real ``ClusterTelemetry`` over the real client: the
queries it sent (counted by Prometheus itself: ``prometheus_http_requests_total`` of
``/api/v1/query``), the watches it checked, and its wall time.

``--baseline DIR`` runs the same tick on another checkout (a child process with ``ROOT=DIR``,
e.g. ``git worktree add /tmp/base <commit>``), alternating, and prints the ratios.  Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


def queries_served(url: str) -> float:
    """What Prometheus counted on /api/v1/query (its own metric)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def type_fields() -> set[str]:
    from engine.settings import Settings

    return set(Settings.model_fields)


def measure(n: int, namespaces: int, budget: int | None = None) -> dict[str, Any]:
    from agents import verifier
    from engine.adapters.prometheus import PrometheusClient
    from engine.adapters.verification import ClusterTelemetry
    from engine.core.model import Execution
    from engine.core.verification import VerificationParams, start
    from engine.services import Services
    from engine.settings import load_settings
    from tests.fakes import runtime
    from tests.harness.remote_write import start_live_prometheus
    from tests.integration.cluster_sim import SimDeployment
    from tests.integration.test_verification import lowered_memory

    tmp = Path(tempfile.mkdtemp(prefix="kfo-bench-verify-"))
    prom = start_live_prometheus(tmp / "prometheus")
    try:
        old = {("requests", "cpu"): 0.5, ("requests", "memory"): 512 * MIB,
               ("limits", "memory"): 1024 * MIB}  # fmt: skip
        t0 = time.monotonic()
        pushed = time.time()
        watches = []
        for i in range(n):
            ns, name = f"team-{i % namespaces:03d}", f"svc-{i:05d}"
            SimDeployment(prom.writer, namespace=ns, name=name).start(old)
            d = lowered_memory(f"dec-{name}")
            d = d.model_validate(
                {**d.model_dump(), "namespace": ns, "name": name,
                 "workload_id": f"{ns}/Deployment/{name}", "decided_at": pushed}
            )  # fmt: skip
            ex = Execution(
                id="exec-c-bench", cycle="c-bench", workload_ids=[d.workload_id],
                decision_ids=[d.id], outcome="pushed", commit_sha="0" * 40, executed_at=pushed,
            )  # fmt: skip
            v = start(d, ex, VerificationParams(deadline=3600.0, window=3600.0))
            assert v is not None
            watches.append(v)
        seeded = time.monotonic() - t0
        time.sleep(2)  # the last remote writes become queryable
        extra = {}
        if budget is not None and "verification_max_checks_per_tick" in type_fields():
            extra["verification_max_checks_per_tick"] = budget
        settings = load_settings(
            prometheus_url=prom.url, kafka_username=None, data_dir=tmp, **extra
        )

        async def one_tick() -> tuple[int, float, float]:
            async with PrometheusClient(settings) as client:
                rt = runtime(Services(telemetry=ClusterTelemetry(client)), now=time.time())
                rt.settings = settings
                for v in watches:
                    rt.tables.verifications[v.workload_id] = v
                before = queries_served(prom.url)
                started = time.monotonic()
                moved = await verifier.check_all(rt, time.time())
                took = time.monotonic() - started
                checked = sum(
                    1 for _, v in rt.tables.verifications.items() if v.checked_at is not None
                )
                assert not moved, "a watch moved: the bench expects every change still pending"
                return checked, took, queries_served(prom.url) - before

        checked, took, asked = asyncio.run(one_tick())
        return {
            "n": n,
            "namespaces": namespaces,
            "seed_s": seeded,
            "checked": checked,
            "tick_s": took,
            "queries": asked,
            "budget": getattr(settings, "verification_max_checks_per_tick", None),
        }
    finally:
        prom.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def child(root: Path, n: int, namespaces: int, budget: int | None) -> dict[str, Any]:
    one = f"{n}:{namespaces}" + ("" if budget is None else f":{budget}")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", one],
        env={**os.environ, "ROOT": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def show(label: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  {label:<9} FAILED {r['error']}")
        return
    print(
        f"  {label:<9} {r['n']:,} pending watches in {r['namespaces']} namespaces "
        f"(budget {r['budget']}): one tick checked {r['checked']:,}, "
        f"sent {r['queries']:,.0f} queries, {r['tick_s']:.1f} s "
        f"({r['queries'] / max(r['tick_s'], 1e-9):,.0f} queries/s; "
        f"seeding took {r['seed_s']:.0f} s)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", type=int, default=2000)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--budget",
        type=int,
        help="verification_max_checks_per_tick for this checkout (0 = every watch; "
        "default: the setting's default)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, k, *b = map(int, args.one.split(":"))
        print(json.dumps(measure(n, k, b[0] if b else None)))
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; code: {ROOT}; baseline: {args.baseline or '-'}"
    )
    here = Path(__file__).resolve().parents[1]
    for rep in range(args.repeat):
        sides = [("this", here)] + ([("baseline", args.baseline)] if args.baseline else [])
        if rep % 2:
            sides.reverse()
        got = {
            label: child(root, args.workloads, args.namespaces, args.budget)
            for label, root in sides
        }
        for label, _ in sides:
            show(label, got[label])
        a, b = got.get("this", {}), got.get("baseline", {})
        if a and b and "error" not in a and "error" not in b:
            print(
                f"  ratio this/baseline: queries {a['queries'] / max(b['queries'], 1):.3f}, "
                f"tick time {a['tick_s'] / max(b['tick_s'], 1e-9):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
