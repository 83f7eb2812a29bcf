"""Collector: Prometheus -> ``kubefinops.metrics`` records and ``kubefinops.workloads`` specs.

One columnar record (:class:`~engine.core.model.MetricsChunk`) per workload and chunk, every
container and pod on the query's time grid (docs/collector.md "The metrics record"); the records
of one answer (and the cycle-end markers of one shard) are sent bundled per partition
(:mod:`engine.core.bundles`), many workloads to a Kafka record.

A leader-only timer drops a tick on the one-partition ``collector-ticks`` topic every
``collect_interval_seconds``; the agent consuming it is therefore a single collector for the whole
cluster.  It reads incrementally: the ``watermarks`` table (changelog-backed) holds the end of the
last chunk that was fully published, each cycle asks only for ``(watermark, now - scrape_lag]``
in bounded chunks (the first one backfills ``history_days``), and the watermark advances chunk by
chunk only after the chunk's batches were sent — a restart resumes without a gap, and a chunk sent
twice is dropped by the aggregator's per-key high-water mark.  After the usage, each workload's
spec goes to ``kubefinops.workloads`` and a cycle-end marker follows its batches on the metrics
partition so its recommendation is computed from complete state; the specs are read in the
same namespace shards as the usage (docs/collector.md "Queries").
"""

from __future__ import annotations

import json
import logging
import time

from agents.runtime import Runtime
from engine.core.apply_cycles import CycleManifest
from engine.core.bundles import bundled
from engine.core.collect import plan_chunks, plan_queries, split_chunk, split_range
from engine.core.model import CycleEnd
from engine.errors import AnswerTooLarge, RetryableError
from engine.metrics import CYCLE_DURATION, CYCLE_FAILURES

log = logging.getLogger("kubefinops.collector")
AGENT = "collector"
USAGE_WATERMARK = "usage"


def collection_cycle_id(now: float) -> str:
    """The collection cycle's id: its start time, UTC (``20261130T094000Z``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


async def run_cycle(rt: Runtime, now: float) -> int:
    """One collection cycle. Returns the number of metrics records published."""
    source = rt.services.usage
    if source is None:
        return 0
    s = rt.settings
    sent = 0
    # The chunk length and the namespace shards from the series per namespace (one instant
    # query): each range answer within the point budget, the records a day long if it can be.
    plan = plan_queries(
        await source.series_by_namespace(now),
        longest=s.prometheus_chunk_seconds,
        budget=s.prometheus_max_points_per_query,
        step=s.prometheus_step_seconds,
    )
    chunks = plan_chunks(
        rt.tables.watermarks.get(USAGE_WATERMARK),
        now,
        scrape_lag=s.scrape_lag_seconds,
        history=s.history_seconds,
        chunk=plan.chunk,
        step=s.prometheus_step_seconds,
    )
    for i, (start, end) in enumerate(chunks, 1):
        published = 0
        for shard in plan.shards:  # one answer held at a time; its records sent before the next
            published += await publish_shard(rt, start, end, shard)
        # the chunk counts as published only once Kafka acknowledged every shard of it
        rt.tables.watermarks[USAGE_WATERMARK] = end
        sent += published
        if len(chunks) > 1:
            log.info(
                "backfill %d/%d chunks of %.0f h (%s records, %d shards)",
                i,
                len(chunks),
                plan.chunk / 3600,
                published,
                len(plan.shards),
            )
    cycle = collection_cycle_id(now)
    workloads = 0
    for shard in plan.shards:
        # the specs in the usage's namespace shards too: one shard's kube-state-metrics series
        # held at a time (~36 a workload), not the whole cluster's
        specs = await source.collect_specs(now, shard)
        markers: list[tuple[str, bytes]] = []
        for spec in specs:
            key = spec.workload_id.encode()
            await rt.topics.workloads.send(key=key, value=spec.model_dump_json().encode())
            markers.append(
                (spec.workload_id, CycleEnd(cycle=cycle, spec=spec).model_dump_json().encode())
            )
        # after every chunk of the cycle (sent and acknowledged above), bundled per partition
        for key, value in bundled(markers, s.topic_partitions):
            await rt.topics.metrics.send(key=key, value=value)
        workloads += len(specs)
        del specs, markers
    # How many decisions make this cycle: the executor applies them as one commit, however far
    # apart they arrive (engine/core/apply_cycles.py).
    manifest = CycleManifest(cycle=cycle, workloads=workloads, at=now)
    await rt.topics.apply_control.send(
        key=cycle.encode(), value=manifest.model_dump_json().encode()
    )
    return sent


async def publish_shard(rt: Runtime, start: float, end: float, shard: str) -> int:
    """One shard of one chunk: its records sent and acknowledged; returns how many.

    An answer well over the point budget (the plan's count missed series: workloads scaled up
    earlier in the chunk, pods that came and went) is refused while it is read, and the two
    halves of the range are asked instead, down to 15 minutes: the collector's memory stays
    bounded whatever the count said.  Raises :class:`AnswerTooLarge` when even that is over."""
    source = rt.services.usage
    assert source is not None
    s = rt.settings
    pending = [(start, end)]
    published = 0
    while pending:
        a, b = pending.pop(0)
        try:
            records = await source.collect_records(
                a, b, shard, max_points=s.prometheus_max_points_per_query
            )
        except AnswerTooLarge as exc:
            halves = split_range(a, b, s.prometheus_step_seconds)
            if halves is None:
                raise
            log.info(
                "answer for %.0f s%s over the point budget (%s): asking for its halves",
                b - a,
                f" of shard {shard}" if shard else "",
                exc,
            )
            pending[:0] = halves
            continue
        # one record per workload (split only when over Kafka's limit), bundled per partition
        members = [(r.workload_id, raw) for r in records for raw in split_chunk(r)]
        del records
        futures = [
            await rt.topics.metrics.send(key=key, value=value)
            for key, value in bundled(members, s.topic_partitions)
        ]
        del members
        for fut in futures:
            # acknowledged before the next answer is read: the producer holds one answer's
            # records (<= the point budget) at a time, not a whole day of a large fleet
            await fut
        published += len(futures)
    return published


async def on_tick(rt: Runtime) -> int:
    """A tick on ``collector-ticks``: run a cycle; a retryable failure skips it (logged)."""
    started = time.monotonic()
    batches = 0
    try:
        batches = await run_cycle(rt, rt.clock())
        log.info("collected %d batches in %.1fs", batches, time.monotonic() - started)
    except RetryableError as exc:
        # Watermark stays where the last published chunk ended: nothing skipped.
        CYCLE_FAILURES.labels(AGENT, "prometheus").inc()
        log.warning("collection cycle skipped: %s", exc)
    except AnswerTooLarge as exc:
        # Not even 15 minutes of one shard fit the budget: nothing skipped either (the
        # watermark stays), the next cycle asks again; the operator's lever is the budget.
        CYCLE_FAILURES.labels(AGENT, "prometheus").inc()
        log.error(
            "collection cycle skipped: %s, even for the shortest range; raise "
            "KUBEFINOPS_PROMETHEUS_MAX_POINTS_PER_QUERY (docs/collector.md)",
            exc,
        )
    CYCLE_DURATION.labels(AGENT).observe(time.monotonic() - started)
    return batches


async def request_cycle(rt: Runtime, by: str) -> None:
    """Ask the (single) collector for a cycle now: the timer, the start-up hook and the API."""
    value = json.dumps({"at": rt.clock(), "by": by}).encode()
    await rt.topics.ticks.send(key=b"tick", value=value)
