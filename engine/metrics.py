"""Every Prometheus metric the autopilot exports about itself, defined in one place.

Agents and adapters import the objects from here; the Grafana "FinOps Overview" dashboard and
the chart's ServiceMonitor depend on these names, so rename nothing without updating
``charts/kubefinops/dashboards/finops-overview.json``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine import memory
from engine.core.model import Recommendation

REGISTRY = CollectorRegistry(auto_describe=True)

_NS = "kubefinops"

# --- pipeline health ---------------------------------------------------------------------------
RECORDS_PROCESSED = Counter(
    f"{_NS}_records_processed_total", "Records handled by an agent.", ["agent"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    f"{_NS}_dead_letters_total",
    "Records parked on the dead-letter topic.",
    ["agent", "reason"],
    registry=REGISTRY,
)
PRODUCER_BUFFER_WAITS = Counter(
    f"{_NS}_producer_buffer_waits",
    "Times a stream waited for Faust's producer buffer (table writes faster than the changelog "
    "is sent): back-pressure, nothing lost",
    registry=REGISTRY,
)
AGENT_FAILURES = Counter(
    f"{_NS}_agent_failures_total",
    "Records whose handler raised: dead-lettered by the guard, the agent went on.",
    ["agent", "exception"],
    registry=REGISTRY,
)
HISTORY_WRITES = Counter(
    f"{_NS}_history_writes_total",
    "MongoDB history writes of the outbox writer, by outcome (ok, retry).",
    ["outcome"],
    registry=REGISTRY,
)
SAMPLES_INGESTED = Counter(
    f"{_NS}_samples_ingested_total",
    "Usage samples merged into table state.",
    ["resource"],
    registry=REGISTRY,
)
SAMPLES_DUPLICATE = Counter(
    f"{_NS}_samples_duplicate_total",
    "Samples skipped because their chunk was already ingested (re-delivery).",
    registry=REGISTRY,
)
SAMPLES_LATE = Counter(
    f"{_NS}_samples_late_total",
    "Samples of late chunks (older than the newest stored, never stored before) that were stored.",
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    f"{_NS}_cycle_duration_seconds",
    "Wall time of one cycle of a periodic agent.",
    ["agent"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
CYCLE_FAILURES = Counter(
    f"{_NS}_cycle_failures_total",
    "Cycles skipped after retries failed.",
    ["agent", "dependency"],
    registry=REGISTRY,
)
PROMETHEUS_SAMPLES_READ = Counter(
    f"{_NS}_prometheus_samples_read_total",
    "Samples read from Prometheus by the collector.",
    registry=REGISTRY,
)
PROMETHEUS_QUERIES = Counter(
    f"{_NS}_prometheus_queries_total",
    "Range/instant queries sent to Prometheus.",
    ["outcome"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    f"{_NS}_consumer_lag_messages",
    "Messages behind the end of a topic partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
GIT_PUSHES = Counter(
    f"{_NS}_git_pushes_total", "Pushes to the GitOps remote.", ["outcome"], registry=REGISTRY
)
REPORTS_WRITTEN = Counter(
    f"{_NS}_reports_written_total", "Report objects written to S3.", ["outcome"], registry=REGISTRY
)
USAGE_CACHE_BYTES = Gauge(
    f"{_NS}_usage_cache_bytes",
    "Estimated bytes of decoded usage state held in memory (bounded by usage_cache_bytes).",
    registry=REGISTRY,
)
USAGE_CACHE_EVICTIONS = Counter(
    f"{_NS}_usage_cache_evictions_total",
    "Decoded usage states dropped from memory (decoded again from the table when needed).",
    registry=REGISTRY,
)
REPORTS_PENDING = Gauge(
    f"{_NS}_reports_pending", "Reports waiting for S3 to come back.", registry=REGISTRY
)

# --- the money and the decisions ---------------------------------------------------------------
# Per-workload series exist only for the top ``metrics_top_workloads`` workloads by pending
# savings (see FleetGauges): a scrape of 10,000 workloads' series was 16.7 MiB and ~2 s of CPU.
# Totals come from the per-namespace series, which cover every workload.
_W = ["namespace", "kind", "workload", "container"]
REQUEST_CURRENT = Gauge(
    f"{_NS}_request_current",
    "Current request per container (cores or bytes); top workloads by pending savings only.",
    [*_W, "resource"],
    registry=REGISTRY,
)
REQUEST_RECOMMENDED = Gauge(
    f"{_NS}_request_recommended",
    "Recommended request per container (cores or bytes); top workloads by pending savings only.",
    [*_W, "resource"],
    registry=REGISTRY,
)
USAGE_P95 = Gauge(
    f"{_NS}_usage_p95",
    "History-wide P95 usage per container (cores or bytes); top workloads only.",
    [*_W, "resource"],
    registry=REGISTRY,
)
MONTHLY_COST_CURRENT = Gauge(
    f"{_NS}_monthly_cost_current",
    "Monthly cost of current requests per workload; top workloads by pending savings only.",
    ["namespace", "kind", "workload"],
    registry=REGISTRY,
)
MONTHLY_COST_RECOMMENDED = Gauge(
    f"{_NS}_monthly_cost_recommended",
    "Monthly cost at the recommended requests per workload; top workloads only.",
    ["namespace", "kind", "workload"],
    registry=REGISTRY,
)
NAMESPACE_COST_CURRENT = Gauge(
    f"{_NS}_namespace_monthly_cost_current",
    "Monthly cost of current requests, all workloads of a namespace this worker owns.",
    ["namespace"],
    registry=REGISTRY,
)
NAMESPACE_COST_RECOMMENDED = Gauge(
    f"{_NS}_namespace_monthly_cost_recommended",
    "Monthly cost at the recommended requests, all workloads of a namespace this worker owns.",
    ["namespace"],
    registry=REGISTRY,
)
NAMESPACE_COST_TARGET = Gauge(
    f"{_NS}_namespace_monthly_cost_target",
    "Monthly cost at the recommendations' targets (where the max step per change would lead), "
    "all workloads of a namespace this worker owns; _recommended is the next step's.",
    ["namespace"],
    registry=REGISTRY,
)
NAMESPACE_REQUEST_RECOMMENDED = Gauge(
    f"{_NS}_namespace_request_recommended",
    "Recommended requests (cores or bytes, per pod), summed over a namespace's containers.",
    ["namespace", "resource"],
    registry=REGISTRY,
)
WORKLOADS_TRACKED = Gauge(
    f"{_NS}_workloads_tracked",
    "Workloads recommended on this worker (all), and those with per-workload series.",
    ["scope"],
    registry=REGISTRY,
)
SAVINGS_REALISED = Counter(
    f"{_NS}_savings_realised_monthly_total",
    "Monthly savings of changes pushed to Git (sum of deltas applied).",
    registry=REGISTRY,
)
RECOMMENDATIONS_PUBLISHED = Counter(
    f"{_NS}_recommendations_published_total",
    "Recommendations made, by whether they went on the recommendations topic (published: changed "
    "or due for a refresh; unchanged: decided and archived, not published again).",
    ["outcome"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    f"{_NS}_decisions_total",
    "Decisions by outcome and the guardrail that decided.",
    ["action", "guardrail"],
    registry=REGISTRY,
)


# --- verified apply (docs/verification.md) -------------------------------------------------------
VERIFICATIONS = Counter(
    f"{_NS}_verifications_total",
    "Verification outcomes of pushed changes (live, not-synced, healthy, regressed, reverted, "
    "superseded); cause names the first regression signal.",
    ["outcome", "cause"],
    registry=REGISTRY,
)
VERIFICATIONS_WATCHING = Gauge(
    f"{_NS}_verifications_watching",
    "Pushed changes being watched (pending or live).",
    registry=REGISTRY,
)
REVERTS = Counter(
    f"{_NS}_reverts_total",
    "Reverts of regressed changes: committed through Git, recommended only (policy not in "
    "autopilot) or failed.",
    ["outcome"],
    registry=REGISTRY,
)
VERIFICATION_OUTCOMES = ("live", "not-synced", "healthy", "regressed", "reverted", "superseded")
REGRESSION_CAUSES = ("oom", "restarts", "throttling", "readiness", "slo")


def init_series(agents: tuple[str, ...]) -> None:
    """Create the known label combinations at zero, so dashboards show 0 instead of "no data"
    before the first failure (a rate over a series that does not exist yet is empty)."""
    for outcome in ("ok", "rejected", "error"):
        GIT_PUSHES.labels(outcome=outcome)
    for outcome in ("written", "queued", "flushed", "retry", "failed"):
        REPORTS_WRITTEN.labels(outcome=outcome)
    for agent, dependency in (("collector", "prometheus"), ("executor", "git"), ("reporter", "s3")):
        CYCLE_FAILURES.labels(agent=agent, dependency=dependency)
    for agent in agents:
        RECORDS_PROCESSED.labels(agent=agent)
    for outcome in ("ok", "retry"):
        HISTORY_WRITES.labels(outcome=outcome)
    for resource in ("cpu", "memory"):
        SAMPLES_INGESTED.labels(resource=resource)
    for outcome in ("ok", "retry", "error", "unavailable"):
        PROMETHEUS_QUERIES.labels(outcome=outcome)
    for scope in ("all", "series"):
        WORKLOADS_TRACKED.labels(scope=scope)
    for outcome in VERIFICATION_OUTCOMES:
        for cause in REGRESSION_CAUSES if outcome in ("regressed", "reverted") else ("",):
            VERIFICATIONS.labels(outcome=outcome, cause=cause)
    for outcome in ("committed", "recommended", "failed"):
        REVERTS.labels(outcome=outcome)
    for outcome in ("published", "unchanged"):
        RECOMMENDATIONS_PUBLISHED.labels(outcome=outcome)


@dataclass(frozen=True)
class _Entry:
    namespace: str
    kind: str
    name: str
    current: float
    recommended: float  # at the next step
    target: float  # at the target (the step, when the step reaches it)
    # (container, resource, current request, recommended request, p95)
    rows: tuple[tuple[str, str, float | None, float | None, float | None], ...]
    seen_at: float

    @property
    def pending(self) -> float:
        return abs(self.current - self.recommended)


# the families FleetGauges.refresh rewrites on every scrape: per namespace, per workload
_NAMESPACE_FAMILIES = (
    NAMESPACE_COST_CURRENT, NAMESPACE_COST_RECOMMENDED, NAMESPACE_COST_TARGET,
    NAMESPACE_REQUEST_RECOMMENDED,
)  # fmt: skip
_WORKLOAD_FAMILIES = (
    MONTHLY_COST_CURRENT, MONTHLY_COST_RECOMMENDED, REQUEST_CURRENT, REQUEST_RECOMMENDED, USAGE_P95,
)  # fmt: skip


class FleetGauges:
    """The money and request gauges of every workload this worker recommends, exported bounded.

    ``observe`` keeps one small entry per workload (the latest recommendation's numbers) and the
    per-namespace totals; ``refresh`` (called before a scrape) re-creates the per-workload series
    for the ``top`` workloads by pending savings only, and drops entries not refreshed within
    ``stale_seconds`` (a workload deleted, or its partition moved to another worker), so the
    scrape size is bounded by ``top`` whatever the fleet size.  Thread-safe: a scrape may run in
    a thread while the event loop observes.
    """

    def __init__(self, top: int = 100, stale_seconds: float = 3 * 3600.0) -> None:
        self.top = top
        self.stale_seconds = stale_seconds
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, rec: Recommendation, now: float) -> None:
        rows = []
        for c in rec.containers:
            for res, cur, new in (
                ("cpu", c.current.requests.cpu, c.cpu_request),
                ("memory", c.current.requests.memory, c.memory_request),
            ):
                rows.append((c.name, res, cur, new, c.usage.get(res, {}).get("p95")))
        entry = _Entry(
            rec.namespace,
            rec.kind,
            rec.name,
            rec.savings.current_monthly,
            rec.savings.recommended_monthly,
            (rec.target_savings or rec.savings).recommended_monthly,
            tuple(rows),
            now,
        )
        with self._lock:
            self._entries[rec.workload_id] = entry

    def refresh(self, now: float) -> None:
        with self._lock:
            stale = [k for k, e in self._entries.items() if now - e.seen_at > self.stale_seconds]
            for k in stale:
                del self._entries[k]
            entries = list(self._entries.items())
        cost_cur: dict[str, float] = {}
        cost_rec: dict[str, float] = {}
        cost_target: dict[str, float] = {}
        req_rec: dict[tuple[str, str], float] = {}
        for _, e in entries:
            cost_cur[e.namespace] = cost_cur.get(e.namespace, 0.0) + e.current
            cost_rec[e.namespace] = cost_rec.get(e.namespace, 0.0) + e.recommended
            cost_target[e.namespace] = cost_target.get(e.namespace, 0.0) + e.target
            for _, res, _, new, _ in e.rows:
                if new is not None:
                    req_rec[e.namespace, res] = req_rec.get((e.namespace, res), 0.0) + new
        top = heapq.nsmallest(self.top, entries, key=lambda kv: (-kv[1].pending, kv[0]))
        for family in _NAMESPACE_FAMILIES:
            family.clear()
        for ns, v in cost_cur.items():
            NAMESPACE_COST_CURRENT.labels(ns).set(v)
        for ns, v in cost_rec.items():
            NAMESPACE_COST_RECOMMENDED.labels(ns).set(v)
        for ns, v in cost_target.items():
            NAMESPACE_COST_TARGET.labels(ns).set(v)
        for (ns, res), v in req_rec.items():
            NAMESPACE_REQUEST_RECOMMENDED.labels(ns, res).set(v)
        for family in _WORKLOAD_FAMILIES:
            family.clear()
        for _, e in top:
            w = (e.namespace, e.kind, e.name)
            MONTHLY_COST_CURRENT.labels(*w).set(e.current)
            MONTHLY_COST_RECOMMENDED.labels(*w).set(e.recommended)
            for cname, res, cur, new, p95 in e.rows:
                labels = (*w, cname, res)
                if cur is not None:
                    REQUEST_CURRENT.labels(*labels).set(cur)
                if new is not None:
                    REQUEST_RECOMMENDED.labels(*labels).set(new)
                if p95 is not None:
                    USAGE_P95.labels(*labels).set(p95)
        WORKLOADS_TRACKED.labels("all").set(len(entries))
        WORKLOADS_TRACKED.labels("series").set(len(top))


FLEET = FleetGauges()


class GcCollector(Collector):
    """The garbage collector's pauses (``memory.GC_PAUSES``), read at scrape time: the rate of
    ``kubefinops_gc_pause_seconds_total`` is the share of time the worker's loop stood still
    for collections."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pauses = memory.GC_PAUSES
        seconds = CounterMetricFamily(
            f"{_NS}_gc_pause_seconds",
            "Time spent in garbage collections, by generation (2: full)",
            labels=["generation"],
        )
        count = CounterMetricFamily(
            f"{_NS}_gc_collections", "Garbage collections, by generation", labels=["generation"]
        )
        longest = GaugeMetricFamily(
            f"{_NS}_gc_pause_max_seconds",
            "The longest garbage collection since start, by generation",
            labels=["generation"],
        )
        for gen in range(3):
            seconds.add_metric([str(gen)], pauses.seconds[gen])
            count.add_metric([str(gen)], pauses.collections[gen])
            longest.add_metric([str(gen)], pauses.max_seconds[gen])
        yield from (seconds, count, longest)


REGISTRY.register(GcCollector())
_SCRAPE_LOCK = threading.Lock()
# a scrape restricted to other series skips FleetGauges.refresh
_FLEET_NAMES = frozenset(
    m.name
    for family in (*_NAMESPACE_FAMILIES, *_WORKLOAD_FAMILIES, WORKLOADS_TRACKED)
    for m in family.describe()
)


def scrape(now: float | None = None, names: Iterable[str] | None = None) -> bytes:
    """The exposition text, with the fleet's bounded series refreshed first.

    ``names``: only these series (sample names, as prometheus-client's own ``name[]`` query
    parameter: ``kubefinops_samples_ingested_total``, not the family's name) — a cheap scrape
    for something polling one counter; the fleet's series are refreshed only when asked for.
    Blocking (CPU): the web endpoint runs it in a thread so a scrape never stalls the loop.
    """
    wanted = None if names is None else frozenset(names)
    with _SCRAPE_LOCK:
        if wanted is None or wanted & _FLEET_NAMES:
            FLEET.refresh(time.time() if now is None else now)
        if wanted is None:
            return generate_latest(REGISTRY)
        return generate_latest(REGISTRY.restricted_registry(wanted))
