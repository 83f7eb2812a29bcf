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

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.adapters.prometheus import (
    LOOKBACK_SECONDS,
    PrometheusClient,
    redact_url,
    spec_series,
)
from engine.core.collect import (
    OWNER_METRICS,
    ContainerArrays,
    Owners,
    Series,
    SeriesArrays,
    build_batch_arrays,
    build_specs_by_name,
    eval_start,
    memory_expr,
    plan_chunks,
)
from engine.core.guardrails import hpa_resources
from engine.core.model import RESOURCES, Recommendation, UsageSummary, WorkloadSpec
from engine.core.policy import exclusion, policy_for
from engine.core.recommend import recommend
from engine.core.render import render
from engine.core.samples import validate_arrays
from engine.core.selection import (
    LABEL_METRICS,
    Selection,
    counter_rate_arrays,
    join_matchers,
    left_open_ranges,
    max_per_time,
    pod_matcher,
    window_maxima,
)
from engine.core.usage import ContainerUsage
from engine.errors import PermanentError
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

    def add(self, batches: Iterable[ContainerArrays], now: float) -> None:
        """Fold one chunk's containers (the aggregator's checks, then its ingest)."""
        for batch, arrays in batches:
            if not self.wanted(batch.namespace):
                continue
            clean, reasons = validate_arrays(batch.start, batch.end, arrays, now=now)
            for reason, n in reasons:
                self.rejected[reason] = self.rejected.get(reason, 0) + n
            cu = self.usage.setdefault(batch.container_id, ContainerUsage(self.window_seconds))
            result = cu.ingest_arrays(
                batch.start,
                batch.end,
                clean,
                history_seconds=self.history_seconds,
                window_seconds=self.window_seconds,
                validated=True,  # validate_arrays' checks include ingest's own
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


ONESHOT_CHUNK_SECONDS = 43200  # 2 chunks a day: Python folds one while Prometheus reads the next
PREFETCH = 3  # chunks asked for or parsed ahead of the fold (in order): bounds the memory
# Queries awaiting Prometheus at once (not their parsing): two chunks' CPU and memory.  Fewer
# than every prefetched chunk's, so the server answers the chunks about in order and each is
# parsed and folded while the next ones are computed; more than one chunk's, so the server
# never waits for a request while the client parses (bench/bench_oneshot.py, pinned cores).
IN_FLIGHT = 4
Progress = Callable[[int, int], None]


def oneshot_step(settings: Settings) -> int:
    """The one-shot's resolution: the worker's collector step, so its samples are the worker's
    (a CPU rate and a memory peak per step) and so is the recommendation."""
    return settings.prometheus_step_seconds


def rate_steps(settings: Settings) -> int:
    """Steps in the worker's CPU rate window (the collector's ``max(2 * step, 60 s)``)."""
    step = settings.prometheus_step_seconds
    return max(1, math.ceil(max(2 * step, 60) / step))


class NoMatch(PermanentError):
    """The selection matches no workload: a one-line error, non-zero exit."""


def cpu_counter_expr(matchers: str) -> str:
    """The CPU counter sampled once per step (rates are taken client-side: one sample per series
    and step instead of every sample of a ``rate()`` window).  No ``max by`` here: aggregating
    cost Prometheus 10x the selection itself; :func:`cpu_rates` takes the max client-side."""
    sel = join_matchers('container!=""', 'container!="POD"', matchers)
    return f"container_cpu_usage_seconds_total{{{sel}}}"


def memory_raw_expr(matchers: str, seconds: int) -> str:
    """Every raw working-set sample of the last ``seconds`` (an instant range selector: no
    per-step evaluation, the cheapest read Prometheus 2.x has); the client takes the per-step
    peaks the worker's ``max_over_time(...[step])`` takes (:func:`memory_peaks`)."""
    sel = join_matchers('container!=""', 'container!="POD"', matchers)
    return f"container_memory_working_set_bytes{{{sel}}}[{seconds}s]"


def group_by_container(
    series: list[SeriesArrays],
) -> dict[tuple[str, str, str], list[SeriesArrays]]:
    """Raw series per (namespace, pod, container): cAdvisor may expose several (a restart)."""
    out: dict[tuple[str, str, str], list[SeriesArrays]] = {}
    for s in series:
        key = (
            s.labels.get("namespace", ""),
            s.labels.get("pod", ""),
            s.labels.get("container", ""),
        )
        out.setdefault(key, []).append(s)
    return out


def cpu_rates(counters: list[SeriesArrays], step: int, steps: int) -> list[SeriesArrays]:
    """The worker's CPU samples: per (namespace, pod, container), the rate over ``steps`` steps
    of ``max by (namespace, pod, container)`` of the counters sampled once per step."""
    out = []
    for (ns, pod, container), parts in group_by_container(counters).items():
        if len(parts) == 1:
            ts, values = parts[0].ts, parts[0].values
        else:
            ts, values = max_per_time(
                np.concatenate([p.ts for p in parts]), np.concatenate([p.values for p in parts])
            )
        labels = {"namespace": ns, "pod": pod, "container": container}
        out.append(SeriesArrays(labels, *counter_rate_arrays(ts, values, step, steps)))
    return out


def memory_peaks(
    raw: list[SeriesArrays], first: float, end: float, step: int
) -> list[SeriesArrays]:
    """The worker's memory samples (the peak of each ``[t - step, t]``) from the raw ones."""
    out = []
    for (ns, pod, container), parts in group_by_container(raw).items():
        ts = np.concatenate([p.ts for p in parts])
        values = np.concatenate([p.values for p in parts])
        labels = {"namespace": ns, "pod": pod, "container": container}
        out.append(SeriesArrays(labels, *window_maxima(ts, values, first, end, step)))
    return out


async def discover(
    client: PrometheusClient, selection: Selection, start: float, end: float
) -> tuple[Owners, str]:
    """Pod owners of the window and the usage matchers, from the series index (no samples).

    A label selector resolves to the selected workloads' pods (like KRR, which lists them from
    the API server); raises :class:`NoMatch` when nothing is selected.
    """
    ns = selection.namespace_matcher()
    # one request for the three owner metrics (each series carries its ``__name__``)
    found_owners = await client.series([f"{m}{{{ns}}}" for m in OWNER_METRICS], start, end)
    by_metric: dict[str, list[Series]] = {m: [] for m in OWNER_METRICS}
    for s in found_owners:
        by_metric.get(s.labels.get("__name__", ""), []).append(s)
    owners = Owners.build(*(by_metric[m] for m in OWNER_METRICS))
    matchers = ns
    if selection.labels:
        sel = join_matchers(ns, selection.label_matchers())
        found = await client.series([f"{m}{{{sel}}}" for m in LABEL_METRICS], start, end)
        kinds = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}
        chosen = {
            (s.labels.get("namespace", ""), kind, s.labels.get(key, ""))
            for s in found
            for key, kind in kinds.items()
            if s.labels.get("__name__") == f"kube_{key}_labels"
        }
        pods = [pod for (n, pod) in owners.pods if (n, *owners.resolve(n, pod)) in chosen]
        if not pods:
            raise NoMatch(
                f"no workloads match {selection.describe()} in Prometheus at "
                f"{redact_url(client.base_url)}"
            )
        matchers = join_matchers(ns, pod_matcher(pods))
    elif not owners.pods:
        raise NoMatch(
            f"no workloads match {selection.describe()} in Prometheus at "
            f"{redact_url(client.base_url)} (no kube_pod_owner series in the window)"
        )
    return owners, matchers


async def collect(
    settings: Settings,
    fold: Fold,
    *,
    now: float,
    client: PrometheusClient,
    selection: Selection = Selection(),
    progress: Progress | None = None,
    left_open: bool | None = None,
) -> list[WorkloadSpec]:
    """Read every chunk of the history window into ``fold``; return the specs at its end.

    ``left_open``: whether the server reads range selectors left-open, which picks how memory
    peaks are read (:func:`~engine.core.collect.memory_expr`, the worker's, or
    :func:`memory_raw_expr`); None asks the server's build info (:func:`left_open_ranges`)."""
    step = oneshot_step(settings)
    chunks = plan_chunks(
        None,
        now,
        scrape_lag=settings.scrape_lag_seconds,
        history=settings.history_seconds,
        chunk=ONESHOT_CHUNK_SECONDS,
        step=step,
    )
    if not chunks:
        return []
    window = (chunks[0][0], chunks[-1][1])
    at = window[1]
    ns = selection.namespace_matcher()
    if left_open is None:
        # The server's version picks the memory query's shape: one round trip to an idle
        # server (~1 ms), before the queries that would delay its answer.
        left_open = left_open_ranges(await client.build_version())
    pending: list[asyncio.Future[Any]] = []
    # Round trips overlap: the owners (index only), the specs at the window's end and the first
    # chunks are asked for at once; only a label selector needs its pods before the usage.
    if selection.labels:
        owners, matchers = await discover(client, selection, *window)
        owners_ready: asyncio.Future[tuple[Owners, str]] = (
            asyncio.get_running_loop().create_future()
        )
        owners_ready.set_result((owners, matchers))
    else:
        matchers = ns
        owners_ready = asyncio.ensure_future(discover(client, selection, *window))
    # one query per metric, with the labels a spec reads (~7x less memory than the one
    # selector with every label: docs/collector.md "Queries"), their round trips overlapping
    specs_at_end = asyncio.ensure_future(spec_series(client, at, ns, together=True))
    pending += [owners_ready, specs_at_end]
    log.debug(
        "reading %d day(s) of history from %s in %d chunk(s) for %s",
        settings.history_days,
        redact_url(settings.prometheus_url),
        len(chunks),
        selection.describe(),
    )
    steps = rate_steps(settings)
    cpu_q = cpu_counter_expr(matchers)
    ahead = asyncio.Semaphore(PREFETCH)  # released by the fold of the chunk that took it

    async def peaks_of(first: float, end: float) -> list[SeriesArrays]:
        """The worker's memory samples (per-step peaks) of the chunk evaluated ``first..end``."""
        if left_open:
            # Prometheus >= 3: the worker's own query with the selection; its left-open windows
            # read each raw sample once (as the raw read does) and it sends one point per step
            # instead of every sample (half the numbers to parse at a 30 s scrape)
            return await client.query_range_arrays(memory_expr(step, matchers), first, end, step)
        # 2.x: the raw samples from the first window's left end ([t - step, t] is closed
        # there), the peaks taken here as the worker's 2.x windows take them
        raw = await client.query_arrays(memory_raw_expr(matchers, int(end - first) + step), end)
        return memory_peaks(raw, first, end, step)

    async def fetch(start: float, end: float) -> list[ContainerArrays]:
        await ahead.acquire()
        first = eval_start(start, end, step)
        if first is None:
            return []
        counters, peaks = await asyncio.gather(  # coroutines made here, awaited at once
            # the counter from one rate window before the chunk: its first rate is whole
            client.query_range_arrays(cpu_q, first - steps * step, end, step),
            peaks_of(first, end),
        )
        owners, _ = await owners_ready
        cpu = cpu_rates(counters, step, steps)
        return build_batch_arrays(cpu, peaks, owners, start, end)

    tasks = [asyncio.ensure_future(fetch(start, end)) for start, end in chunks]
    pending += tasks
    try:
        await owners_ready  # a selection matching nothing fails here, before any folding
        for i, task in enumerate(tasks, 1):
            try:
                fold.add(await task, now)  # in chunk order: the fold keeps per-container marks
            finally:
                ahead.release()
            if progress is not None:
                progress(i, len(chunks))
            log.debug("chunk %d/%d: %d containers", i, len(chunks), len(fold.usage))
        series = await specs_at_end
    finally:
        for future in pending:
            future.cancel()
    newest = fold.newest_ts
    if newest is not None and newest < at - LOOKBACK_SECONDS:
        # A Prometheus whose data stops before the window does (a snapshot, a dead scrape):
        # read the specs when the workloads were last seen, not at an empty instant.
        log.info(
            "newest sample is %.0f s before the window end: reading specs at %s",
            at - newest,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)),
        )
        at = newest
        series = await spec_series(client, at, ns, together=True)
    specs = build_specs_by_name(series, at)
    return [s for s in specs if selection.selects(s.namespace, s.labels)]


def held_changes(specs: Sequence[WorkloadSpec]) -> dict[str, frozenset[str]]:
    """Per workload id, the resources the gate would not change (default policy): all of an
    excluded workload, an HPA's resources (memory-only rule: the CPU)."""
    out: dict[str, frozenset[str]] = {}
    for spec in specs:
        policy = policy_for([], spec)
        if exclusion(spec, policy):
            out[spec.workload_id] = frozenset(RESOURCES)
            continue
        scaled, rule = hpa_resources(spec), policy.guardrails.hpa
        if not scaled or rule == "allow":
            continue
        memory_only = rule == "memory-only" and scaled == {"cpu"}
        out[spec.workload_id] = frozenset({"cpu"}) if memory_only else frozenset(RESOURCES)
    return out


async def run_once(
    settings: Settings,
    *,
    namespaces: Sequence[str] = (),
    selector: str | None = None,
    output: str = "table",
    now: float | None = None,
    client: PrometheusClient | None = None,
    progress: Progress | None = None,
) -> str:
    """Pull history for the selected workloads, recommend each, render it.

    ``namespaces`` and ``selector`` (kubectl label-selector syntax) are pushed into every
    PromQL query; a selection matching nothing raises :class:`NoMatch`.  ``now`` defaults to
    the wall clock and also stamps ``generated_at``.
    """
    if output not in ("table", "json", "yaml", "csv"):
        raise ValueError(f"unknown output format {output!r}")
    selection = Selection.build(namespaces, selector)
    now = time.time() if now is None else now
    fold = Fold(
        history_seconds=settings.history_seconds,
        window_seconds=settings.usage_window_seconds,
        namespaces=frozenset(selection.namespaces),
    )
    owned = client is None
    client = client or PrometheusClient(settings, compress=False, max_in_flight=IN_FLIGHT)
    try:
        specs = await collect(
            settings, fold, now=now, client=client, selection=selection, progress=progress
        )
    finally:
        if owned:
            await client.close()
    if not specs:
        raise NoMatch(
            f"no workloads match {selection.describe()} in Prometheus at "
            f"{redact_url(settings.prometheus_url)} (no kube-state-metrics specs)"
        )
    recs, notes = recommend_all(specs, fold, settings, now=now)
    known = {f"{s.workload_id}/{c.name}" for s in specs for c in s.containers}
    orphans = sorted(set(fold.usage) - known)
    if orphans:
        log.debug(
            "%d container(s) with usage but no current spec skipped (e.g. %s)",
            len(orphans),
            orphans[0],
        )
    if fold.rejected:
        log.warning(
            "samples dropped: %s", ", ".join(f"{k}={v}" for k, v in sorted(fold.rejected.items()))
        )
    log.debug("%d workload(s), %d sample(s) read", len(recs), fold.samples)
    return render(recs, output, settings.prices, notes=notes, held=held_changes(specs))
