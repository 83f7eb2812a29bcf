"""Recovery options measured side by side (not a test): what each buys, and where the time goes.

    python bench/bench_recovery.py [--workloads 1000] [--days 14] [--session-timeout 30]
                                   [--first-joins 6]

Private Apache Kafka (KRaft, SASL_PLAINTEXT + SCRAM-SHA-256) and SecantusDB on loopback.

1. **First joins**: ``--first-joins`` fresh deployments (fresh consumer groups), each one worker
   started as a static member (``KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID``, what the chart now sets
   from the pod name); time to ``/ready``. A join that does not finish within 2 x the session
   timeout + 30 s is counted as hung and its log tail printed.
2. **One worker, ``--workloads`` x 2 containers x ``--days``** (state seeded to the usage
   changelog as in ``bench_scale.py``, the last 6 hours ingested by the worker):
   SIGKILL then restart as a plain member / as the same static member; SIGTERM (graceful stop)
   then restart as the same static member, and as a new one (a rolling update's new pod: fast
   only because the stopped static member leaves the group, ``engine.app.leave_group_on_stop``).
3. **Two workers** (static members), ``table_standby_replicas`` 0 and 1: SIGKILL one and do not
   restart it (its pod is gone for good): time until the survivor answers every probed workload
   (the session timeout, then the survivor recovers the partitions from the changelog or
   promotes its standby copy); and SIGTERM one: the same with a graceful leave.

Every time is split into web up / partitions assigned / tables recovered / correct answers.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_scale import (
    CHUNK,
    PARTITIONS,
    history,
    recover,
    show_recovery,
    usage_count,
    workloads,
)
from bench.common import (
    Stack,
    produce_fast,
    seed_usage_changelog,
    usage_templates,
    wait_ingested,
)
from tables import USAGE_CHANGELOG_CONFIG
from tests.harness.kafka import create_topics
from tests.harness.proc import Server
from tests.integration.workers import Deployment, http_json

STEP = 300


def first_joins(stack: Stack, trials: int, session_timeout: float) -> None:
    limit = 2 * session_timeout + 30
    times: list[float] = []
    hung = 0
    for i in range(trials):
        dep = stack.deployment(
            partitions=PARTITIONS,
            KUBEFINOPS_BROKER_SESSION_TIMEOUT=str(session_timeout),
            KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID=f"first-join-{i}",
            KUBEFINOPS_LOG_LEVEL="info",
        )
        started = time.monotonic()
        server, port = dep.start_worker("w0")
        ready = False
        while time.monotonic() - started < limit and server.alive():
            try:
                ready = bool(http_json(f"http://127.0.0.1:{port}/ready")[1].get("ready"))
            except OSError:
                ready = False
            if ready:
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        if ready:
            times.append(took)
        else:
            hung += 1
            print(f"!! static first join {i} not ready after {took:.0f}s; log tail:")
            print(Path(server.log).read_text(errors="replace")[-4000:])
        dep.stop_all()
    shown = ", ".join(f"{t:.1f}" for t in times)
    print(
        f"MEASURED static first joins on fresh groups: {len(times)}/{trials} ready "
        f"({shown} s), {hung} hung"
    )


def seeded_deployment(
    stack: Stack, n: int, days: int, session_timeout: float, **env: str
) -> tuple[Deployment, int]:
    """A deployment whose usage changelog holds ``days`` of state for ``n`` workloads (the last
    6 hours still to be ingested from the metrics topic); returns it and the samples to ingest."""
    assert stack.kafka is not None
    dep = stack.deployment(
        partitions=PARTITIONS,
        KUBEFINOPS_BROKER_SESSION_TIMEOUT=str(session_timeout),
        KUBEFINOPS_COLLECT_ON_START="false",
        **env,
    )
    create_topics(stack.kafka, [dep.topic("metrics")], partitions=PARTITIONS)
    wls = workloads(n)
    end = int(time.time() // 3600 * 3600) - 3600
    chunks = [(end - (k + 1) * CHUNK, end - k * CHUNK) for k in range(days * 4)][::-1]
    seeded, live = chunks[:-1], chunks[-1:]
    templates = usage_templates(seeded, STEP, min(64, 2 * n))
    containers = [(ns, wl, c) for ns, wl in wls for c in ("app", "sidecar")]
    asyncio.run(
        seed_usage_changelog(
            stack.kafka, dep.prefix, PARTITIONS, containers, templates, USAGE_CHANGELOG_CONFIG
        )
    )
    sent, _ = asyncio.run(produce_fast(stack.kafka, dep.topic("metrics"), history(wls, live, STEP)))
    return dep, sent * 2 * (CHUNK // STEP)


def probes(port: int, n: int) -> list[tuple[str, str, int]]:
    out = []
    for ns, wl in workloads(n)[:: max(1, n // 20)][:20]:
        count = usage_count(port, ns, wl)
        if count:
            out.append((ns, wl, count))
    return out


def survivor_answers(
    port: int, probe: list[tuple[str, str, int]], started: float, timeout: float, before: int
) -> dict[str, float] | None:
    """From ``started`` (the kill): the survivor owns every partition again (``assigned``),
    is ready, and answers every probed workload with its count."""
    marks: dict[str, float] = {}
    pending = list(probe)
    while pending and time.monotonic() - started < timeout:
        state = http_json(f"http://127.0.0.1:{port}/ready")[1]
        now = time.monotonic() - started
        if isinstance(state, dict):
            if state.get("assigned_partitions", 0) > before and "assigned" not in marks:
                marks["assigned"] = now  # it took over the killed worker's partitions
            if state.get("ready") and "assigned" in marks:
                marks.setdefault("ready", now)
                pending = [(ns, wl, c) for ns, wl, c in pending if usage_count(port, ns, wl) != c]
        if pending:
            time.sleep(0.1)
    if pending:
        return None
    marks["answers"] = time.monotonic() - started
    marks["web"] = 0.0
    return marks


def one_worker(stack: Stack, args: argparse.Namespace) -> None:
    dep, total = seeded_deployment(
        stack,
        args.workloads,
        args.days,
        args.session_timeout,
        KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID="",
        KUBEFINOPS_LOG_LEVEL="info",
    )
    server, port = dep.start_worker("w0")
    dep.wait_ready(port, server=server, timeout=600)
    wait_ingested(port, total, 600, poll=0.5)
    probe = probes(port, args.workloads)
    print(f"\n== one worker, {args.workloads:,} workloads, {len(probe)} probed")
    steps: list[tuple[str, str, str]] = [
        ("SIGKILL, restart as a plain member", "kill", ""),
        ("SIGKILL of a plain member, restart as static member", "kill", "bench-0"),
        ("SIGKILL, restart as the same static member", "kill", "bench-0"),
        (
            "SIGTERM (graceful: it leaves the group), restart as the same static member",
            "term",
            "bench-0",
        ),
        (
            "SIGTERM (graceful), restart as a NEW static member (a rollout's new pod)",
            "term",
            "bench-1",
        ),
    ]
    for i, (label, how, instance) in enumerate(steps):
        if how == "kill":
            server.kill()
        else:
            t_stop = time.monotonic()
            server.stop(timeout=60)
            code = server.proc.returncode if server.proc is not None else None
            print(f"  graceful stop took {time.monotonic() - t_stop:.1f}s (exit code {code})")
        dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = instance
        marks, server, port = recover(dep, f"w{i + 1}", port, probe, 300)
        print(f"MEASURED {label}: {show_recovery(marks)}")
    dep.stop_all()


def two_workers(stack: Stack, args: argparse.Namespace, standby: int, how: str) -> None:
    dep, total = seeded_deployment(
        stack,
        args.workloads,
        args.days,
        args.session_timeout,
        KUBEFINOPS_TABLE_STANDBY_REPLICAS=str(standby),
    )
    workers: list[tuple[Server, int]] = []
    for i in range(2):
        dep.extra_env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"] = f"bench-{i}"
        workers.append(dep.start_worker(f"w{i}"))
    dep.wait_stable(2, timeout=600)
    for _, port in workers:
        dep.wait_ready(port, timeout=600)
    # both workers count their own partitions' samples: wait until the sum is complete
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        from bench.common import ingested

        if sum(ingested(p) for _, p in workers) >= total:
            break
        time.sleep(0.5)
    survivor = workers[1][1]
    probe = probes(survivor, args.workloads)
    if standby:
        time.sleep(5)  # let the standby copies catch up with the last writes
    victim = workers[0][0]
    before = int(http_json(f"http://127.0.0.1:{survivor}/ready")[1]["assigned_partitions"])
    started = time.monotonic()
    if how == "kill":
        victim.kill()
    else:
        victim.stop(timeout=60)
    marks = survivor_answers(survivor, probe, started, 300, before)
    word = "SIGKILL (pod gone)" if how == "kill" else "SIGTERM (graceful)"
    shown = (
        "did not recover"
        if marks is None
        else f"{marks['answers']:.1f}s (all partitions assigned {marks['assigned']:.1f}s, "
        f"ready {marks['ready']:.1f}s)"
    )
    print(
        f"MEASURED 2 workers, table_standby_replicas={standby}, {word} of one, no restart: "
        f"kill -> survivor answers every probed workload {shown}"
    )
    dep.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--session-timeout", type=float, default=30.0)
    ap.add_argument("--first-joins", type=int, default=6)
    ap.add_argument("--skip", default="", help="comma list of: first,one,two")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; session timeout {args.session_timeout:g}s"
    )
    stack = Stack()
    try:
        stack.start()
        if "first" not in skip:
            first_joins(stack, args.first_joins, args.session_timeout)
        if "one" not in skip:
            one_worker(stack, args)
        if "two" not in skip:
            for standby in (0, 1):
                two_workers(stack, args, standby, "kill")
            two_workers(stack, args, 0, "term")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
