"""Windowed, bounded usage state of one workload container (the aggregator's table value).

Each resource ("cpu" cores, "memory" bytes) is a :class:`WindowedUsage`: tumbling windows of
``window_seconds`` keyed by their start, each holding a :class:`~engine.core.sketch.QuantileSketch`
plus exact count/sum/min/max and first/last sample time.  Windows whose end is at or before
``newest sample - history_seconds`` are dropped on every update, so the state is bounded by
``history/window + 1`` sketches of at most ``bin_limit`` bins, whatever the sample rate.
Retention is window-granular: the summary covers between ``history`` and ``history + window``.

Why daily windows by default: a sketch of one day of 1-minute CPU samples needs ~100-250 bins
(~150-300 bytes packed).  Hourly windows would mean 336 sketches for 14 days -- about 20x the
~4 KiB per container-resource budget of the changelog-backed table -- while the only thing the
estimators need is the merged 14-day distribution, which daily windows give at the same
accuracy (merging is exact).  The price is expiry granularity: one day.

Ingest is idempotent per container: ``high_water`` is the time of the newest sample stored.  A
batch with ``end <= high_water`` changes nothing; an overlapping one only contributes samples
with ``ts > high_water``; samples outside the batch's ``(start, end]`` are rejected.  The mark
moves only when samples are actually stored (a batch whose samples are all rejected, or whose
``end`` lies in the future, leaves the state untouched) and only as far as the newest of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.core.model import RESOURCES, MetricsBatch, UsageSummary
from engine.core.samples import to_arrays
from engine.core.sketch import (
    DEFAULT_BIN_LIMIT,
    DEFAULT_RELATIVE_ACCURACY,
    DEFAULT_ZERO_THRESHOLD,
    FloatArray,
    QuantileSketch,
    encode_uvarints,
    pack_raw,
    unpack_ints,
    uvarint_zigzag,
    zigzag,
)

DEFAULT_WINDOW_SECONDS = 86_400
DEFAULT_HISTORY_SECONDS = 14 * 86_400
SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, int]] = field(default_factory=list)
    accepted_by_resource: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_count(self) -> int:
        return sum(n for _, n in self.rejected)


@dataclass
class Window:
    sketch: QuantileSketch
    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    first_ts: float = math.inf
    last_ts: float = -math.inf
    # encoded ints of this window, reused by to_dict until the window changes (closed daily
    # windows never do, so a changelog write re-encodes only the current one)
    _raw: bytes | None = field(default=None, compare=False, repr=False)

    def encoded(self) -> bytes:
        if self._raw is None:
            zero, min_key, counts = self.sketch.bins()
            head = np.asarray([self.count, zero, min_key, counts.size], dtype=np.int64)
            self._raw = encode_uvarints(zigzag(np.concatenate((head, counts))))
        return self._raw

    def add(self, ts: FloatArray, values: FloatArray) -> None:
        self._raw = None
        self.sketch.add_many(values)
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        self.first_ts = min(self.first_ts, float(ts.min()))
        self.last_ts = max(self.last_ts, float(ts.max()))

    def merge(self, other: Window) -> None:
        self._raw = None
        self.sketch.merge(other.sketch)
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)


class WindowedUsage:
    """Tumbling windows of one resource; see the module docstring."""

    __slots__ = ("alpha", "bin_limit", "window_seconds", "windows", "zero_threshold")

    def __init__(
        self,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        *,
        alpha: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = DEFAULT_BIN_LIMIT,
        zero_threshold: float = DEFAULT_ZERO_THRESHOLD,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        self.window_seconds = int(window_seconds)
        self.alpha = alpha
        self.bin_limit = bin_limit
        self.zero_threshold = zero_threshold
        self.windows: dict[int, Window] = {}

    def _new_window(self) -> Window:
        return Window(QuantileSketch(self.alpha, self.bin_limit, self.zero_threshold))

    @property
    def newest_ts(self) -> float | None:
        return max((w.last_ts for w in self.windows.values()), default=None)

    def rewindow(self, window_seconds: int) -> None:
        """Change the window length; each old window merges into the new one holding its start."""
        window_seconds = int(window_seconds)
        if window_seconds == self.window_seconds:
            return
        old, self.windows, self.window_seconds = self.windows, {}, window_seconds
        for start in sorted(old):
            key = (start // window_seconds) * window_seconds
            self.windows.setdefault(key, self._new_window()).merge(old[start])

    def add(self, ts: FloatArray, values: FloatArray, *, history_seconds: float) -> int:
        """Add samples (validated, any order); return how many fell before the retention cutoff."""
        if ts.size == 0:
            return 0
        w = self.window_seconds
        newest = max(float(ts.max()), self.newest_ts or -math.inf)
        cutoff = newest - history_seconds
        starts = (np.floor(ts / w) * w).astype(np.int64)
        live = starts + w > cutoff
        expired = int(ts.size - np.count_nonzero(live))
        if expired:
            ts, values, starts = ts[live], values[live], starts[live]
        if ts.size:
            first, last = int(starts.min()), int(starts.max())
            if first == last:
                self.windows.setdefault(first, self._new_window()).add(ts, values)
            else:
                for start in np.unique(starts).tolist():
                    sel = starts == start
                    self.windows.setdefault(start, self._new_window()).add(ts[sel], values[sel])
        self.expire(newest, history_seconds)
        return expired

    def expire(self, newest: float, history_seconds: float) -> int:
        """Drop windows ending at or before ``newest - history_seconds``; return how many."""
        cutoff = newest - history_seconds
        dead = [s for s in self.windows if s + self.window_seconds <= cutoff]
        for s in dead:
            del self.windows[s]
        return len(dead)

    def merged(self) -> Window | None:
        if not self.windows:
            return None
        total = self._new_window()
        for start in sorted(self.windows):
            total.merge(self.windows[start])
        return total

    def summary(self) -> UsageSummary:
        total = self.merged()
        if total is None or total.count == 0:
            return UsageSummary()
        qs = total.sketch.quantiles(list(SUMMARY_QUANTILES))
        # The exact min/max bound every quantile: clamping can only shrink the error.
        p50, p90, p95, p99 = (min(max(q or 0.0, total.min), total.max) for q in qs)
        return UsageSummary(
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            max=total.max,
            mean=total.sum / total.count,
            count=total.count,
            first_ts=total.first_ts,
            last_ts=total.last_ts,
        )

    # --- codec: floats as JSON numbers (exact via repr), all ints in one packed varint blob
    def to_dict(self) -> dict[str, Any]:
        starts = sorted(self.windows)
        ws = [self.windows[s] for s in starts]
        parts: list[bytes] = []
        prev = 0
        for s, win in zip(starts, ws, strict=True):
            parts.append(uvarint_zigzag((s - prev) // self.window_seconds))
            parts.append(win.encoded())
            prev = s
        return {
            "w": self.window_seconds,
            "a": self.alpha,
            "l": self.bin_limit,
            "t": self.zero_threshold,
            "sum": [w.sum for w in ws],
            "min": [w.min for w in ws],
            "max": [w.max for w in ws],
            # first/last sample time as offsets from the window start: shorter, and exact
            # (Sterbenz: start <= ts <= 2*start, so ts - start and start + offset are exact)
            "ft": [w.first_ts - s for s, w in zip(starts, ws, strict=True)],
            "lt": [w.last_ts - s for s, w in zip(starts, ws, strict=True)],
            "b": pack_raw(b"".join(parts)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowedUsage:
        wu = cls(
            int(data["w"]),
            alpha=float(data["a"]),
            bin_limit=int(data["l"]),
            zero_threshold=float(data["t"]),
        )
        ints = unpack_ints(str(data["b"]))
        cols = [list(map(float, data[k])) for k in ("sum", "min", "max", "ft", "lt")]
        pos, start = 0, 0
        for i in range(len(cols[0])):
            if pos + 5 > ints.size:
                raise ValueError("corrupt windowed usage payload")
            step, count, zero, min_key, nbins = ints[pos : pos + 5].tolist()
            pos += 5
            if nbins < 0 or step < 0 or count < 0 or pos + nbins > ints.size:
                raise ValueError("corrupt windowed usage payload")
            start += step * wu.window_seconds
            win = wu._new_window()
            win.sketch.set_bins(zero, min_key, ints[pos : pos + nbins])
            pos += nbins
            win.count = count
            win.sum, win.min, win.max, first, last = (c[i] for c in cols)
            win.first_ts, win.last_ts = start + first, start + last
            wu.windows[start] = win
        if pos != ints.size:
            raise ValueError("corrupt windowed usage payload")
        return wu

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowedUsage):
            return NotImplemented
        return (
            self.window_seconds == other.window_seconds
            and self.alpha == other.alpha
            and self.bin_limit == other.bin_limit
            and self.zero_threshold == other.zero_threshold
            and self.windows == other.windows
        )

    __hash__ = None  # type: ignore[assignment]


def _size(samples: object) -> int:
    return len(samples) if isinstance(samples, list | tuple) else 1


class ContainerUsage:
    """Usage state of one workload container: a high-water mark and one window set per resource."""

    __slots__ = ("high_water", "resources")

    def __init__(self, window_seconds: int = DEFAULT_WINDOW_SECONDS) -> None:
        self.high_water: float | None = None
        self.resources: dict[str, WindowedUsage] = {
            r: WindowedUsage(window_seconds) for r in RESOURCES
        }

    def ingest(
        self,
        batch: MetricsBatch,
        *,
        history_seconds: float = DEFAULT_HISTORY_SECONDS,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        arrays: Mapping[str, tuple[FloatArray, FloatArray]] | None = None,
    ) -> IngestResult:
        """Add a batch's new samples; see the module docstring for the idempotency rules.

        ``arrays`` (from :func:`engine.core.samples.validate_batch`) are the batch's samples
        already converted to numpy; without them the samples are converted here.
        """
        total = sum(_size(s) for s in batch.samples.values())
        hw = self.high_water
        if hw is not None and batch.end <= hw:
            return IngestResult(duplicates=total)
        duplicates = 0
        rejected: dict[str, int] = {}
        fresh: dict[str, tuple[FloatArray, FloatArray]] = {}

        def reject(reason: str, n: int) -> None:
            if n:
                rejected[reason] = rejected.get(reason, 0) + n

        for resource, samples in batch.samples.items():
            if resource not in self.resources:
                reject("unknown-resource", _size(samples))
                continue
            pair = arrays.get(resource) if arrays is not None else None
            if pair is None:
                pair = to_arrays(samples)
            if pair is None:
                reject("wrong-type", _size(samples))
                continue
            ts, values = pair
            good = np.isfinite(ts) & np.isfinite(values) & (values >= 0)
            reject("invalid-value", int(ts.size - np.count_nonzero(good)))
            inside = good & (ts > batch.start) & (ts <= batch.end)
            reject("outside-chunk", int(np.count_nonzero(good) - np.count_nonzero(inside)))
            if hw is not None:
                new = inside & (ts > hw)
                duplicates += int(np.count_nonzero(inside) - np.count_nonzero(new))
                inside = new
            if not inside.all():
                ts, values = ts[inside], values[inside]
            if ts.size:
                fresh[resource] = (ts, values)
        if not fresh:  # nothing to add: the state, its mark included, stays exactly as it was
            return IngestResult(0, duplicates, sorted(rejected.items()), {})
        accepted = 0
        by_resource: dict[str, int] = {}
        newest_accepted = -math.inf
        for resource, (ts, values) in fresh.items():
            wu = self.resources[resource]
            wu.rewindow(window_seconds)
            expired = wu.add(ts, values, history_seconds=history_seconds)
            reject("older-than-history", expired)
            by_resource[resource] = int(ts.size) - expired
            accepted += by_resource[resource]
            if by_resource[resource]:  # the newest samples are the last to expire
                newest_accepted = max(newest_accepted, float(ts.max()))
        if accepted:
            # The mark is the newest sample actually stored, never the batch's claimed ``end``:
            # a chunk that says it ends in ten years moves nothing it did not deliver.
            self.high_water = newest_accepted if hw is None else max(hw, newest_accepted)
            # Keep every resource on the same horizon, even one that got no samples this time.
            newest = max((w.newest_ts or -math.inf) for w in self.resources.values())
            if math.isfinite(newest):
                for wu in self.resources.values():
                    wu.expire(newest, history_seconds)
        return IngestResult(accepted, duplicates, sorted(rejected.items()), by_resource)

    def summary(self, resource: str) -> UsageSummary:
        wu = self.resources.get(resource)
        return UsageSummary() if wu is None else wu.summary()

    def expire(self, now: float, history_seconds: float = DEFAULT_HISTORY_SECONDS) -> int:
        """Age out windows of a container that stopped reporting (``now`` is a parameter)."""
        return sum(wu.expire(now, history_seconds) for wu in self.resources.values())

    @property
    def is_empty(self) -> bool:
        return all(not wu.windows for wu in self.resources.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": FORMAT_VERSION, "hw": self.high_water}
        for r, wu in self.resources.items():
            out[r] = wu.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerUsage:
        if data.get("v") != FORMAT_VERSION:
            raise ValueError(f"unsupported usage state version: {data.get('v')!r}")
        cu = cls()
        hw = data.get("hw")
        cu.high_water = None if hw is None else float(hw)
        for r in RESOURCES:
            if r in data:
                cu.resources[r] = WindowedUsage.from_dict(data[r])
        return cu

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContainerUsage):
            return NotImplemented
        return self.high_water == other.high_water and self.resources == other.resources

    __hash__ = None  # type: ignore[assignment]
