"""Every Prometheus metric the autopilot exports about itself, defined in one place.

Agents and adapters import the objects from here; the Grafana "FinOps Overview" dashboard and
the chart's ServiceMonitor depend on these names, so rename nothing without updating
``charts/kubefinops/dashboards/finops-overview.json``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
REPORTS_PENDING = Gauge(
    f"{_NS}_reports_pending", "Reports waiting for S3 to come back.", registry=REGISTRY
)

# --- the money and the decisions ---------------------------------------------------------------
_W = ["namespace", "kind", "workload", "container"]
REQUEST_CURRENT = Gauge(
    f"{_NS}_request_current",
    "Current request per container (cores or bytes).",
    [*_W, "resource"],
    registry=REGISTRY,
)
REQUEST_RECOMMENDED = Gauge(
    f"{_NS}_request_recommended",
    "Recommended request per container (cores or bytes).",
    [*_W, "resource"],
    registry=REGISTRY,
)
USAGE_P95 = Gauge(
    f"{_NS}_usage_p95",
    "History-wide P95 usage per container (cores or bytes).",
    [*_W, "resource"],
    registry=REGISTRY,
)
MONTHLY_COST_CURRENT = Gauge(
    f"{_NS}_monthly_cost_current",
    "Monthly cost of current requests per workload.",
    ["namespace", "kind", "workload"],
    registry=REGISTRY,
)
MONTHLY_COST_RECOMMENDED = Gauge(
    f"{_NS}_monthly_cost_recommended",
    "Monthly cost at the recommended requests per workload.",
    ["namespace", "kind", "workload"],
    registry=REGISTRY,
)
SAVINGS_REALISED = Counter(
    f"{_NS}_savings_realised_monthly_total",
    "Monthly savings of changes pushed to Git (sum of deltas applied).",
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
    for resource in ("cpu", "memory"):
        SAMPLES_INGESTED.labels(resource=resource)
    for outcome in ("ok", "retry", "error", "unavailable"):
        PROMETHEUS_QUERIES.labels(outcome=outcome)
    for outcome in VERIFICATION_OUTCOMES:
        for cause in REGRESSION_CAUSES if outcome in ("regressed", "reverted") else ("",):
            VERIFICATIONS.labels(outcome=outcome, cause=cause)
    for outcome in ("committed", "recommended", "failed"):
        REVERTS.labels(outcome=outcome)
