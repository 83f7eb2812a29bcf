"""The collector's pure half: what to ask Prometheus, and what its answers mean.

* :func:`plan_chunks` — the incremental plan: a first run backfills ``history`` in chunks, later
  runs ask only ``(watermark, now - scrape_lag]``.  Chunk ends are multiples of ``step`` (and
  chunk boundaries multiples of ``chunk``), so re-collecting a chunk gives the same batch.
* :func:`parse_result` — a decoded ``/api/v1/query[_range]`` body into :class:`Series`;
  anything malformed raises :class:`MalformedResponse` (never ``KeyError``).
* :class:`Owners` — pod -> ReplicaSet -> Deployment, Job -> CronJob, StatefulSet, DaemonSet,
  bare pod.
* :func:`build_chunks` — one columnar :class:`MetricsChunk` per workload per chunk (what the
  collector sends): every container's series on the query's time grid, one row per pod;
  :func:`split_chunk` keeps each record under Kafka's message size.
* :func:`build_batches` — one :class:`MetricsBatch` per workload container per chunk, holding
  every pod's samples under ``samples["cpu"]`` (cores) and ``samples["memory"]`` (bytes): the
  format before chunks, still used in-process by the backtest; :func:`build_batch_arrays` is
  the same with numpy arrays (the one-shot's path, read by :func:`parse_matrix_body`).
* :func:`build_specs` — one :class:`WorkloadSpec` per workload from kube-state-metrics series.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from engine.core.bounds import MAX_RECORD_BYTES
from engine.core.model import (
    RESOURCES,
    ContainerSpec,
    HpaSpec,
    MetricsBatch,
    MetricsChunk,
    ResourcePair,
    WorkloadSpec,
)
from engine.errors import PermanentError

FloatArray = npt.NDArray[np.float64]
MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses range queries with more points per series
SKIPPED_CONTAINERS = frozenset({"", "POD"})
_JVM = re.compile(
    r"java|jdk|jre|jvm|temurin|corretto|zulu|graalvm|tomcat|jetty|wildfly|"
    r"spring|kafka|elasticsearch|opensearch|zookeeper|cassandra|keycloak",
    re.I,
)


# kube-state-metrics sanitises label/annotation names ("kubefinops.io/exclude" arrives as
# annotation_kubefinops_io_exclude); the ones the autopilot itself reads are mapped back.
KNOWN_KEYS = {"kubefinops_io_exclude": "kubefinops.io/exclude"}


class MalformedResponse(PermanentError):
    """Prometheus answered something that is not the documented JSON shape."""


# --- the plan -----------------------------------------------------------------------------------
def _floor(value: float, unit: int) -> float:
    return float(math.floor(value / unit) * unit)


def plan_chunks(
    watermark: float | None,
    now: float,
    *,
    scrape_lag: float,
    history: float,
    chunk: int,
    step: int,
) -> list[tuple[float, float]]:
    """Chunks ``(start, end]`` still to collect; ``[]`` when up to date.

    The caller advances the watermark to a chunk's ``end`` only after that chunk was obtained,
    so a failure leaves the rest of the plan to the next cycle.  A watermark older than
    ``history`` is clamped: nothing older than the history window is ever asked for.
    """
    if step <= 0 or chunk <= 0 or history <= 0:
        raise ValueError("step, chunk and history must be positive")
    chunk = max(step, min(chunk, step * MAX_POINTS_PER_SERIES) // step * step)
    horizon = _floor(now - scrape_lag, step)
    oldest = _floor(horizon - history, step)
    start = oldest if watermark is None else max(float(watermark), oldest)
    chunks: list[tuple[float, float]] = []
    while start < horizon:
        end = min(horizon, _floor(start, chunk) + chunk)
        chunks.append((start, end))
        start = end
    return chunks


# Backfill chunk lengths, longest first: each divides a day, so chunk boundaries (multiples of
# the chunk in absolute time) fall on UTC midnights whatever length a cycle picks.
CHUNK_CHOICES = (86_400, 43_200, 21_600, 14_400, 10_800, 7_200, 3_600, 1_800, 900)


def chunk_for(series: int | None, *, longest: int, budget: int, step: int) -> int:
    """The chunk length a cycle asks Prometheus for: the longest of :data:`CHUNK_CHOICES` up
    to ``longest`` (``prometheus_chunk_seconds``; itself when it is not one of them) whose range
    query answers at most ``budget`` points (``series`` x points per series), else the shortest.

    Why: the collector's range queries are cluster-wide, so an answer holds ``series x points``
    samples and the collector holds it whole while it builds the records (~70 bytes a point,
    body included).  Longer chunks mean fewer, larger records, which the aggregator ingests
    faster (a day per record: ~2x the samples per second of 6 hours); the budget keeps the
    answer, and the collector's memory, bounded at any fleet size.  ``series`` None or 0
    (unknown, an empty cluster): ``longest``."""
    if step <= 0 or longest <= 0 or budget <= 0:
        raise ValueError("step, longest and budget must be positive")
    candidates = [longest, *(c for c in CHUNK_CHOICES if c < longest)]
    if not series or series <= 0:
        return longest
    for chunk in candidates:
        if series * max(1, chunk // step) <= budget:
            return chunk
    return candidates[-1]


# The bytes of a range query's JSON answer a point may take before the answer counts as over
# the point budget (``answer_bytes_cap``).  Prometheus writes ~36-37 bytes a point, labels
# included (``bench/bench_collector_memory.py``: 97.7 MiB for 2,000 series x 1,440 points,
# 42.3 MiB for 20,000 x 60); 48 leaves ~30 % for longer label values, so an answer the plan
# sized right is never refused.
ANSWER_BYTES_PER_POINT = 48


def answer_bytes_cap(budget: int) -> int:
    """The most bytes the collector reads of one answer planned within ``budget`` points.

    Why: the plan sizes chunks from a *count* of series (:func:`series_count_expr`), and an
    answer can hold more points than the count says: workloads scaled up earlier in the chunk
    than the count saw, series of pods that came and went.  Read without a bound, such an answer
    is held whole while it becomes records, and a leader killed for its memory retries the same
    chunk after its restart: collection stops for good.  Over the cap, the answer is refused
    while it is read and the collector asks for the two halves of the chunk instead
    (:func:`split_range`)."""
    return max(1, budget) * ANSWER_BYTES_PER_POINT


def split_range(start: float, end: float, step: int) -> tuple[tuple[float, float], ...] | None:
    """``(start, end]`` in two halves on the step grid (``(start, mid]``, ``(mid, end]``), or None
    when a half would be shorter than the shortest chunk (:data:`CHUNK_CHOICES`, 15 minutes)
    or a step: an answer over the budget for that little time is not a miscount but a budget
    too small for the shard.  Halves of a chunk that divides a day still fall within one day,
    so the records stay one window each."""
    span = end - start
    if step <= 0 or span < 2 * max(step, CHUNK_CHOICES[-1]):
        return None
    mid = start + (span // 2 // step) * step
    if not start < mid < end:
        return None
    return ((start, mid), (mid, end))


# A Kubernetes namespace name (an RFC 1123 DNS label): safe in a PromQL regex as it is.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class QueryPlan:
    """How a cycle asks: chunks of ``chunk`` seconds, each asked once per shard (a label
    matcher added to the range queries; ``""``: the whole cluster in one query)."""

    chunk: int
    shards: tuple[str, ...] = ("",)


def plan_queries(series: Mapping[str, int], *, longest: int, budget: int, step: int) -> QueryPlan:
    """The chunk length and the namespace shards of a cycle, from the series per namespace.

    The whole cluster in one query when that already gets the longest chunk :func:`chunk_for`
    allows (or sharding would not make it longer).  Otherwise the namespaces are packed, largest
    first, into shards of at most ``budget`` points at the chunk the largest namespace alone
    allows: every answer stays within the budget and the records stay a day long however many
    workloads the cluster has, as long as no namespace is larger than ~2,000 series.  The last
    shard is every namespace *not* named in the others (``namespace!~"..."``): one created
    after the count, or missing from it, is still collected.  A namespace name that is not a
    Kubernetes name (not from kube-state-metrics' cluster) keeps the one-query plan."""
    total = sum(series.values())
    whole = chunk_for(total, longest=longest, budget=budget, step=step)
    if whole == longest or not series:
        return QueryPlan(whole)
    chunk = chunk_for(max(series.values()), longest=longest, budget=budget, step=step)
    if chunk <= whole or not all(_NAMESPACE.fullmatch(ns) for ns in series):
        return QueryPlan(whole)
    capacity = max(1, budget // max(1, chunk // step))
    shards: list[tuple[int, list[str]]] = []  # (series, namespaces)
    for ns, count in sorted(series.items(), key=lambda item: (-item[1], item[0])):
        for i, (load, names) in enumerate(shards):
            if load + count <= capacity:
                shards[i] = (load + count, [*names, ns])
                break
        else:
            shards.append((count, [ns]))
    if len(shards) < 2:
        return QueryPlan(whole)
    named = [sorted(names) for _, names in shards[:-1]]
    matchers = [f'namespace=~"{"|".join(names)}"' for names in named]
    matchers.append(f'namespace!~"{"|".join(sorted(ns for names in named for ns in names))}"')
    return QueryPlan(chunk, tuple(matchers))


def first_eval_time(start: float, step: int) -> float:
    """First step-aligned evaluation time strictly after ``start`` (chunks are left-open)."""
    return _floor(start, step) + step


def eval_start(start: float, end: float, step: int) -> float | None:
    """The first step-aligned evaluation time of chunk ``(start, end]``, or None when the chunk
    holds none: a chunk shorter than ``step`` that does not cross a multiple of it (e.g. the
    window's last when ``now`` falls just past a boundary) has nothing to ask for, and
    Prometheus refuses a range query whose end is before its start."""
    first = first_eval_time(start, step)
    return first if first <= end else None


def cpu_expr(rate_window: int, matchers: str = "") -> str:
    sel = 'container!="",container!="POD"' + (f",{matchers}" if matchers else "")
    return (
        "sum by (namespace, pod, container) (rate(container_cpu_usage_seconds_total"
        f"{{{sel}}}[{rate_window}s]))"
    )


def memory_expr(step: int, matchers: str = "") -> str:
    """Max working set per step window, so the max over a chunk is the max of the raw samples
    (``matchers``: more label matchers, e.g. the one-shot's selection)."""
    sel = 'container!="",container!="POD"' + (f",{matchers}" if matchers else "")
    return (
        "max by (namespace, pod, container) (max_over_time(container_memory_working_set_bytes"
        f"{{{sel}}}[{step}s]))"
    )


def series_count_expr() -> str:
    """The series :func:`memory_expr` answers at one instant, per namespace, at its highest of
    the last day's hours (sizes the chunks and the shards: :func:`plan_queries`).

    The peak, not the count at the query's instant: a fleet counted at its nightly low (scaled
    in by HPAs, batch pods gone) answers a day-long query with its daytime series too, and the
    plan would be that much over the point budget.  24 instant evaluations of the count
    (a subquery at 1 h resolution), each reading one sample per series: cheap for Prometheus.
    What the peak still misses is caught while the answer is read (:func:`answer_bytes_cap`)."""
    return (
        "max_over_time((count by (namespace) (max by (namespace, pod, container) "
        '(container_memory_working_set_bytes{container!="",container!="POD"})))[1d:1h])'
    )


OWNER_METRICS = ("kube_pod_owner", "kube_replicaset_owner", "kube_job_owner")
SPEC_METRICS = (
    *OWNER_METRICS,
    "kube_pod_container_resource_requests",
    "kube_pod_container_resource_limits",
    "kube_pod_container_info",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_last_terminated_reason",
    "kube_pod_container_status_last_terminated_timestamp",
    "kube_deployment_spec_replicas",
    "kube_statefulset_replicas",
    "kube_daemonset_status_desired_number_scheduled",
    *(
        f"kube_{k}_{what}"
        for k in ("deployment", "statefulset", "daemonset")
        for what in ("labels", "annotations")
    ),
    "kube_horizontalpodautoscaler_info",
    "kube_horizontalpodautoscaler_spec_target_metric",
    "kube_horizontalpodautoscaler_spec_min_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
)


# The labels build_specs reads of each spec metric (None: every label, the label_* and
# annotation_* of the labels/annotations metrics); everything else a series carries (the scrape
# target's container/endpoint/instance/job/service, uid, node, image ids) is not asked for.
_POD = ("namespace", "pod", "container")
_OWNER = ("owner_kind", "owner_name", "owner_is_controller")
_HPA = ("namespace", "horizontalpodautoscaler")
SPEC_LABELS: dict[str, tuple[str, ...] | None] = {
    "kube_pod_owner": ("namespace", "pod", *_OWNER),
    "kube_replicaset_owner": ("namespace", "replicaset", *_OWNER),
    "kube_job_owner": ("namespace", "job_name", *_OWNER),
    "kube_pod_container_resource_requests": (*_POD, "resource", "unit"),
    "kube_pod_container_resource_limits": (*_POD, "resource", "unit"),
    "kube_pod_container_info": (*_POD, "image"),
    "kube_pod_container_status_restarts_total": _POD,
    "kube_pod_container_status_last_terminated_reason": (*_POD, "reason"),
    "kube_pod_container_status_last_terminated_timestamp": _POD,
    "kube_deployment_spec_replicas": ("namespace", "deployment"),
    "kube_statefulset_replicas": ("namespace", "statefulset"),
    "kube_daemonset_status_desired_number_scheduled": ("namespace", "daemonset"),
    **{
        f"kube_{k}_{what}": None
        for k in ("deployment", "statefulset", "daemonset")
        for what in ("labels", "annotations")
    },
    "kube_horizontalpodautoscaler_info": (*_HPA, "scaletargetref_kind", "scaletargetref_name"),
    "kube_horizontalpodautoscaler_spec_target_metric": (*_HPA, "metric_name"),
    "kube_horizontalpodautoscaler_spec_min_replicas": _HPA,
    "kube_horizontalpodautoscaler_spec_max_replicas": _HPA,
}
assert set(SPEC_LABELS) == set(SPEC_METRICS)


def spec_queries(matchers: str = "") -> list[tuple[str, str]]:
    """``(metric, query)`` for every spec metric: what :func:`spec_expr` selects, one metric at a
    time and with only the labels :func:`build_specs` reads (``max by``: the same values, and
    a series scraped twice, e.g. from two kube-state-metrics replicas, counted once).  The
    ReplicaSet owners only of ReplicaSets that own a pod now: a Deployment keeps its last 10
    ReplicaSets (``revisionHistoryLimit``), so ~10 of every 11 are of no use to a spec.

    Why: :func:`spec_expr` answers every series with its ~12 labels in one body; parsed at
    once that was ~6 KB a series, 36 a workload (``bench/bench_collector_memory.py --specs``):
    ~220 MiB and ~3 s of CPU at 1,000 workloads, ~2 GiB extrapolated at 10,000, in the
    leader, every hour.  Asked this way, one metric's answer is held at a time, each with a
    handful of labels."""
    return [(name, lean_expr(name, matchers)) for name in SPEC_LABELS]


def lean_expr(metric: str, matchers: str = "", window: int | None = None) -> str:
    """One kube-state-metrics metric with only the labels a spec or an owner reads
    (:data:`SPEC_LABELS`; every label for the labels/annotations metrics), at an instant or,
    with ``window``, its last value over the window (``last_over_time``: pods gone by its
    end); ``matchers``: one shard's namespaces.  ReplicaSet owners only of ReplicaSets that
    own a pod then, the other ~10 revisions a Deployment keeps being of no use."""

    def picked(selector: str) -> str:
        return f"last_over_time({selector}[{window}s])" if window is not None else selector

    labels = SPEC_LABELS[metric]
    sel = picked(f"{metric}{{{matchers}}}" if matchers else metric)
    if labels is None:
        return sel
    expr = f"max by ({', '.join(labels)}) ({sel})"
    if metric == "kube_replicaset_owner":
        pods = 'kube_pod_owner{owner_kind="ReplicaSet"' + (f",{matchers}" if matchers else "") + "}"
        expr += (
            " and on (namespace, replicaset) "
            f'label_replace({picked(pods)}, "replicaset", "$1", "owner_name", "(.+)")'
        )
    return expr


def spec_expr(matchers: str = "") -> str:
    """One instant selector for every kube-state-metrics series a spec needs (``matchers``:
    more label matchers, e.g. a namespace)."""
    return (
        '{__name__=~"' + "|".join(SPEC_METRICS) + '"' + (f",{matchers}" if matchers else "") + "}"
    )


def owner_expr(metric: str, window: int, matchers: str = "") -> str:
    """Owners of every pod seen during a chunk, including pods gone by its end, with only the
    labels :meth:`Owners.build` reads (:func:`lean_expr`; ``matchers``: the namespaces of one
    shard).  Why lean: as :func:`spec_queries` — at 10,000 workloads the three answers with
    every label were ~130,000 series, ~6 KB each once parsed, for every chunk."""
    return lean_expr(metric, matchers, window)


# --- parsing ------------------------------------------------------------------------------------
class Series(NamedTuple):
    labels: dict[str, str]
    values: list[tuple[float, float]]


def _value(pair: Any, where: str) -> tuple[float, float] | None:
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise MalformedResponse(f'{where}: a sample must be [timestamp, "value"]')
    try:
        ts, val = float(pair[0]), float(pair[1])
    except (TypeError, ValueError, OverflowError):
        raise MalformedResponse(f"{where}: sample {pair!r:.60} is not numeric") from None
    return (ts, val) if math.isfinite(val) and math.isfinite(ts) else None


def _values(raw: list[Any], where: str) -> list[tuple[float, float]]:
    """Finite ``(timestamp, value)`` pairs; numpy converts the ``"value"`` strings in C (a
    Python loop was 5 µs a point, most of a one-shot run), anything odd takes the checked path
    that names the bad sample."""
    if not raw:
        return []
    if len(raw) == 1:  # an instant vector's sample: no array for one pair (~3 µs each)
        one = _value(raw[0], where)
        return [one] if one is not None else []
    try:
        arr = np.array(raw, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2:
        return [v for v in (_value(p, where) for p in raw) if v is not None]
    keep = np.isfinite(arr).all(axis=1)
    return list(zip(arr[keep, 0].tolist(), arr[keep, 1].tolist(), strict=True))


class SeriesArrays(NamedTuple):
    """A matrix series as numpy arrays (timestamps, values): no Python object per sample."""

    labels: dict[str, str]
    ts: FloatArray
    values: FloatArray


def _items(doc: Any, expect: str) -> Iterator[tuple[str, dict[str, str], list[Any]]]:
    """``(where, labels, raw pairs)`` of each series of a decoded query body whose
    ``resultType`` must be ``expect``; anything malformed raises :class:`MalformedResponse`."""
    if not isinstance(doc, dict):
        raise MalformedResponse("response is not a JSON object")
    if doc.get("status") != "success":
        raise MalformedResponse(f"status is {doc.get('status')!r:.40}: {doc.get('error')!r:.200}")
    data = doc.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        raise MalformedResponse("data.result missing or not a list")
    if data.get("resultType") != expect:
        raise MalformedResponse(
            f"data.resultType is {data.get('resultType')!r:.40}, expected {expect!r}"
        )
    for i, item in enumerate(data["result"]):
        where = f"data.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            raise MalformedResponse(f"{where}.metric missing or not an object")
        labels = item["metric"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise MalformedResponse(f"{where}.metric has non-string labels")
        if expect == "matrix":
            raw = item.get("values")
            if not isinstance(raw, list):
                raise MalformedResponse(f"{where}.values missing or not a list")
        else:
            raw = [item.get("value")]
        yield where, dict(labels), raw


def parse_result(doc: Any, expect: str) -> list[Series]:
    """Series of a decoded query body whose ``resultType`` must be ``expect``.

    Non-finite values (NaN, ±Inf: e.g. a rate over a single sample) are dropped.
    """
    return [Series(labels, _values(raw, where)) for where, labels, raw in _items(doc, expect)]


_EMPTY = np.zeros(0, dtype=np.float64)


def _arrays(raw: list[Any], where: str) -> tuple[FloatArray, FloatArray]:
    """Finite ``(timestamps, values)`` of ``[[ts, "value"], ...]`` in two C-speed conversions
    (~0.3 µs a point against ~1.3 µs for a 2-D ``np.array`` of the pairs); anything odd takes
    the checked path that names the bad sample."""
    if not raw:
        return _EMPTY, _EMPTY
    try:
        if sum(map(len, raw)) != 2 * len(raw):
            raise ValueError("not pairs")
        ts = np.array([p[0] for p in raw], dtype=np.float64)
        values = np.array([p[1] for p in raw], dtype=np.float64)
    except (ValueError, TypeError, OverflowError, IndexError, KeyError):
        pairs = _values(raw, where)
        if not pairs:
            return _EMPTY, _EMPTY
        arr = np.asarray(pairs, dtype=np.float64)
        return arr[:, 0].copy(), arr[:, 1].copy()
    if ts.ndim != 1 or values.ndim != 1:
        raise MalformedResponse(f'{where}: a sample must be [timestamp, "value"]')
    keep = np.isfinite(ts) & np.isfinite(values)
    if keep.all():
        return ts, values
    return ts[keep], values[keep]


def parse_matrix(doc: Any) -> list[SeriesArrays]:
    """:func:`parse_result` of a matrix body, each series as numpy arrays."""
    return [
        SeriesArrays(labels, *_arrays(raw, where)) for where, labels, raw in _items(doc, "matrix")
    ]


_VALUES = b'"values":['


def _grid_times(flat: list[Any], grid: tuple[float, int] | None) -> FloatArray | None:
    """The timestamps of a series of ``flat`` ``[t0, v0, t1, v1, ...]`` when they are every
    point of a range query's grid (``grid``: its start and step) from the first to the last,
    computed instead of converted — in milliseconds, as Prometheus makes them, so each is the
    float its text parses to; None when a point is missing or off the grid."""
    if grid is None or len(flat) < 2:
        return None
    first, last = flat[0], flat[-2]
    if not isinstance(first, int | float) or not isinstance(last, int | float):
        return None
    try:
        start_ms, step_ms = round(grid[0] * 1000), int(grid[1]) * 1000
        first_ms, last_ms = round(first * 1000), round(last * 1000)
    except (OverflowError, ValueError):  # an infinite or NaN timestamp
        return None
    n = len(flat) // 2
    if (
        step_ms <= 0
        or first_ms / 1000 != first  # whole milliseconds, as Prometheus writes them
        or last_ms / 1000 != last
        or (first_ms - start_ms) % step_ms
        or last_ms - first_ms != (n - 1) * step_ms
    ):
        return None
    times: FloatArray = (first_ms + np.arange(n, dtype=np.int64) * step_ms) / 1000.0
    return times


def parse_matrix_body(
    body: bytes, loads: Callable[[bytes], Any], grid: tuple[float, int] | None = None
) -> list[SeriesArrays]:
    """:func:`parse_matrix` of a raw matrix body without a Python list per sample.

    Prometheus writes each series' samples as ``"values":[[ts,"v"],...]``, numbers only: those
    runs are cut out, stripped of brackets and quotes, and read as a flat JSON array of numbers
    (``loads``, orjson in production: ~0.1 µs a number, half numpy's text parser); the rest, the
    labels, is decoded on its own.  A body of any other layout, or numbers that are not plain
    (``"NaN"``, ``"+Inf"``), take the checked path (``loads`` then :func:`parse_matrix`), so the
    answer and the errors are the same.  ``grid`` (a range query's start and step): a series
    with every point of the grid between its first and last gets its timestamps computed, not
    converted (:func:`_grid_times`: ~60 % of the conversion), the same floats either way.
    """
    parts: list[bytes] = []
    runs: list[tuple[int, int]] = []  # where each run is: copied one series at a time below
    pos = 0
    while (at := body.find(_VALUES, pos)) >= 0:
        begin = at + len(_VALUES)
        if body[begin : begin + 1] == b"]":  # "values":[]
            stop = begin - 1
        else:
            stop = body.find(b"]]", begin)
            if stop < 0:
                break
        parts.append(body[pos:begin])
        runs.append((begin, stop + 1))
        pos = stop + 1
    if not runs:
        return parse_matrix(loads(body))
    parts.append(body[pos:])
    out = []
    try:
        skeleton = parse_matrix(loads(b"".join(parts)))
        if len(skeleton) != len(runs):
            raise MalformedResponse("layout")
        for series, (begin, stop) in zip(skeleton, runs, strict=True):
            # one series at a time: its text and a Python float per number live only that long
            run = body[begin:stop]
            numbers = run.translate(None, b'[]"')
            items = loads(b"[" + numbers + b"]")
            if not isinstance(items, list) or len(items) != (
                2 * (run.count(b"],[") + 1) if run else 0
            ):
                raise MalformedResponse("layout")
            times = _grid_times(items, grid)
            if times is None:
                flat = np.array(items, dtype=np.float64)
                if flat.ndim != 1:
                    raise MalformedResponse("layout")
                ts, values = flat[0::2], flat[1::2]
            else:
                ts, values = times, np.array(items[1::2], dtype=np.float64)
                if values.ndim != 1:
                    raise MalformedResponse("layout")
            keep = np.isfinite(ts) & np.isfinite(values)
            if not keep.all():
                ts, values = ts[keep], values[keep]
            out.append(SeriesArrays(series.labels, ts, values))
    except (MalformedResponse, ValueError, TypeError, OverflowError):
        return parse_matrix(loads(body))
    return out


def parse_series(doc: Any) -> list[Series]:
    """A decoded ``/api/v1/series`` body: label sets only (no values)."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise MalformedResponse("series response is not a success object")
    data = doc.get("data")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise MalformedResponse("series data is not a list of label sets")
    return [Series({str(k): str(v) for k, v in d.items()}, []) for d in data]


# --- owners -------------------------------------------------------------------------------------
@dataclass
class Owners:
    """Controller owners from ``kube_pod_owner``, ``kube_replicaset_owner``, ``kube_job_owner``."""

    pods: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    jobs: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        pod_owner: Iterable[Series],
        rs_owner: Iterable[Series] = (),
        job_owner: Iterable[Series] = (),
    ) -> Owners:
        owners = cls()
        for target, series, key_label in (
            (owners.pods, pod_owner, "pod"),
            (owners.replicasets, rs_owner, "replicaset"),
            (owners.jobs, job_owner, "job_name"),
        ):
            for s in series:
                lab = s.labels
                kind, name = lab.get("owner_kind", ""), lab.get("owner_name", "")
                key = (lab.get("namespace", ""), lab.get(key_label, ""))
                if not all(key) or kind in ("", "<none>") or not name:
                    continue
                if lab.get("owner_is_controller", "true") == "true" or key not in target:
                    target[key] = (kind, name)
        return owners

    def resolve(self, namespace: str, pod: str) -> tuple[str, str]:
        """(kind, name) of the top-level workload of a pod; a bare pod is its own workload."""
        kind, name = self.pods.get((namespace, pod), ("Pod", pod))
        if kind == "ReplicaSet":
            return self.replicasets.get((namespace, name), (kind, name))
        if kind == "Job":
            return self.jobs.get((namespace, name), (kind, name))
        return kind, name


# --- batches ------------------------------------------------------------------------------------
S = TypeVar("S", Series, SeriesArrays)


def owned_series(
    cpu: Iterable[S], memory: Iterable[S], owners: Owners
) -> Iterator[tuple[str, tuple[str, str, str, str], S]]:
    """Every usable series with its resource and owner ``(namespace, kind, workload,
    container)``: series without a namespace or pod, and the skipped containers (the pause
    container, cAdvisor's pod-level total), are left out — the one filter of every builder."""
    for resource, series_list in (("cpu", cpu), ("memory", memory)):
        for s in series_list:
            ns, pod, container = (s.labels.get(k, "") for k in ("namespace", "pod", "container"))
            if not ns or not pod or container in SKIPPED_CONTAINERS:
                continue
            kind, name = owners.resolve(ns, pod)
            yield resource, (ns, kind, name, container), s


def build_batches(
    cpu: Iterable[Series], memory: Iterable[Series], owners: Owners, start: float, end: float
) -> list[MetricsBatch]:
    """One batch per workload container for chunk ``(start, end]``, sorted by container id."""
    grouped: dict[tuple[str, str, str, str], dict[str, list[tuple[float, float]]]] = {}
    for resource, owner, s in owned_series(cpu, memory, owners):
        bucket = grouped.setdefault(owner, {"cpu": [], "memory": []})
        bucket[resource].extend((t, v) for t, v in s.values if start < t <= end)
    batches = (
        _batch(owner, start, end, {r: sorted(v) for r, v in samples.items()})
        for owner, samples in sorted(grouped.items())
    )
    return [b for b in batches if b is not None]


def _batch(
    owner: tuple[str, str, str, str],
    start: float,
    end: float,
    samples: dict[str, list[tuple[float, float]]],
) -> MetricsBatch | None:
    """The batch of one workload container ``(namespace, kind, workload, container)``, or None
    when its envelope is not valid (see :func:`_valid`)."""
    ns, kind, name, container = owner
    batch: MetricsBatch | None = _valid(
        MetricsBatch,
        namespace=ns,
        kind=kind,
        workload=name,
        container=container,
        start=start,
        end=end,
        samples=samples,
    )
    return batch


ContainerArrays = tuple[MetricsBatch, dict[str, tuple[FloatArray, FloatArray]]]


def build_batch_arrays(
    cpu: Iterable[SeriesArrays],
    memory: Iterable[SeriesArrays],
    owners: Owners,
    start: float,
    end: float,
) -> list[ContainerArrays]:
    """:func:`build_batches` with the samples as numpy arrays: per workload container, the
    batch's envelope (its ``samples`` empty) and every pod's ``(timestamps, values)`` in
    ``(start, end]`` per resource, sorted by time (the samples of one time in series order;
    :func:`build_batches` sorts them by value); sorted by container id."""
    grouped: dict[tuple[str, str, str, str], dict[str, list[SeriesArrays]]] = {}
    for resource, owner, series in owned_series(cpu, memory, owners):
        bucket = grouped.setdefault(owner, {"cpu": [], "memory": []})
        bucket[resource].append(series)
    out: list[ContainerArrays] = []
    for owner, by_resource in sorted(grouped.items()):
        envelope = _batch(owner, start, end, {})
        if envelope is None:
            continue
        arrays: dict[str, tuple[FloatArray, FloatArray]] = {}
        for resource, parts in by_resource.items():
            if not parts:
                arrays[resource] = (_EMPTY, _EMPTY)
                continue
            ts = np.concatenate([p.ts for p in parts]) if len(parts) > 1 else parts[0].ts
            val = np.concatenate([p.values for p in parts]) if len(parts) > 1 else parts[0].values
            inside = (ts > start) & (ts <= end)
            if not inside.all():
                ts, val = ts[inside], val[inside]
            if ts.size > 1 and (len(parts) > 1 or not (ts[1:] > ts[:-1]).all()):
                # by time only, stable: the pods' series are each in time order (a merge of
                # sorted runs, ~20 µs) and the state folds a time's samples in any order
                # (np.lexsort by time then value was ~250 µs a container)
                order = np.argsort(ts, kind="stable")
                ts, val = ts[order], val[order]
            arrays[resource] = (ts, val)
        out.append((envelope, arrays))
    return out


def _valid(model: Any, **fields: Any) -> Any:
    """``model(**fields)``, or None for what the wire schema refuses (a name Kubernetes would not
    allow, an absurd value): one odd series must not stop the collection of every other one."""
    try:
        return model(**fields)
    except ValidationError:
        return None


# --- columnar chunks ----------------------------------------------------------------------------
Pairs = list[tuple[float, float]]


def grid_rows(series: Iterable[Pairs], t0: float, step: float, n: int) -> np.ndarray:
    """Series of ``(t, v)`` pairs on the grid ``t0 + i * step`` (``i < n``) as rows of ``n``
    values, NaN where a series has no sample (``null`` on the wire).  A series holding one
    timestamp several times (several pods merged) takes a row per repetition.  Points off the
    grid or outside it raise :class:`ValueError` (Prometheus' range queries never give any)."""
    arrays = []
    for pairs in series:
        if pairs:
            arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
            arrays.append((arr[:, 0], arr[:, 1]))
    return grid_rows_of(arrays, t0, step, n)


def grid_rows_of(
    series: Iterable[tuple[FloatArray, FloatArray]], t0: float, step: float, n: int
) -> np.ndarray:
    """:func:`grid_rows` of series given as ``(timestamps, values)`` arrays (the collector's
    range answers, parsed without a Python object per sample)."""
    rows: list[np.ndarray] = []
    for ts, vals in series:
        if not ts.size:
            continue
        pos = (ts - t0) / step
        idx = np.rint(pos).astype(np.int64)
        if np.any(np.abs(pos - idx) > 1e-6) or idx.min() < 0 or idx.max() >= n:
            raise ValueError("a sample is not on the chunk's time grid")
        if idx.size == 1 or bool((idx[1:] > idx[:-1]).all()):
            # each grid point once and in order (one series of a range answer): one row, what
            # the general path below gives without sorting and ranking
            row = np.full(n, np.nan)
            row[idx] = vals
            rows.append(row)
            continue
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        # the k-th repetition of a grid point goes to the k-th row of this series
        first = np.r_[0, np.flatnonzero(np.diff(idx)) + 1]
        rank = np.arange(idx.size) - np.repeat(first, np.diff(np.r_[first, idx.size]))
        block = np.full((int(rank.max()) + 1, n), np.nan)
        block[rank, idx] = vals
        rows.extend(block)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), n)


def grid_of(start: float, end: float, step: int) -> tuple[float, int]:
    """``(t0, n)`` of a range query's grid over chunk ``(start, end]`` (see collect_chunk)."""
    t0 = first_eval_time(start, step)
    return t0, 0 if t0 > end else int((end - t0) // step) + 1


def _in_chunk(s: Series | SeriesArrays, start: float, end: float) -> tuple[FloatArray, FloatArray]:
    """A series' ``(timestamps, values)`` in ``(start, end]`` as arrays."""
    if isinstance(s, SeriesArrays):
        ts, vals = s.ts, s.values
    elif s.values:
        arr = np.asarray(s.values, dtype=np.float64).reshape(-1, 2)
        ts, vals = arr[:, 0], arr[:, 1]
    else:
        return _EMPTY, _EMPTY
    inside = (ts > start) & (ts <= end)
    return (ts, vals) if inside.all() else (ts[inside], vals[inside])


def build_chunks(
    cpu: Iterable[S],
    memory: Iterable[S],
    owners: Owners,
    start: float,
    end: float,
    step: int,
) -> list[MetricsChunk]:
    """One columnar record per workload for chunk ``(start, end]``, every container and pod on
    the query grid (one row per series), sorted by workload id; what the collector sends.  The
    series may be :class:`SeriesArrays` (what the collector reads) or :class:`Series`: the same
    records either way."""
    t0, n = grid_of(start, end, step)
    grouped: dict[tuple[str, str, str], dict[str, dict[str, list[tuple[FloatArray, FloatArray]]]]]
    grouped = {}
    for resource, (ns, kind, name, container), s in owned_series(cpu, memory, owners):
        by_res = grouped.setdefault((ns, kind, name), {}).setdefault(container, {})
        by_res.setdefault(resource, []).append(_in_chunk(s, start, end))
    out = []
    for (ns, kind, name), containers in sorted(grouped.items()):
        try:
            rows = {
                c: {r: grid_rows_of(res[r], t0, step, n) for r in RESOURCES if r in res}
                for c, res in sorted(containers.items())
            }
        except ValueError:
            continue  # off the grid: not Prometheus' range answer (see grid_rows)
        if (chunk := _chunk((ns, kind, name), (start, end), (t0, step, n), rows)) is not None:
            out.append(chunk)
    return out


def _chunk(
    workload: tuple[str, str, str],
    bounds: tuple[float, float],
    grid: tuple[float, float, int],
    containers: Mapping[str, Any],
    source: str = "prometheus",
) -> MetricsChunk | None:
    """The record of ``workload`` (namespace, kind, name) for chunk ``bounds`` on ``grid``
    (``t0``, ``step``, ``n``), or None for what the wire schema refuses (see :func:`_valid`)."""
    (ns, kind, name), (start, end), (t0, step, n) = workload, bounds, grid
    chunk: MetricsChunk | None = _valid(
        MetricsChunk,
        type="chunk",
        namespace=ns,
        kind=kind,
        workload=name,
        start=start,
        end=end,
        t0=t0,
        step=float(step),
        n=n,
        containers=containers,
        source=source,
    )
    return chunk


def chunks_from_batches(batches: Iterable[MetricsBatch]) -> list[MetricsChunk]:
    """The columnar records of per-container batches (one per workload and chunk): the grid is
    the coarsest one holding every timestamp of the workload's batches (whole seconds)."""
    grouped: dict[tuple[str, str, str, float, float], list[MetricsBatch]] = {}
    for b in batches:
        grouped.setdefault((b.namespace, b.kind, b.workload, b.start, b.end), []).append(b)
    out = []
    for (ns, kind, name, start, end), group in sorted(grouped.items()):
        times = np.asarray(
            [t for b in group for pairs in b.samples.values() for t, _ in pairs], dtype=np.float64
        )
        if times.size:
            t0 = float(times.min())
            offsets = np.unique(np.rint(times - t0).astype(np.int64))
            step = max(int(np.gcd.reduce(offsets)), 1) if offsets.size > 1 else 60
            n = int(np.rint((times.max() - t0) / step)) + 1
        else:
            t0, step, n = float(end), 60, 0
        containers = {
            b.container: {r: grid_rows([v], t0, step, n) for r, v in b.samples.items()}
            for b in group
        }
        chunk = _chunk((ns, kind, name), (start, end), (t0, step, n), containers, group[0].source)
        if chunk is not None:
            out.append(chunk)
    return out


def split_chunk(chunk: MetricsChunk, max_bytes: int = MAX_RECORD_BYTES) -> list[bytes]:
    """``chunk`` encoded as records of at most ``max_bytes`` (Kafka refuses larger messages):
    by containers first, then — for one container too large alone — by halves of its time
    range, each part a chunk of its own ``(start, end]`` (the aggregator's accepted ranges
    merge touching parts, so the whole is still remembered as one chunk)."""
    raw = chunk.encode()
    if len(raw) <= max_bytes:
        return [raw]
    names = list(chunk.containers)
    if len(names) > 1:
        half = len(names) // 2
        return [
            part
            for group in (names[:half], names[half:])
            for part in split_chunk(
                chunk.model_copy(update={"containers": {c: chunk.containers[c] for c in group}}),
                max_bytes,
            )
        ]
    if chunk.n < 2:
        return [raw]  # one grid point of one container: nothing left to split
    h = chunk.n // 2
    mid = chunk.t0 + (h - 1) * chunk.step
    first = {
        c: {r: [row[:h] for row in rows] for r, rows in res.items()}
        for c, res in chunk.containers.items()
    }
    second = {
        c: {r: [row[h:] for row in rows] for r, rows in res.items()}
        for c, res in chunk.containers.items()
    }
    return [
        *split_chunk(chunk.model_copy(update={"end": mid, "n": h, "containers": first}), max_bytes),
        *split_chunk(
            chunk.model_copy(
                update={
                    "start": mid,
                    "t0": mid + chunk.step,
                    "n": chunk.n - h,
                    "containers": second,
                }
            ),
            max_bytes,
        ),
    ]


def count_samples(batches: Iterable[MetricsBatch]) -> int:
    return sum(len(v) for b in batches for v in b.samples.values())


# --- specs --------------------------------------------------------------------------------------
@dataclass
class _Container:
    requests: dict[str, float] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    last_oom_at: float | None = None
    oom_limit: float | None = None
    is_jvm: bool = False


_UNITS = {"cpu": "core", "memory": "byte"}


WorkloadKey = tuple[str, str, str]  # namespace, kind, name
PodContainer = tuple[str, str, str]  # namespace, pod, container
ByName = Mapping[str, list[Series]]


def _last(s: Series) -> float:
    return s.values[-1][1] if s.values else 0.0


def _pod_resources(by_name: ByName) -> dict[PodContainer, dict[str, dict[str, float]]]:
    """Requests and limits per pod container (kube-state-metrics, units checked)."""
    pod_res: dict[PodContainer, dict[str, dict[str, float]]] = defaultdict(
        lambda: {"requests": {}, "limits": {}}
    )
    for kind in ("requests", "limits"):
        for s in by_name.get(f"kube_pod_container_resource_{kind}", []):
            lab, res = s.labels, s.labels.get("resource", "")
            if _UNITS.get(res) == lab.get("unit", _UNITS.get(res)):
                key = (lab.get("namespace", ""), lab.get("pod", ""), lab.get("container", ""))
                pod_res[key][kind][res] = _last(s)
    return pod_res


@dataclass
class _Estate:
    """Pod containers folded into their owning workloads (``Owners`` resolves pod -> owner)."""

    owners: Owners
    pods_of: dict[WorkloadKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    containers: dict[WorkloadKey, dict[str, _Container]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def slot(self, ns: str, pod: str, container: str) -> _Container | None:
        if not ns or not pod or container in SKIPPED_CONTAINERS:
            return None
        kind, name = self.owners.resolve(ns, pod)
        self.pods_of[(ns, kind, name)].add(pod)
        return self.containers[(ns, kind, name)].setdefault(container, _Container())

    def each(
        self, by_name: ByName, metric: str
    ) -> Iterable[tuple[Series, PodContainer, _Container]]:
        for s in by_name.get(metric, []):
            where = tuple(s.labels.get(k, "") for k in ("namespace", "pod", "container"))
            if (c := self.slot(*where)) is not None:
                yield s, (where[0], where[1], where[2]), c

    def add_resources(self, pod_res: Mapping[PodContainer, dict[str, dict[str, float]]]) -> None:
        """The largest request/limit of any pod of the workload, per container."""
        for (ns, pod, container), both in sorted(pod_res.items()):
            if (c := self.slot(ns, pod, container)) is not None:
                for kind, target in (("requests", c.requests), ("limits", c.limits)):
                    for r, v in both[kind].items():
                        target[r] = max(v, target.get(r, v))

    def add_runtime_facts(
        self,
        by_name: ByName,
        pod_res: Mapping[PodContainer, dict[str, dict[str, float]]],
        at: float,
    ) -> None:
        """JVM image, restarts, and the last OOM kill with the memory limit it hit."""
        self.add_images(by_name)
        self.add_restarts(by_name)
        self.add_oom_kills(by_name, pod_res, at)

    def add_images(self, by_name: ByName) -> None:
        for s, _, c in self.each(by_name, "kube_pod_container_info"):
            c.is_jvm = c.is_jvm or bool(_JVM.search(s.labels.get("image", "")))

    def add_restarts(self, by_name: ByName) -> None:
        for s, _, c in self.each(by_name, "kube_pod_container_status_restarts_total"):
            c.restarts += int(_last(s))

    def add_oom_kills(
        self,
        by_name: ByName,
        pod_res: Mapping[PodContainer, dict[str, dict[str, float]]],
        at: float,
    ) -> None:
        oom_ts = {
            (s.labels.get("namespace"), s.labels.get("pod"), s.labels.get("container")): _last(s)
            for s in by_name.get("kube_pod_container_status_last_terminated_timestamp", [])
        }
        for s, where, c in self.each(by_name, "kube_pod_container_status_last_terminated_reason"):
            if s.labels.get("reason") != "OOMKilled" or _last(s) != 1:
                continue
            when = oom_ts.get(where) or at  # no timestamp metric: "by now" (conservative)
            if c.last_oom_at is None or when >= c.last_oom_at:
                c.last_oom_at = when
                c.oom_limit = pod_res.get(where, {}).get("limits", {}).get("memory")


@dataclass
class _Meta:
    replicas: dict[WorkloadKey, int] = field(default_factory=dict)
    labels: dict[WorkloadKey, dict[str, str]] = field(default_factory=dict)
    annotations: dict[WorkloadKey, dict[str, str]] = field(default_factory=dict)


def _workload_meta(by_name: ByName) -> _Meta:
    """Desired replicas, labels and annotations of Deployments, StatefulSets and DaemonSets."""
    meta = _Meta()
    for kind, metric in (
        ("Deployment", "kube_deployment_spec_replicas"),
        ("StatefulSet", "kube_statefulset_replicas"),
        ("DaemonSet", "kube_daemonset_status_desired_number_scheduled"),
    ):

        def key(s: Series, kind: str = kind) -> WorkloadKey:
            return (s.labels.get("namespace", ""), kind, s.labels.get(kind.lower(), ""))

        for s in by_name.get(metric, []):
            meta.replicas[key(s)] = int(_last(s))
        for dest, prefix in ((meta.labels, "label_"), (meta.annotations, "annotation_")):
            for s in by_name.get(f"kube_{kind.lower()}_{prefix[:-1]}s", []):
                dest[key(s)] = {
                    KNOWN_KEYS.get(k[len(prefix) :], k[len(prefix) :]): v
                    for k, v in s.labels.items()
                    if k.startswith(prefix)
                }
    return meta


def build_specs(series: Iterable[Series], at: float) -> list[WorkloadSpec]:
    """Workload specs from one instant snapshot of :func:`spec_expr` (``__name__`` kept)."""
    by_name: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        by_name[s.labels.get("__name__", "")].append(s)
    return build_specs_by_name(by_name, at)


def build_specs_by_name(series_of: ByName, at: float) -> list[WorkloadSpec]:
    """:func:`build_specs` of the series already grouped by metric (:func:`spec_queries`)."""
    builder = SpecBuilder(at)
    for name, series in series_of.items():
        builder.add(name, series)
    return builder.finish()


_RESOURCE_METRICS = ("kube_pod_container_resource_requests", "kube_pod_container_resource_limits")
_OOM_METRICS = (
    "kube_pod_container_status_last_terminated_reason",
    "kube_pod_container_status_last_terminated_timestamp",
)
_HPA_METRICS = tuple(m for m in SPEC_METRICS if m.startswith("kube_horizontalpodautoscaler_"))
_META_METRICS = tuple(
    m
    for m in SPEC_METRICS
    if m.startswith(("kube_deployment_", "kube_statefulset_", "kube_daemonset_"))
)


class SpecBuilder:
    """:func:`build_specs_by_name` fed one metric's series at a time (the collector asks them
    so: :func:`spec_queries`): each step of the build runs as soon as the metrics it reads are
    all in, and those series are dropped, so what is held is the compact state built so far
    plus the metrics still waiting for theirs, not every series of every metric.

    The steps, in their dependencies' order (each reads only its own metrics, so running one
    early gives what running them all at the end gives): the owners (all three owner metrics);
    requests and limits per pod container, then folded into the workloads (the owners); the
    images and the restarts (the owners); the OOM kills (the folded limits, both OOM metrics);
    the workloads' replicas, labels, annotations (their nine metrics); the HPAs (their four).
    Metrics never added count as answered empty, as a missing metric always did."""

    def __init__(self, at: float) -> None:
        self.at = at
        self._waiting: dict[str, list[Series]] = defaultdict(list)
        self._estate: _Estate | None = None
        self._pod_res: dict[PodContainer, dict[str, dict[str, float]]] | None = None
        self._done: set[str] = set()
        self._meta: _Meta | None = None
        self._hpas: dict[WorkloadKey, HpaSpec] | None = None

    def add(self, name: str, series: list[Series]) -> None:
        self._waiting[name] = series
        self._step(final=False)

    def _ready(self, names: Iterable[str], final: bool) -> bool:
        return final or all(n in self._waiting for n in names)

    def _take(self, names: Iterable[str]) -> None:
        for n in names:
            self._waiting.pop(n, None)

    def _step(self, final: bool) -> None:
        w = self._waiting
        if self._estate is None and self._ready(OWNER_METRICS, final):
            self._estate = _Estate(Owners.build(*(w.get(m, []) for m in OWNER_METRICS)))
            self._take(OWNER_METRICS)
        estate = self._estate
        if estate is not None:
            if self._pod_res is None and self._ready(_RESOURCE_METRICS, final):
                self._pod_res = _pod_resources(w)
                estate.add_resources(self._pod_res)
                self._take(_RESOURCE_METRICS)
            for metric, add in (
                ("kube_pod_container_info", estate.add_images),
                ("kube_pod_container_status_restarts_total", estate.add_restarts),
            ):
                if metric not in self._done and self._ready((metric,), final):
                    add(w)
                    self._done.add(metric)
                    self._take((metric,))
            if (
                self._pod_res is not None
                and "oom" not in self._done
                and self._ready(_OOM_METRICS, final)
            ):
                estate.add_oom_kills(w, self._pod_res, self.at)
                self._done.add("oom")
                self._take(_OOM_METRICS)
        if self._meta is None and self._ready(_META_METRICS, final):
            self._meta = _workload_meta(w)
            self._take(_META_METRICS)
        if self._hpas is None and self._ready(_HPA_METRICS, final):
            self._hpas = _hpas(w)
            self._take(_HPA_METRICS)

    def finish(self) -> list[WorkloadSpec]:
        """The specs (every step not run yet runs now, its missing metrics empty)."""
        self._step(final=True)
        assert self._estate is not None and self._meta is not None and self._hpas is not None
        self._waiting.clear()
        return _assemble(self._estate, self._meta, self._hpas, self.at)


def _assemble(
    estate: _Estate, meta: _Meta, hpas: Mapping[WorkloadKey, HpaSpec], at: float
) -> list[WorkloadSpec]:
    out = []
    for key in sorted(estate.containers):
        ns, kind, name = key
        try:
            spec = WorkloadSpec(
                namespace=ns,
                kind=kind,
                name=name,
                replicas=max(0, meta.replicas.get(key, len(estate.pods_of[key]))),
                containers=[
                    ContainerSpec(
                        name=cname,
                        requests=ResourcePair(**c.requests),
                        limits=ResourcePair(**c.limits),
                        last_oom_at=c.last_oom_at,
                        oom_limit_bytes=c.oom_limit,
                        restarts=c.restarts,
                        is_jvm=c.is_jvm or bool(_JVM.search(cname)),
                    )
                    for cname, c in sorted(estate.containers[key].items())
                ],
                hpa=hpas.get(key),
                labels=meta.labels.get(key, {}),
                annotations=meta.annotations.get(key, {}),
                observed_at=at,
            )
        except ValidationError:  # see _valid: skip the one workload, not the snapshot
            continue
        out.append(spec)
    return out


def _hpas(by_name: ByName) -> dict[WorkloadKey, HpaSpec]:
    def per_hpa(metric: str) -> dict[tuple[str, str], list[Series]]:
        out: dict[tuple[str, str], list[Series]] = defaultdict(list)
        for s in by_name.get(metric, []):
            lab = s.labels
            out[(lab.get("namespace", ""), lab.get("horizontalpodautoscaler", ""))].append(s)
        return out

    targets = per_hpa("kube_horizontalpodautoscaler_spec_target_metric")
    mins = per_hpa("kube_horizontalpodautoscaler_spec_min_replicas")
    maxs = per_hpa("kube_horizontalpodautoscaler_spec_max_replicas")
    hpas: dict[tuple[str, str, str], HpaSpec] = {}
    for key, infos in per_hpa("kube_horizontalpodautoscaler_info").items():
        lab = infos[0].labels
        metrics = sorted({s.labels.get("metric_name", "") for s in targets.get(key, [])} - {""})
        lo = int(mins[key][0].values[-1][1]) if mins.get(key) and mins[key][0].values else 1
        hi = int(maxs[key][0].values[-1][1]) if maxs.get(key) and maxs[key][0].values else lo
        target = (key[0], lab.get("scaletargetref_kind", ""), lab.get("scaletargetref_name", ""))
        hpa = _valid(
            HpaSpec, name=key[1], min_replicas=lo, max_replicas=max(lo, hi), metrics=metrics
        )
        if hpa is not None:
            hpas[target] = hpa
    return hpas
