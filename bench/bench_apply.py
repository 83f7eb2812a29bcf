"""An apply cycle at fleet size through the real Git writer (not a test): time, CPU and memory.

    python bench/bench_apply.py [--workloads 1000,2000] [--applies all|N] [--namespaces K]
                                [--baseline DIR] [--repeat R]

For each size: a GitOps repository with that many Deployments (two containers each) in one
overlay — or spread over ``--namespaces K`` namespaces with an overlay each
(``gitops_overlay_path = overlays/{namespace}``) — served by the tests' smart-HTTP Git remote
with basic auth; that many ``apply`` decisions (or ``--applies N`` of them, the rest holds)
handed to the executor's ``run_cycle`` as it has them (a ``DecisionLog``), with the real
``GitOpsWriter`` as its Git service: ``kubectl kustomize`` of each overlay touched, the patch
files, the strict schema validation, one commit and its push.  Prints
the cycle's wall time, the process's own CPU, its children's CPU (kubectl, git), and the rise of
the process's peak RSS during the cycle (``VmHWM`` reset first through ``/proc/self/clear_refs``).

``--baseline DIR`` runs the same measurement on another checkout (e.g. ``git worktree add
/tmp/base <commit>``) in a child process, alternating with this one, and prints the ratios:
the code is imported from ``ROOT`` (default: this checkout).  Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
NAMESPACE = "fleet"
CONTAINERS = ("app", "sidecar")

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: registry.example/{name}:1.0.0
          ports:
            - name: http
              containerPort: 8080
          env:
            - name: MODE
              value: production
          readinessProbe:
            httpGet:
              path: /ready
              port: http
          resources:
            requests:
              cpu: 750m
              memory: 768Mi
            limits:
              memory: 768Mi
        - name: sidecar
          image: registry.example/proxy:2.1.0
          resources:
            requests:
              cpu: 100m
              memory: 128Mi
"""


def name_of(i: int) -> str:
    return f"svc-{i:05d}"


def namespace_of(i: int, namespaces: int) -> str:
    return NAMESPACE if namespaces <= 1 else f"{NAMESPACE}-{i % namespaces:03d}"


def make_repo(root: Path, n: int, namespaces: int) -> tuple[Any, str, str, str]:
    """``n`` Deployments, in one overlay or one per namespace, on the tests' smart-HTTP remote
    (bench.common.serve_estate): the server, its URL and token, and the overlay path (a
    template with ``{namespace}``)."""
    from bench.common import serve_estate

    groups: dict[str, list[str]] = {}
    for i in range(n):
        groups.setdefault(namespace_of(i, namespaces), []).append(
            DEPLOYMENT.format(name=name_of(i))
        )
    server, url, token = serve_estate(root, groups, repo="fleet")
    overlay = "overlays/{namespace}" if namespaces > 1 else f"overlays/{NAMESPACE}"
    return server, url, token, overlay


def make_decisions(n: int, applies: int, namespaces: int) -> list[Any]:
    from engine.core.model import (
        Action,
        ContainerRecommendation,
        ContainerSpec,
        Decision,
        Mode,
        ResourcePair,
        Savings,
    )

    out = []
    for i in range(n):
        name, ns = name_of(i), namespace_of(i, namespaces)
        recs = [
            ContainerRecommendation(
                name=c,
                current=ContainerSpec(
                    name=c,
                    requests=ResourcePair(
                        cpu=0.75 if c == "app" else 0.1, memory=(768 if c == "app" else 128) * MIB
                    ),
                ),
                cpu_request=(0.25 + (i % 50) / 1000) if c == "app" else 0.05,
                memory_request=(384 + i % 64) * MIB if c == "app" else 96 * MIB,
                memory_limit=(384 + i % 64) * MIB if c == "app" else None,
                reasons=["p95 well below request for 14 days"],
            )
            for c in CONTAINERS
        ]
        out.append(
            Decision(
                id=f"dec-{name}",
                recommendation_id=f"rec-{name}",
                workload_id=f"{ns}/Deployment/{name}",
                namespace=ns,
                kind="Deployment",
                name=name,
                action=Action.APPLY if i < applies else Action.HOLD,
                guardrail="none",
                reason="usage well below requests for 14 days",
                mode=Mode.AUTOPILOT,
                containers=recs,
                savings=Savings(monthly_delta=-3.5, monthly_savings=3.5),
                decided_at=1_790_000_000.0 + i,
            )
        )
    return out


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(n: int, applies: int, namespaces: int = 1) -> dict[str, Any]:
    """One cycle of ``n`` decisions (``applies`` of them apply) through run_cycle + the writer."""
    from agents import executor
    from engine.adapters.gitops import GitOpsWriter
    from engine.core.decision_log import DecisionLog
    from engine.services import Services
    from engine.settings import load_settings
    from tests.fakes import runtime

    tmp = Path(tempfile.mkdtemp(prefix="kfo-bench-apply-"))
    server = None
    try:
        server, url, token, overlay = make_repo(tmp, n, namespaces)
        settings = load_settings(
            git_remote_url=url,
            git_token=token,
            git_username="kubefinops-bot",
            git_workdir=tmp / "wd",
            data_dir=tmp,
            gitops_overlay_path=overlay,
            kafka_username=None,
        )
        writer = GitOpsWriter(settings)
        # as the executor reads its pending rows
        log = DecisionLog(make_decisions(n, applies, namespaces))
        rt = runtime(Services(git=writer), now=time.time())
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss0 = _status("VmRSS")
        cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        execution = asyncio.run(executor.run_cycle(rt, log))
        wall = time.monotonic() - t0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert execution is not None
        return {
            "n": n,
            "applies": applies,
            "namespaces": namespaces,
            "outcome": execution.outcome,
            "applied": len(execution.workload_ids),
            "held": len(execution.held),
            "wall_s": wall,
            "cpu_s": time.process_time() - cpu0,
            "children_cpu_s": kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime,
            "rss_before_mib": rss0,
            "peak_rise_mib": _status("VmHWM") - rss0,
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def show(label: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(
            f"  {label:<9} {r['n']:>6,} workloads, {r['applies']:>6,} applies: FAILED {r['error']}"
        )
        return
    print(
        f"  {label:<9} {r['n']:>6,} workloads in {r['namespaces']} overlay(s), "
        f"{r['applies']:>6,} applies: {r['outcome']} "
        f"({r['applied']:,} applied, {r['held']:,} held)  wall {r['wall_s']:7.1f} s  "
        f"CPU {r['cpu_s']:7.1f} s (+ children {r['children_cpu_s']:5.1f} s)  "
        f"peak RSS +{r['peak_rise_mib']:.0f} MiB over {r['rss_before_mib']:.0f}",
        flush=True,
    )


def child(root: Path, n: int, applies: int, namespaces: int) -> dict[str, Any]:
    env = {**os.environ, "ROOT": str(root)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", f"{n}:{applies}:{namespaces}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"n": n, "applies": applies, "namespaces": namespaces, "error": last}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="1000,2000")
    ap.add_argument("--applies", default="all", help="'all' or how many of the decisions apply")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alternately")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--namespaces",
        type=int,
        default=1,
        help="spread the workloads over this many namespaces, one overlay each "
        "(gitops_overlay_path with {namespace}; 1 = the whole fleet in one overlay)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # n:applies:namespaces, JSON out (child)
    args = ap.parse_args()
    if args.one:
        n, applies, namespaces = map(int, args.one.split(":"))
        print(json.dumps(measure(n, applies, namespaces)))
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; code: {ROOT}; baseline: {args.baseline or '-'}"
    )
    here = Path(__file__).resolve().parents[1]
    for n in (int(x) for x in args.workloads.split(",")):
        applies = n if args.applies == "all" else min(n, int(args.applies))
        for rep in range(args.repeat):
            # alternate which side goes first, each in a fresh process (its own peak)
            sides = (
                [("this", here), ("baseline", args.baseline)] if args.baseline else [("this", here)]
            )
            if rep % 2:
                sides.reverse()
            got = {label: child(root, n, applies, args.namespaces) for label, root in sides}
            for label, _ in sides:
                show(label, got[label])
            if "baseline" in got and not any("error" in r for r in got.values()):
                a, b = got["this"], got["baseline"]
                print(
                    f"  ratio this/baseline: wall {a['wall_s'] / b['wall_s']:.2f}, CPU "
                    f"{a['cpu_s'] / b['cpu_s']:.2f}, peak RSS rise "
                    f"{a['peak_rise_mib'] / max(b['peak_rise_mib'], 1):.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
