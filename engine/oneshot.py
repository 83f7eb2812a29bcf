"""``kubefinops recommend --once``: a KRR-style one-shot run, no Kafka, same engine code.

History is read from Prometheus chunk by chunk (the collector's plan and queries) and folded at
once into one :class:`ContainerUsage` per container through the aggregator's path
(:func:`validate_batch` then :meth:`ContainerUsage.ingest`), so memory stays bounded by the
sketches however long the history is.  Specs come from kube-state-metrics at the end of the
window; each workload is recommended with the built-in default policy and the configured prices,
and the list is rendered by :mod:`engine.core.render`.

Progress goes to the ``kubefinops.oneshot`` logger (stderr); the returned text is all that goes
to stdout.  An unreachable Prometheus raises :class:`DependencyUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.adapters.prometheus import (
    LOOKBACK_SECONDS,
    Collector,
    PrometheusClient,
    redact_url,
)
from engine.core.collect import plan_chunks
from engine.core.guardrails import hpa_resources
from engine.core.model import RESOURCES, MetricsBatch, Recommendation, UsageSummary, WorkloadSpec
from engine.core.policy import exclusion, policy_for
from engine.core.recommend import recommend
from engine.core.render import render
from engine.core.samples import validate_batch
from engine.core.usage import ContainerUsage
from engine.settings import Settings

log = logging.getLogger("kubefinops.oneshot")


@dataclass
class Fold:
    """Usage state of every container seen so far, plus what was dropped and why."""

    history_seconds: float
    window_seconds: int
    namespaces: frozenset[str] = frozenset()
    usage: dict[str, ContainerUsage] = field(default_factory=dict)
    samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def wanted(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def add(self, batches: Iterable[MetricsBatch], now: float) -> None:
        for batch in batches:
            if not self.wanted(batch.namespace):
                continue
            checked = validate_batch(batch, now=now)
            for reason, n in checked.reasons:
                self.rejected[reason] = self.rejected.get(reason, 0) + n
            clean = checked.batch
            cu = self.usage.setdefault(clean.container_id, ContainerUsage(self.window_seconds))
            result = cu.ingest(
                clean,
                arrays=checked.arrays,
                history_seconds=self.history_seconds,
                window_seconds=self.window_seconds,
            )
            self.samples += result.accepted
            for reason, n in result.rejected:
                self.rejected[reason] = self.rejected.get(reason, 0) + n

    @property
    def newest_ts(self) -> float | None:
        """Time of the newest sample of any container, or None before any sample."""
        times = [wu.newest_ts for cu in self.usage.values() for wu in cu.resources.values()]
        return max((t for t in times if t is not None), default=None)

    def summaries(self, spec: WorkloadSpec) -> dict[str, dict[str, UsageSummary]]:
        out: dict[str, dict[str, UsageSummary]] = {}
        for c in spec.containers:
            cu = self.usage.get(f"{spec.workload_id}/{c.name}")
            if cu is not None:
                out[c.name] = {r: cu.summary(r) for r in RESOURCES}
        return out


def workload_notes(spec: WorkloadSpec) -> list[str]:
    """What the autopilot's gate would do differently from the raw targets (KRR skips HPAs)."""
    policy = policy_for([], spec)
    notes = []
    excluded = exclusion(spec, policy)
    if excluded:
        notes.append(f"excluded ({excluded}): the autopilot would not change it")
    scaled, rule = hpa_resources(spec), policy.guardrails.hpa
    if scaled and spec.hpa is not None and rule != "allow":
        on = " and ".join(sorted(scaled))
        effect = (
            "it would change memory only"
            if rule == "memory-only" and scaled == {"cpu"}
            else "it would not change this workload"
        )
        notes.append(f"HPA {spec.hpa.name} scales on {on}: {effect} (hpa rule {rule})")
    return notes


def with_notes(rec: Recommendation, notes: list[str]) -> Recommendation:
    """The notes appended to every container's reasons (the id does not depend on reasons)."""
    if not notes:
        return rec
    containers = [c.model_copy(update={"reasons": [*c.reasons, *notes]}) for c in rec.containers]
    return rec.model_copy(update={"containers": containers})


def recommend_all(
    specs: Sequence[WorkloadSpec], fold: Fold, settings: Settings, *, now: float
) -> tuple[list[Recommendation], dict[str, list[str]]]:
    """One recommendation per wanted workload (default policy, configured prices) and the
    gate's notes per workload id."""
    prices = settings.prices
    recs: list[Recommendation] = []
    notes: dict[str, list[str]] = {}
    for spec in specs:
        if not fold.wanted(spec.namespace):
            continue
        rec = recommend(spec, fold.summaries(spec), policy_for([], spec), now=now, prices=prices)
        found = workload_notes(spec)
        if found:
            notes[spec.workload_id] = found
        recs.append(with_notes(rec, found))
    return sorted(recs, key=lambda r: r.workload_id), notes


async def collect(
    settings: Settings,
    fold: Fold,
    *,
    now: float,
    client: PrometheusClient,
) -> list[WorkloadSpec]:
    """Read every chunk of the history window into ``fold``; return the specs at its end."""
    chunks = plan_chunks(
        None,
        now,
        scrape_lag=settings.scrape_lag_seconds,
        history=settings.history_seconds,
        chunk=settings.prometheus_chunk_seconds,
        step=settings.prometheus_step_seconds,
    )
    collector = Collector(client, settings)
    log.info(
        "reading %d day(s) of history from %s in %d chunk(s)",
        settings.history_days,
        redact_url(settings.prometheus_url),
        len(chunks),
    )
    for i, (start, end) in enumerate(chunks, 1):
        fold.add(await collector.collect_chunk(start, end), now)
        log.info(
            "chunk %d/%d: %d containers, %d samples so far",
            i,
            len(chunks),
            len(fold.usage),
            fold.samples,
        )
    at = chunks[-1][1] if chunks else now
    newest = fold.newest_ts
    if newest is not None and newest < at - LOOKBACK_SECONDS:
        # A Prometheus whose data stops before the window does (a snapshot, a dead scrape):
        # read the specs when the workloads were last seen, not at an empty instant.
        log.warning(
            "newest sample is %.0f s before the window end: reading specs at %s",
            at - newest,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)),
        )
        at = newest
    return await collector.collect_specs(at)


async def run_once(
    settings: Settings,
    *,
    namespaces: Sequence[str] = (),
    output: str = "table",
    now: float | None = None,
    client: PrometheusClient | None = None,
) -> str:
    """Pull history, recommend every workload (optionally only ``namespaces``), render it.

    ``now`` defaults to the wall clock and also stamps ``generated_at``, so a caller can tell
    exactly which window was read.
    """
    if output not in ("table", "json", "yaml", "csv"):
        raise ValueError(f"unknown output format {output!r}")
    now = time.time() if now is None else now
    fold = Fold(
        history_seconds=settings.history_seconds,
        window_seconds=settings.usage_window_seconds,
        namespaces=frozenset(namespaces),
    )
    owned = client is None
    client = client or PrometheusClient(settings)
    try:
        specs = await collect(settings, fold, now=now, client=client)
    finally:
        if owned:
            await client.close()
    recs, notes = recommend_all(specs, fold, settings, now=now)
    known = {f"{s.workload_id}/{c.name}" for s in specs for c in s.containers}
    orphans = sorted(set(fold.usage) - known)
    if orphans:
        log.info(
            "%d container(s) with usage but no current spec skipped (e.g. %s)",
            len(orphans),
            orphans[0],
        )
    if fold.rejected:
        log.warning(
            "samples dropped: %s", ", ".join(f"{k}={v}" for k, v in sorted(fold.rejected.items()))
        )
    log.info("%d workload(s), %d sample(s) read", len(recs), fold.samples)
    return render(recs, output, settings.prices, notes=notes)
