"""In-process cost of the decision path per workload: recommender + gate (not a test).

    python bench/bench_handlers.py [--workloads 300] [--repeat 5] [--profile]
    ROOT=/path/to/other/checkout python bench/bench_handlers.py   # the same, on other code
    python bench/bench_handlers.py --cold   # every state decoded at its marker (a cache miss)

The handlers themselves, as ``bench_scale.py``'s in-process baseline runs them (no Kafka, no
Faust): every workload (2 containers) gets the seeded 14-day usage state the worker would hold
(built by the worker's own code, decoded and its summaries warmed as after the decisions phase),
then its cycle-end marker goes through ``aggregator.ingest`` (-> recommender -> gate in the same
pass, with the history outbox).  On code from before the gate ran in that pass (``ROOT=``), the
recommendations then go through ``gate.handle_batch``, timed apart.  ``--cold``: the
states are not decoded beforehand, so each marker decodes its containers' states and merges
their closed days, as after a decoded-state cache miss (every container of a fleet larger than
``usage_cache_bytes``, every cycle; a 1,000-workload burst on the 16 MiB default).  CPU time
(``process_time``), the minimum over ``--repeat`` runs (the box is shared).  Same run baseline:
the whole collector-shaped burst in-process (``bench_scale.in_process_burst``: a chunk + a
marker per workload, i.e. ingest + the above), wall time, so the ratio says what share of a
burst the decision path is.  A digest of every recommendation, decision and history record is
printed: two checkouts giving the same digest produced byte-identical outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("ROOT") or str(Path(__file__).resolve().parents[1]))

from bench import bench_scale as bs
from bench.common import usage_templates

CHUNK = 6 * 3600


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--templates", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="cProfile the last run (top 40)")
    ap.add_argument("--cold", action="store_true", help="states decoded at their marker")
    ap.add_argument(
        "--burst",
        type=int,
        default=0,
        help="workloads of the whole in-process burst (default: --workloads); bench_scale's "
        "is 1,000, whose 2,000 states must fit the decoded-state cache",
    )
    args = ap.parse_args()

    from agents import aggregator, gate
    from engine.core.model import RESOURCES, container_id
    from engine.services import Services
    from tests.fakes import FakeHistory, runtime

    end = (int(time.time()) // 3600) * 3600 - 3600
    chunks = [(end - (k + 1) * CHUNK, end - k * CHUNK) for k in range(14 * 4)][::-1]
    templates = usage_templates(chunks, 300, args.templates)
    wls = bs.workloads(args.workloads)
    now = float(end + 1800)

    async def once(prof: cProfile.Profile | None) -> tuple[float, float | None, str]:
        rt = runtime(Services(history=FakeHistory()), now=now)
        for i, (ns, wl) in enumerate(wls):
            for j, c in enumerate(("app", "sidecar")):
                cid = container_id(ns, "Deployment", wl, c)
                rt.tables.usage.store[cid] = templates[(2 * i + j) % len(templates)]
                if args.cold:
                    continue
                usage = rt.tables.usage.get(cid)
                for res in RESOURCES if usage is not None else ():
                    usage.summary(res)
        msgs = bs.markers(wls, "bench", now)
        if prof:
            prof.enable()
        t0 = time.process_time()
        for key, raw in msgs:
            await aggregator.ingest(rt, key, raw)
        t1 = time.process_time()
        sent = rt.topics.recommendations.sent  # type: ignore[attr-defined]
        apart = not rt.topics.decisions.sent  # type: ignore[attr-defined]
        if apart:
            # code before the gate ran in the aggregator's pass: the gate read the topic
            for i in range(0, len(sent), gate.GATE_BATCH):
                await gate.handle_batch(rt, sent[i : i + gate.GATE_BATCH])
        t2 = time.process_time()
        if prof:
            prof.disable()
        digest = hashlib.sha256()
        for topic in (rt.topics.recommendations, rt.topics.decisions):
            for _, value in topic.sent:  # type: ignore[attr-defined]
                digest.update(value or b"")
        # the history's records, not how they were packed into outbox messages (per batch of
        # the gate before, per marker or bundle since it runs in the aggregator's pass)
        for _, value in rt.topics.history.sent:  # type: ignore[attr-defined]
            for item in json.loads(value or b"{}").get("records", []):
                digest.update(json.dumps(item, sort_keys=True).encode())
        assert len(rt.topics.decisions.sent) == len(wls)  # type: ignore[attr-defined]
        return t1 - t0, (t2 - t1) if apart else None, digest.hexdigest()[:16]

    runs = []
    for k in range(args.repeat):
        prof = cProfile.Profile() if args.profile and k == args.repeat - 1 else None
        runs.append(asyncio.run(once(prof)))
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    rec = min(r[0] for r in runs) * 1000 / len(wls)
    gates = [r[1] for r in runs if r[1] is not None]
    gat = min(gates) * 1000 / len(wls) if gates else 0.0
    bs.STEP[0] = 300
    whole = bs.in_process_burst(
        bs.workloads(args.burst or args.workloads),
        end,
        end + 2700,
        argparse.Namespace(days=14, step=300, worker_env=[]),
        templates,
    )
    burst = whole["ms_per_workload"]
    state = "cold (decoded at the marker)" if args.cold else "warm"
    print(
        f"code: {os.environ.get('ROOT') or 'this checkout'}; states {state}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    if not gates:  # the gate ran inside the recommender's pass
        print(f"recommender and gate in one pass {rec:.3f} ms/workload (decision path)")
    else:
        print(f"recommender {rec:.3f} ms/workload, gate {gat:.3f}, decision path {rec + gat:.3f}")
    print(
        f"same run, whole in-process burst of {whole['workloads']:,.0f} workloads (chunk ingest"
        f" + decision path): {burst:.2f} ms/wl, CPU {whole['cpu_ms_per_workload']:.2f} ms/wl; "
        f"decoded-state cache hit {whole['cache_hit_rate']:.0%} of reads"
    )
    print(f"decision path / burst: {(rec + gat) / burst:.2f}; digest {runs[-1][2]}")


if __name__ == "__main__":
    main()
