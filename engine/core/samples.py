"""Sample validation: split a metrics batch into the clean part and counted reasons (pure).

Run before :meth:`engine.core.usage.ContainerUsage.ingest`.  The agent ingests the clean batch
and dead-letters / counts the rest by reason.  Checks, per sample, in this order (a sample is
counted once, under the first reason that applies):

``unknown-resource``  resource name other than ``cpu``/``memory`` (the whole list)
``wrong-type``        not a ``(timestamp, value)`` pair of numbers (only possible for a batch
                      built without pydantic validation, e.g. ``model_construct``)
``future-chunk``      the whole batch, when its ``end`` is after ``now + future_slack``: a chunk
                      from the future is refused before any of it can move the high-water mark
``bad-timestamp``     timestamp NaN, infinite or before 2000-01-01 (a unit mistake, 1970 default)
``future-timestamp``  timestamp > ``now + future_slack`` (``now`` is a parameter: pure)
``outside-chunk``     timestamp not in the batch's ``(start, end]``
``nan`` / ``inf``     value NaN / +-infinite
``negative``          value < 0
``absurd-value``      CPU > 1024 cores or memory > 16 TiB

The common case (everything clean) costs one numpy conversion per resource and returns the
batch object unchanged.  :func:`validate_batch` also returns the clean samples as arrays; pass
them to ``ingest(..., arrays=...)`` so the batch is converted only once.

:func:`validate_chunk` does the same for a columnar :class:`MetricsChunk` (one workload, every
container): the same reasons in the same order, per container, with the timestamp checks done
once per grid column; a ``null`` grid point is no sample and is counted nowhere.  Its clean
arrays go to ``ContainerUsage.ingest_arrays(..., validated=True)``: validated once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from numbers import Real
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.core.bounds import FUTURE_SLACK_SECONDS, MIN_TIME
from engine.core.model import RESOURCES, MetricsBatch, MetricsChunk

MAX_VALUE: dict[str, float] = {"cpu": 1024.0, "memory": 16.0 * 2**40}

Reasons = list[tuple[str, int]]
FloatArray = npt.NDArray[np.float64]


def _as_float(x: Any) -> float | None:
    if not isinstance(x, Real) or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (OverflowError, ValueError):  # a 400-digit integer does not fit a float
        return None


def _pair(sample: Any) -> tuple[float, float] | None:
    if not isinstance(sample, tuple | list) or len(sample) != 2:
        return None
    ts, value = _as_float(sample[0]), _as_float(sample[1])
    return None if ts is None or value is None else (ts, value)


def to_arrays(samples: Any) -> tuple[FloatArray, FloatArray] | None:
    """``(timestamps, values)`` of a list of pairs, or ``None`` if it is not one.

    Fast path: one ``np.fromiter`` over the flattened pairs (3x faster than ``np.asarray`` on a
    list of tuples).  Elements convert the way pydantic's lax float does (ints, bools, numeric
    strings); anything else, or a ragged list, returns ``None``.
    """
    if not isinstance(samples, list | tuple):
        return None
    n = len(samples)
    try:
        flat = np.fromiter(chain.from_iterable(samples), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if flat.size != 2 * n or (n and not isinstance(samples[0], tuple | list)):
        return None
    return flat[0::2], flat[1::2]


def _split_types(samples: Any) -> tuple[FloatArray, FloatArray, int]:
    """Slow path: keep the well-typed pairs, count the rest."""
    if not isinstance(samples, list | tuple):
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty, 1
    good = [p for p in map(_pair, samples) if p is not None]
    arr = np.asarray(good, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy(), len(samples) - len(good)


@dataclass(frozen=True)
class Validated:
    """The clean batch, the reasons for what was dropped, and the clean samples as arrays
    (pass them to ``ContainerUsage.ingest(..., arrays=...)`` to skip a second conversion)."""

    batch: MetricsBatch
    reasons: Reasons
    arrays: dict[str, tuple[FloatArray, FloatArray]]


def validate_samples(
    batch: MetricsBatch,
    *,
    now: float,
    future_slack: float = FUTURE_SLACK_SECONDS,
) -> tuple[MetricsBatch, Reasons]:
    """Return ``(clean batch, [(reason, count), ...])`` sorted by reason; see module doc."""
    v = validate_batch(batch, now=now, future_slack=future_slack)
    return v.batch, v.reasons


def validate_batch(
    batch: MetricsBatch,
    *,
    now: float,
    future_slack: float = FUTURE_SLACK_SECONDS,
) -> Validated:
    """:func:`validate_samples` plus the clean samples as numpy arrays."""
    counts: dict[str, int] = {}
    clean: dict[str, list[tuple[float, float]]] = {}
    arrays: dict[str, tuple[FloatArray, FloatArray]] = {}
    changed = False

    def bad(reason: str, n: int) -> None:
        if n:
            counts[reason] = counts.get(reason, 0) + n

    if not batch.end <= now + future_slack:
        for samples in batch.samples.values():
            bad("future-chunk", len(samples) if isinstance(samples, list | tuple) else 1)
        empty = np.zeros(0, dtype=np.float64)
        return Validated(
            batch.model_copy(update={"samples": {}}),
            sorted(counts.items()) or [("future-chunk", 0)],
            {r: (empty, empty) for r in RESOURCES if r in batch.samples},
        )
    for resource, samples in batch.samples.items():
        if resource not in RESOURCES:
            bad("unknown-resource", len(samples) if isinstance(samples, list | tuple) else 1)
            changed = True
            continue
        pair = to_arrays(samples)
        if pair is None:
            ts, val, wrong = _split_types(samples)
            bad("wrong-type", wrong)
            changed = True
        else:
            ts, val = pair
        keep = _keep(resource, ts, val, batch.start, batch.end, now + future_slack, bad)
        if pair is not None and keep.all():
            clean[resource] = samples
            arrays[resource] = (ts, val)
            continue
        changed = True
        ts, val = ts[keep], val[keep]
        arrays[resource] = (ts, val)
        clean[resource] = list(zip(ts.tolist(), val.tolist(), strict=True))
    if not changed:
        return Validated(batch, [], arrays)
    return Validated(batch.model_copy(update={"samples": clean}), sorted(counts.items()), arrays)


def _keep(
    resource: str,
    ts: FloatArray,
    val: FloatArray,
    start: float,
    end: float,
    latest: float,
    bad: Callable[[str, int], None],
) -> npt.NDArray[np.bool_]:
    """The mask of the samples that pass every check (each dropped one counted once, under the
    first reason that applies; see the module docstring)."""
    # The usual case, every sample clean, in one combined mask (a NaN fails every comparison,
    # an infinity the bound on its side); the per-reason counting only when something fails.
    clean = (
        (ts > start)
        & (ts >= MIN_TIME)
        & (ts <= min(end, latest))
        & (val >= 0)
        & (val <= MAX_VALUE[resource])
    )
    if clean.all():
        return clean
    keep = np.ones(ts.size, dtype=bool)
    checks = (
        ("bad-timestamp", ~np.isfinite(ts) | (ts < MIN_TIME)),
        ("future-timestamp", ts > latest),
        ("outside-chunk", (ts <= start) | (ts > end)),
        ("nan", np.isnan(val)),
        ("inf", np.isinf(val)),
        ("negative", val < 0),
        ("absurd-value", val > MAX_VALUE[resource]),
    )
    for reason, hit in checks:
        hit_now = hit & keep
        n = int(np.count_nonzero(hit_now))
        if n:
            bad(reason, n)
            keep &= ~hit_now
    return keep


def validate_arrays(
    start: float,
    end: float,
    arrays: dict[str, tuple[FloatArray, FloatArray]],
    *,
    now: float,
    future_slack: float = FUTURE_SLACK_SECONDS,
) -> tuple[dict[str, tuple[FloatArray, FloatArray]], Reasons]:
    """:func:`validate_batch` for samples already held as numpy arrays per resource (the
    one-shot's path): the clean arrays and the reasons, sorted."""
    counts: dict[str, int] = {}

    def bad(reason: str, n: int) -> None:
        if n:
            counts[reason] = counts.get(reason, 0) + n

    if not end <= now + future_slack:
        for ts, _ in arrays.values():
            bad("future-chunk", int(ts.size))
        empty = np.zeros(0, dtype=np.float64)
        return {r: (empty, empty) for r in arrays if r in RESOURCES}, sorted(counts.items())
    clean: dict[str, tuple[FloatArray, FloatArray]] = {}
    for resource, (ts, val) in arrays.items():
        if resource not in RESOURCES:
            bad("unknown-resource", int(ts.size))
            continue
        keep = _keep(resource, ts, val, start, end, now + future_slack, bad)
        clean[resource] = (ts, val) if keep.all() else (ts[keep], val[keep])
    return clean, sorted(counts.items())


def sample_count(batch: MetricsBatch) -> int:
    return sum(len(s) for s in batch.samples.values())


# --- columnar chunks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidatedChunk:
    """Clean samples of a :class:`MetricsChunk` per container (``{resource: (ts, values)}``,
    only containers and resources with a known resource name), and the counted reasons for
    what was dropped, over the whole record."""

    arrays: dict[str, dict[str, tuple[FloatArray, FloatArray]]]
    reasons: Reasons
    samples: int  # non-null values in the record (clean or not)


def _grid(rows: Any, n: int, nan_tokens: bool) -> tuple[FloatArray, Any, int]:
    """``rows`` as an ``(r, n)`` float matrix, the mask of its points that hold a sample (not
    ``null``) and the count of values of the wrong type (not in the matrix).

    Fast path: one ``np.asarray`` (``null`` -> NaN; a NaN token is possible only when the
    record was parsed leniently, then the nulls are located in Python).  Anything else (a ragged
    row, a string) takes the checked path: every well-typed value of every well-shaped row,
    the rest counted (a row that is not a list of ``n`` values: all its values)."""
    if isinstance(rows, list) and not rows:
        return np.zeros((0, n), dtype=np.float64), np.zeros((0, n), dtype=bool), 0
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == n:  # in-process
        arr = rows.astype(np.float64, copy=False)
        return arr, ~np.isnan(arr), 0
    if isinstance(rows, list) and all(isinstance(r, list) for r in rows):
        fast: FloatArray | None
        try:
            fast = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
        except (TypeError, ValueError, OverflowError):
            fast = None
        if fast is not None and fast.shape[1] == n:
            present = ~np.isnan(fast)
            if nan_tokens and not present.all():
                present = np.asarray([[x is not None for x in r] for r in rows], dtype=bool)
            return fast, present.reshape(fast.shape), 0
    if not isinstance(rows, list):
        return np.zeros((0, n), dtype=np.float64), np.zeros((0, n), dtype=bool), 1
    vals: list[list[float]] = []
    mask: list[list[bool]] = []
    wrong = 0
    for row in rows:
        if not isinstance(row, list) or len(row) != n:
            wrong += len(row) if isinstance(row, list) else 1
            continue
        floats = [math.nan if x is None else _as_float(x) for x in row]
        wrong += sum(1 for x, f in zip(row, floats, strict=True) if x is not None and f is None)
        vals.append([math.nan if f is None else f for f in floats])
        mask.append([f is not None and x is not None for x, f in zip(row, floats, strict=True)])
    grid = np.asarray(vals, dtype=np.float64).reshape(len(vals), n)
    return grid, np.asarray(mask, dtype=bool).reshape(len(vals), n), wrong


def validate_chunk(
    chunk: MetricsChunk,
    *,
    now: float,
    future_slack: float = FUTURE_SLACK_SECONDS,
) -> ValidatedChunk:
    """Split a chunk into clean arrays per container and counted reasons (see module doc)."""
    counts: dict[str, int] = {}
    arrays: dict[str, dict[str, tuple[FloatArray, FloatArray]]] = {}
    total = 0

    def bad(reason: str, k: int) -> None:
        if k:
            counts[reason] = counts.get(reason, 0) + k

    n = chunk.n
    ts = chunk.t0 + chunk.step * np.arange(n, dtype=np.float64)
    future_chunk = not chunk.end <= now + future_slack
    # timestamp checks once per grid column, in the order of the module doc
    col_checks = (
        ("bad-timestamp", ~np.isfinite(ts) | (ts < MIN_TIME)),
        ("future-timestamp", ts > now + future_slack),
        ("outside-chunk", (ts <= chunk.start) | (ts > chunk.end)),
    )
    col_ok = ~(col_checks[0][1] | col_checks[1][1] | col_checks[2][1])
    all_cols_ok = bool(col_ok.all())
    for container, resources in chunk.containers.items():
        clean: dict[str, tuple[FloatArray, FloatArray]] = {}
        for resource, rows in resources.items():
            grid, present, wrong = _grid(rows, n, chunk._nan_tokens)
            k = int(np.count_nonzero(present)) + wrong
            total += k
            if future_chunk:
                bad("future-chunk", k)
                continue
            if resource not in RESOURCES:
                bad("unknown-resource", k)
                continue
            bad("wrong-type", wrong)
            limit = MAX_VALUE[resource]
            good = (grid >= 0) & (grid <= limit)  # False for NaN, +-inf, negative, absurd
            if all_cols_ok and int(np.count_nonzero(good)) == k - wrong:
                clean[resource] = (np.broadcast_to(ts, grid.shape)[good], grid[good])
                continue
            keep = present.copy()
            for reason, hit_cols in col_checks:
                hit = keep & hit_cols[np.newaxis, :]
                bad(reason, int(np.count_nonzero(hit)))
                keep &= ~hit
            for reason, hit in (
                ("nan", np.isnan(grid)),
                ("inf", np.isinf(grid)),
                ("negative", grid < 0),
                ("absurd-value", grid > limit),
            ):
                hit_now = keep & hit
                bad(reason, int(np.count_nonzero(hit_now)))
                keep &= ~hit_now
            clean[resource] = (np.broadcast_to(ts, grid.shape)[keep], grid[keep])
        if clean:
            arrays[container] = clean
    if future_chunk and not counts:
        counts["future-chunk"] = 0
    return ValidatedChunk(arrays, sorted(counts.items()), total)
