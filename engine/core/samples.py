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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from numbers import Real
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.core.bounds import FUTURE_SLACK_SECONDS, MIN_TIME
from engine.core.model import RESOURCES, MetricsBatch

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
