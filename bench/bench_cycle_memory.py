"""Memory of one apply cycle's executor and reporter steps at fleet size, in process (not a test).

    python bench/bench_cycle_memory.py [--decisions 10000] [--apply] [--s3]

Builds realistic decisions (50 workloads through the aggregator, recommender and gate on a few
days of synthetic usage, then copied under new names to ``--decisions``), and runs the steps a
cycle of that size takes after the gate, one at a time, each under ``tracemalloc``: the
executor's pending rows and their decoding at apply (parsed, as before, and into a
``DecisionLog``, as now), the log split into parts, the reporter's join of the parts (parsed, as
before, and as a log) and the four report documents from each (all at once, and one at a time as
the reporter now stores them).  ``--apply`` makes every decision an apply (the default policy
recommends, so the copies are holds): an applied cycle's report is about twice the size.
Prints each step's peak, what it keeps and its CPU time; the worker holds the joined cycle while
it renders the documents, so those two add up at the cycle's peak.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.environ.get("ROOT") or str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import bench_scale as bs
from bench.common import encode_chunk


def decisions(n: int) -> list[bytes]:
    from agents import aggregator
    from engine.core.model import Decision
    from engine.services import Services
    from tests.fakes import FakeHistory, runtime

    rt = runtime(Services(history=FakeHistory()), now=time.time())
    rng = np.random.default_rng(3)
    wls = bs.workloads(50)
    end = int(time.time()) // 3600 * 3600 - 3600
    six = 6 * 3600

    async def go() -> None:
        for k in range(12, 0, -1):
            for ns, wl in wls:
                start = end - k * six
                key, raw, _ = encode_chunk(rng, ns, wl, ["app", "sidecar"], start, start + six)
                await aggregator.ingest(rt, key, raw)
        for key, raw in bs.markers(wls, "c1", time.time()):
            await aggregator.ingest(rt, key, raw)  # recommended and decided in one pass

    asyncio.run(go())
    base = [Decision.model_validate_json(v) for _, v in rt.topics.decisions.sent]  # type: ignore[attr-defined]
    out = []
    for i in range(n):
        d = base[i % len(base)]
        name = d.workload_id.rsplit("/", 1)[1]
        text = d.model_dump_json().replace(f'{name}"', f'{name}-x{i}"').replace(d.id, f"{d.id}x{i}")
        out.append(text.encode())
    return out


def rss_mib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def step(name: str, f: Callable[..., Any], *args: Any) -> Any:
    gc.collect()
    tracemalloc.start()
    before = rss_mib()
    t0 = time.process_time()
    out = f(*args)
    cpu = time.process_time() - t0
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{name:<44} peak {peak / 2**20:6.0f} MiB, kept {kept / 2**20:5.0f} MiB, "
        f"CPU {cpu:5.2f} s (RSS {before} -> {rss_mib()} MiB)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=10_000)
    ap.add_argument(
        "--s3",
        action="store_true",
        help="also write the report to a real S3 server (moto, started here): one put per "
        "object against the multipart upload of large ones",
    )
    ap.add_argument(
        "--apply", action="store_true", help="every decision an apply (an autopilot cycle)"
    )
    args = ap.parse_args()
    from engine.core import report as report_module
    from engine.core.cycles import join_cycle, join_cycle_log, split_log
    from engine.core.decision_log import DecisionLog
    from engine.core.model import CycleSummary, Decision, Execution
    from engine.core.report import CycleReport, documents

    report_objects = getattr(report_module, "report_objects", None)

    raws = decisions(args.decisions)
    if args.apply:
        raws = [re.sub(rb'"action":"\w+"', b'"action":"apply"', r) for r in raws]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {len(raws):,} decisions, "
        f"{sum(map(len, raws)) / len(raws):,.0f} B of JSON each; tracemalloc slows the CPU "
        "figures (compare them within this run only)"
    )
    rows = step(
        "executor: pending rows (dicts)",
        lambda: [Decision.model_validate_json(r).model_dump(mode="json") for r in raws],
    )
    parsed = step(
        "executor: rows decoded at apply, parsed",
        lambda rs: [Decision.model_validate(r) for r in rs],
        rows,
    )
    del parsed
    log = step(
        "executor: rows decoded at apply, as a log",
        lambda rs: DecisionLog(Decision.model_validate(r) for r in rs).sorted_by(
            lambda r: r.workload_id
        ),
        rows,
    )
    del rows
    applies = list(log.where(lambda r: r.action.value == "apply"))
    ex = Execution.of("bench", applies, "pushed", executed_at=time.time(), commit_sha="a" * 40)
    header = CycleSummary(cycle="bench", decisions=[], execution=ex, policies={})
    parts = step(
        "executor: the log split into parts",
        lambda lg: [p.model_dump_json().encode() for p in split_log(header, lg)],
        log,
    )
    del log, applies
    whole = step(
        "reporter: parts parsed and joined (before)",
        lambda: join_cycle([CycleSummary.model_validate_json(b) for b in parts]),
    )
    report = CycleReport.from_summary(whole, time.time(), [])
    step("reporter: the four documents (before)", lambda: documents(report))
    del whole, report
    joined, dlog = step(
        "reporter: parts joined as a log",
        lambda: join_cycle_log(CycleSummary.model_validate_json(b) for b in parts),
    )
    report = CycleReport.from_summary(joined, time.time(), [], decisions=dlog)
    docs = step("reporter: the four documents from the log", lambda: documents(report))
    if report_objects is not None:  # not in a checkout from before it (ROOT=...)

        def one_at_a_time() -> int:  # as the reporter stores them: each let go, the audit chunked
            return sum(
                len(o.body)
                if isinstance(o, report_module.ReportObject)
                else sum(map(len, o.chunks(8 << 20)))
                for o in report_objects(report)
            )

        step("reporter: the same, one at a time (audit in 8 MiB chunks)", one_at_a_time)
    sizes = ", ".join(f"{o.key.rsplit('/', 1)[-1]} {len(o.body) / 2**20:.1f} MiB" for o in docs)
    print(f"{len(parts)} parts, {sum(map(len, parts)) / 2**20:.1f} MiB; documents: {sizes}")
    del docs
    if args.s3:
        write_to_s3(report)


def write_to_s3(report: Any) -> None:
    """The reporter's upload of the documents (rendered again inside ``write``, as the worker
    does) to moto, with a single put per object (as before) and with large objects in parts."""
    import tempfile

    from engine.adapters.reports import ReportWriter
    from engine.settings import load_settings
    from tests.harness.s3 import start_s3, unique_bucket

    with tempfile.TemporaryDirectory() as tmp:
        info = start_s3(Path(tmp))
        try:
            for label, part_bytes in (("one put per object", 1 << 40), ("in 8 MiB parts", None)):
                settings = load_settings(
                    s3_endpoint_url=info.endpoint_url,
                    s3_access_key=info.access_key,
                    s3_secret_key=info.secret_key,
                    s3_region=info.region,
                    s3_bucket=unique_bucket("bench"),
                    data_dir=tmp,
                    kafka_username=None,
                )
                extra = {} if part_bytes is None else {"multipart_bytes": part_bytes}
                writer = ReportWriter(settings, park_on_failure=False, **extra)

                async def go(w: ReportWriter = writer) -> None:
                    await w.write(report)
                    await w.close()

                warm = ReportWriter(settings, park_on_failure=False)  # bucket, client, imports
                asyncio.run(go(warm))
                step(f"reporter: render + write to S3, {label}", lambda g=go: asyncio.run(g()))
        finally:
            info.stop()


if __name__ == "__main__":
    main()
