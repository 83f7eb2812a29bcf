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

Codec (v2): per resource, ``c`` packs every closed window and ``o`` the newest (open) one, each
as zlib'd varints with the floats exact.  ``c`` is re-packed only when a closed window changes
(about once a day, when a day closes or expires: the kept days' bytes are reused, not decoded
and re-encoded), so an hourly changelog write encodes one day, not fourteen; the v1 layout (one
blob per resource) is still read.

Ingest is idempotent per container: ``high_water`` is the time of the newest sample stored.  A
batch with ``end <= high_water`` changes nothing; an overlapping one only contributes samples
with ``ts > high_water``; samples outside the batch's ``(start, end]`` are rejected.  The mark
moves only when samples are actually stored (a batch whose samples are all rejected, or whose
``end`` lies in the future, leaves the state untouched) and only as far as the newest of them.

Late chunks: the mark alone cannot tell a re-delivery from a *late* chunk (older data never
stored, e.g. arriving after a newer chunk).  So the state also keeps the ``(start, end]`` ranges
of the chunks it accepted, merged where they touch (consecutive chunks make one range), at most
:data:`MAX_RANGES` of them, plus a ``floor``: when a range ends before the history horizon, or a
new range would exceed the bound, the oldest is dropped and the floor raised to its end.  A
sample at or before the mark is a duplicate iff it is covered (``ts <= floor`` or inside an
accepted range); an uncovered one is *late* and is stored -- windows are mergeable and counted
per day, so adding samples that were never stored keeps every daily window exact
(``IngestResult.late``); too old for the history it is refused as ``older-than-history``.
States written before this (no ranges) decode with ``floor = high_water``: everything at or
before their mark stays a duplicate, as it was.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping
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
    IntArray,
    QuantileSketch,
    decode_uvarints,
    encode_uvarints,
    pack_raw,
    unpack_ints,
    unpack_raw,
    unzigzag,
    uvarint_zigzag,
)

DEFAULT_WINDOW_SECONDS = 86_400
DEFAULT_HISTORY_SECONDS = 14 * 86_400
SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)
FORMAT_VERSION = 2
# measured with tracemalloc on decoded 14-day states (tests/unit/test_cache.py checks the
# estimate stays within a factor of the real size)
_WINDOW_OVERHEAD = 620
_OBJECT_OVERHEAD = 1_200
READABLE_VERSIONS = (1, 2)  # v1: one packed blob per resource (still read, never written)
# accepted chunk ranges kept per container (bounded state: ~16 floats in the table value)
MAX_RANGES = 8


@dataclass(frozen=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, int]] = field(default_factory=list)
    accepted_by_resource: dict[str, int] = field(default_factory=dict)
    # of ``accepted``: samples at or before the mark that no accepted chunk covered (late chunk)
    late: int = 0

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
    # bumped on every change: the packed closed-days blob is reused while no closed window's
    # generation moved (closed daily windows never change, so it is packed about once a day)
    gen: int = field(default=0, compare=False, repr=False)
    # encoded ints of this window, reused until the window changes
    _raw: bytes | None = field(default=None, compare=False, repr=False)

    def encoded(self) -> bytes:
        """Zigzag varints ``[count, zero, min_key, nbins, counts...]`` (the floats are packed
        by :meth:`WindowedUsage._pack`).  The four head ints are encoded as Python ints and the
        counts, never negative, as ``2 * count`` in one numpy call: the bytes
        :func:`~engine.core.sketch.zigzag` + :func:`~engine.core.sketch.encode_uvarints` give for
        the whole row, without building it (the open day is encoded on every changelog write)."""
        if self._raw is None:
            zero, min_key, counts = self.sketch.bins()
            head = b"".join(
                uvarint_zigzag(int(v)) for v in (self.count, zero, min_key, counts.size)
            )
            self._raw = head + encode_uvarints(counts << 1)  # zigzag of a count >= 0
        return self._raw

    def add(
        self,
        ts: FloatArray,
        values: FloatArray,
        tmin: float | None = None,
        tmax: float | None = None,
    ) -> None:
        """Samples (validated by ContainerUsage.ingest*); ``tmin``/``tmax``: ``ts.min()`` and
        ``ts.max()`` when the caller has them already."""
        self._raw = None
        self.gen += 1
        self.sketch.add_valid(values)
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        self.first_ts = min(self.first_ts, float(ts.min()) if tmin is None else tmin)
        self.last_ts = max(self.last_ts, float(ts.max()) if tmax is None else tmax)

    def merge(self, other: Window) -> None:
        self._raw = None
        self.gen += 1
        self.sketch.merge(other.sketch)
        self.merge_scalars(other)

    def merge_scalars(self, other: Window) -> None:
        """:meth:`merge` of everything but the sketch (a summary reads the merged quantiles
        from the two sketches' bins: ``QuantileSketch.merged_quantiles``)."""
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)


class WindowedUsage:
    """Tumbling windows of one resource; see the module docstring.

    Closed windows are held *packed* (the ``c`` string of the table value) between writes and
    decoded only when something needs them one by one: a late sample, a rewindow.  A day
    closing and the oldest day expiring (the midnight cycle) rewrite the packed text record by
    record instead (:meth:`_splice_closed`).  For summaries their merge is decoded once and
    kept.  A decoded state is then about the open window plus one merged sketch instead of
    fourteen sketches (~8x less memory), and decoding a value read from the table costs one
    day, not fourteen.
    """

    __slots__ = (
        "_closed",
        "_closed_merged",
        "_closed_peaks",
        "_lazy",
        "_lazy_newest",
        "_lazy_oldest",
        "_live",
        "alpha",
        "bin_limit",
        "window_seconds",
        "zero_threshold",
    )

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
        # decoded windows; while ``_lazy`` is set, only those newer than every packed one
        self._live: dict[int, Window] = {}
        self._lazy: str | None = None  # packed closed windows, not decoded
        self._lazy_oldest = 0  # start of the oldest packed window (for expiry)
        # start of the newest packed window, when this process packed them (None: read from a
        # changelog value): lets a closing day be appended without reading the packed ones
        self._lazy_newest: int | None = None
        self._closed_merged: Window | None = None  # merge of the packed windows, once needed
        self._closed_peaks: tuple[tuple[int, float], ...] = ()  # (start, max) of those windows
        # (identity of the closed windows, their packed text): see to_dict
        self._closed: tuple[tuple[tuple[int, int, int], ...], str] | None = None

    @property
    def windows(self) -> dict[int, Window]:
        """Every live window by start (decodes packed closed windows first)."""
        self._materialize()
        return self._live

    def _materialize(self) -> None:
        if self._lazy is None:
            return
        text, self._lazy, self._closed_merged = self._lazy, None, None
        self._lazy_newest = None
        closed: dict[int, Window] = {}
        self._unpack(text, 0, closed)
        self._live = {**closed, **self._live}
        ident = tuple((s, id(closed[s]), closed[s].gen) for s in sorted(closed))
        self._closed = (ident, text)

    def _new_sketch(self) -> QuantileSketch:
        return QuantileSketch(self.alpha, self.bin_limit, self.zero_threshold)

    def _new_window(self) -> Window:
        return Window(self._new_sketch())

    def _window(self, start: int) -> Window:
        """The live window starting at ``start``, a new one when there is none (not
        ``setdefault(start, self._new_window())``, which built a window and a sketch on every
        add only to drop them: the open day exists on all but a day's first add)."""
        win = self._live.get(start)
        if win is None:
            win = self._live[start] = self._new_window()
        return win

    @property
    def newest_ts(self) -> float | None:
        # packed windows are all older than every decoded one: the decoded ones suffice
        return max((w.last_ts for w in self._live.values()), default=None)

    def rewindow(self, window_seconds: int) -> None:
        """Change the window length; each old window merges into the new one holding its start."""
        window_seconds = int(window_seconds)
        if window_seconds == self.window_seconds:
            return
        old = self.windows
        self._live, self.window_seconds = {}, window_seconds
        for start in sorted(old):
            key = (start // window_seconds) * window_seconds
            self._window(key).merge(old[start])

    def add(self, ts: FloatArray, values: FloatArray, *, history_seconds: float) -> int:
        """Add samples (validated, any order); return how many fell before the retention cutoff."""
        if ts.size == 0:
            return 0
        w = self.window_seconds
        tmin, tmax = float(ts.min()), float(ts.max())
        newest = max(tmax, self.newest_ts or -math.inf)
        cutoff = newest - history_seconds
        first = math.floor(tmin / w) * w
        if first == math.floor(tmax / w) * w:
            # every sample in one window (a chunk within a day: most of them): no per-sample
            # window starts, the same window and the same expiry as the general path below
            if first + w <= cutoff:
                self.expire(newest, history_seconds)
                return int(ts.size)
            if self._lazy is not None and first < min(self._live, default=first):
                self._materialize()  # a late sample for a packed (closed) window
            self._window(first).add(ts, values, tmin, tmax)
            self.expire(newest, history_seconds)
            return 0
        starts = (np.floor(ts / w) * w).astype(np.int64)
        live = starts + w > cutoff
        expired = int(ts.size - np.count_nonzero(live))
        if expired:
            ts, values, starts = ts[live], values[live], starts[live]
        if ts.size:
            first, last = int(starts.min()), int(starts.max())
            if self._lazy is not None and first < min(self._live, default=first):
                self._materialize()  # a late sample for a packed (closed) window
            if first == last:
                self._window(first).add(ts, values)
            else:
                # two windows (a chunk across midnight): their starts are known, no np.unique
                spanned = (first, last) if last - first == w else np.unique(starts).tolist()
                for start in spanned:
                    sel = starts == start
                    self._window(start).add(ts[sel], values[sel])
        self.expire(newest, history_seconds)
        return expired

    def expire(self, newest: float, history_seconds: float) -> int:
        """Drop windows ending at or before ``newest - history_seconds``; return how many."""
        cutoff = newest - history_seconds
        if self._lazy is not None and self._lazy_oldest + self.window_seconds <= cutoff:
            # the days these samples closed go in the same rewrite (one, not two, at midnight)
            if not self._splice_closed(cutoff):
                self._materialize()
        dead = [s for s in self._live if s + self.window_seconds <= cutoff]
        for s in dead:
            del self._live[s]
        return len(dead)

    def merged(self) -> Window | None:
        if self._lazy is not None:
            total = self._new_window()
            total.merge(self._closed_window(self._lazy))
            for start in sorted(self._live):
                total.merge(self._live[start])
            return total
        if not self._live:
            return None
        return self._merge(self._live)

    def _closed_window(self, text: str) -> Window:
        """The merge of the packed closed windows ``text`` (this state's ``_lazy``), merged once
        and kept with their peaks until they change."""
        if self._closed_merged is None:
            self._closed_merged, self._closed_peaks = self._merge_packed(text)
        return self._closed_merged

    def _merge(self, windows: dict[int, Window]) -> Window:
        total = self._new_window()
        for start in sorted(windows):
            total.merge(windows[start])
        return total

    def _merge_packed(self, text: str) -> tuple[Window, tuple[tuple[int, float], ...]]:
        """The merge of packed windows and their ``(start, max)``: what :meth:`_unpack` then
        :meth:`_merge` give, without a window and a sketch per day and a merge each — the
        scalars are merged in the same order with the same expressions, the bins of every day
        added into one array and folded once (collapsing depends only on the largest key, so
        that is the sketch the merges in a row build; ``tests/unit/test_fast_paths.py``).  A
        summary after a cache miss (every container of a fleet larger than the decoded-state
        cache, every cycle) merges the closed days once: this was ~45% of a burst's handlers."""
        return self._merge_records(self._records(text, 0), text)

    def _merge_records(
        self,
        records: Iterable[tuple[int, int, int, int, IntArray, tuple[float, ...]]],
        text: str | None = None,
    ) -> tuple[Window, tuple[tuple[int, float], ...]]:
        """:meth:`_merge_packed` of records as :meth:`_records` yields them (``text``: their
        payload, decoded window by window when the starts are not increasing)."""
        total = self._new_window()
        peaks: list[tuple[int, float]] = []
        spans: list[tuple[int, IntArray]] = []
        zero = 0
        for start, count, zeros, min_key, bins, floats in records:
            if bins.size > self.bin_limit:
                raise ValueError("corrupt sketch bins")  # what set_bins says
            if peaks and start <= peaks[-1][0]:
                if text is None:
                    raise ValueError("window starts not increasing")
                # starts not increasing (the later window replaces the earlier in _unpack)
                packed: dict[int, Window] = {}
                self._unpack(text, 0, packed)
                return self._merge(packed), tuple((s, packed[s].max) for s in sorted(packed))
            total_sum, low, high, first, last = floats
            total.count += count
            total.sum += total_sum
            total.min = min(total.min, low)
            total.max = max(total.max, high)
            total.first_ts = min(total.first_ts, start + first)
            total.last_ts = max(total.last_ts, start + last)
            total.gen += 1
            zero += zeros
            peaks.append((start, high))
            if bins.size and not (bins[0] > 0 and bins[-1] > 0):  # untrimmed: as set_bins
                nz = np.flatnonzero(bins)
                if nz.size == 0:
                    continue
                min_key, bins = min_key + int(nz[0]), bins[nz[0] : nz[-1] + 1]
            if bins.size:
                spans.append((min_key, bins))
        total.sketch.set_folded(zero, spans)
        return total, tuple(peaks)

    def summary(self) -> UsageSummary:
        if self._lazy is not None and len(self._live) == 1:
            return self._summary_of_open_day(self._lazy)
        total = self.merged()
        if total is None or total.count == 0:
            return UsageSummary()
        qs = total.sketch.quantiles(list(SUMMARY_QUANTILES))
        return self._summary(total, qs)

    def _summary_of_open_day(self, packed: str) -> UsageSummary:
        """:meth:`summary` of packed closed days (``packed``: ``_lazy``) and one open day (every
        hourly cycle's case) without building their merged window: the scalars merged in
        :meth:`merged`'s order with its expressions, the quantiles of the two sketches' bins
        added into one array (``QuantileSketch.merged_quantiles``) — ~40 % of a summary was
        building the window, the sketch and the copy of the closed days' bins
        (tests/unit/test_fast_paths.py)."""
        closed = self._closed_window(packed)
        (open_,) = self._live.values()
        total = Window(closed.sketch)  # the sketch is not read: merged_quantiles below
        total.merge_scalars(closed)  # as merged() merges them into a new window
        total.merge_scalars(open_)
        if total.count == 0:
            return UsageSummary()
        qs = closed.sketch.merged_quantiles(open_.sketch, list(SUMMARY_QUANTILES))
        return self._summary(total, qs)

    def _summary(self, total: Window, qs: list[float | None]) -> UsageSummary:
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
            window_max=self._window_peaks(),
            window_seconds=float(self.window_seconds),
        )

    def _window_peaks(self) -> tuple[float, ...]:
        """The max of every window, oldest first, without decoding packed windows one by one
        (``merged`` recorded theirs when it merged them)."""
        closed = list(self._closed_peaks) if self._lazy is not None else []
        live = [(s, w.max) for s, w in self._live.items()]
        return tuple(m for _, m in sorted(closed + live))

    # --- codec v2: closed windows packed once, the open (newest) window packed on every write -
    def _pack(self, windows: dict[int, Window], starts: list[int], *, compress: bool = True) -> str:
        floats: list[float] = []
        parts: list[bytes] = []
        prev = 0
        for s in starts:
            win = windows[s]
            floats += (win.sum, win.min, win.max, win.first_ts - s, win.last_ts - s)
            parts.append(uvarint_zigzag((s - prev) // self.window_seconds))
            parts.append(win.encoded())
            prev = s
        head = struct.pack(f"<{len(floats)}d", *floats)
        return pack_raw(struct.pack("<H", len(starts)) + head + b"".join(parts), compress=compress)

    def _pack_open(self, windows: dict[int, Window]) -> str:
        """The open (newest) window, packed on every write *without* zlib (header ``r``, which
        every reader of codec v2 reads): one day's varints compress by only ~20 % (~120 -> ~98
        bytes per resource in bench_pipeline's states) and zlib was about a quarter of the
        encoding's time.  The closed windows, packed about once a day, stay zlib'd."""
        return self._pack(windows, [*windows], compress=False)

    def to_dict(self) -> dict[str, Any]:
        """``c``: every window but the newest, ``o``: the newest, each packed (floats exact);
        ``s``: the start of the oldest window in ``c``.

        An hourly write changes only the open day, so ``c`` is the string packed last time as
        long as no closed window changed (checked by identity and generation): the per-message
        cost stays one day's encoding whatever the history length.  Afterwards the closed
        windows are held packed again (see the class docstring).
        """
        out: dict[str, Any] = {
            "w": self.window_seconds,
            "a": self.alpha,
            "l": self.bin_limit,
            "t": self.zero_threshold,
        }
        if self._lazy is not None and len(self._live) > 1:
            self._splice_closed(None)  # a day closed, none expired (a history still filling)
        if self._lazy is not None and len(self._live) <= 1:
            out.update(c=self._lazy, s=self._lazy_oldest, o=self._pack_open(self._live))
            return out
        wins = self.windows
        starts = sorted(wins)
        closed, open_ = starts[:-1], starts[-1:]
        ident = tuple((s, id(wins[s]), wins[s].gen) for s in closed)
        if self._closed is None or self._closed[0] != ident:
            self._closed = (ident, self._pack(wins, closed))
        out.update(c=self._closed[1], o=self._pack_open({s: wins[s] for s in open_}))
        if closed:
            out["s"] = closed[0]
            # hold the closed windows packed again, keeping their merge for summaries
            self._closed_merged = self._merge({s: wins[s] for s in closed})
            self._closed_peaks = tuple((s, wins[s].max) for s in closed)
            self._lazy, self._lazy_oldest = self._closed[1], closed[0]
            self._lazy_newest = closed[-1]
            self._live = {s: wins[s] for s in open_}
        return out

    def _splice_closed(self, cutoff: float | None) -> bool:
        """Rewrite the packed closed windows without decoding them into windows: drop those
        ending at or before ``cutoff`` (None: none), append the live windows but the newest
        (closed: every one of them is newer than every packed one), and merge the result for
        summaries.  True when done; False, with nothing changed, where this would not give what
        decoding gives (a payload not as :meth:`_pack` writes it: non-canonical varints,
        untrimmed or empty-but-keyed bins, starts not increasing; nothing left; the newest live
        window expiring too), and the caller decodes.

        Why: in the hourly cycle that crosses midnight UTC every container of the fleet closes
        a day and expires its oldest, and the general path decoded ~14 closed days into
        sketches, re-encoded each one and merged them one by one: that cycle cost the handlers
        2.8-3.1x any other.  Here the kept records' bytes are reused as they are (the first
        one's step re-based), the varints decoded once for the merge (one count array, as
        :meth:`_merge_packed`), and only the payload is compressed again.  The text, the merge
        and the peaks are the general path's, bit for bit (``tests/unit/test_fast_paths.py``);
        the offsets of kept windows go through ``start + offset - start`` as a decoded
        window's do."""
        assert self._lazy is not None
        w = self.window_seconds
        live = sorted(self._live)
        if not live or (cutoff is not None and live[-1] + w <= cutoff):
            return False
        append = live[:-1]
        if cutoff is None and self._append_closed(append):
            return True
        records: list[tuple[int, int, int, int, IntArray, tuple[float, ...]]] = []
        floats: list[float] = []
        first_kept = -1  # index of the first kept record's step among the payload's ints
        pos = 0
        previous: int | None = None
        try:  # what _records checks (ValueError: corrupt; the caller's decode raises it again)
            raw = unpack_raw(self._lazy)
            for start, count, zero, min_key, bins, old in self._raw_records(raw, 0):
                if (previous is not None and start <= previous) or bins.size > self.bin_limit:
                    return False  # starts not increasing, too many bins: as decoding does
                previous = start
                if bins.size and not (bins[0] > 0 and bins[-1] > 0):
                    return False  # untrimmed bins (decoding would trim them)
                if not bins.size and min_key != 0:
                    return False  # decoding would reset the key of an empty sketch
                if cutoff is None or start + w > cutoff:
                    if first_kept < 0:
                        first_kept = pos
                    total, low, high, first, last = old
                    kept = (total, low, high, start + first - start, start + last - start)
                    floats += kept
                    records.append((start, count, zero, min_key, bins, kept))
                pos += 5 + int(bins.size)
        except ValueError:
            return False
        (n,) = struct.unpack_from("<H", raw)
        body = raw[2 + 40 * n :]
        octets = np.frombuffer(body, dtype=np.uint8)
        if bool(((octets[1:] == 0) & (octets[:-1] >= 0x80)).any()):
            return False  # a value not in its shortest form (not what _pack writes)
        parts: list[bytes] = []
        prev = 0
        if records:
            # the kept bytes from the first kept record's second value (its step is re-based)
            ends = np.flatnonzero(octets < 0x80)  # the last byte of every value
            parts += (uvarint_zigzag(records[0][0] // w), body[int(ends[first_kept]) + 1 :])
            prev = records[-1][0]
        for s in append:
            if s <= prev and records:
                return False
            if cutoff is not None and s + w <= cutoff:
                continue  # expired as well (dropped with the others below)
            win = self._live[s]
            kept = (win.sum, win.min, win.max, win.first_ts - s, win.last_ts - s)
            floats += kept
            zero, min_key, counts = win.sketch.bins()
            records.append((s, win.count, zero, min_key, counts, kept))
            parts += (uvarint_zigzag((s - prev) // w), win.encoded())
            prev = s
        if not records:
            return False
        head = struct.pack("<H", len(records)) + struct.pack(f"<{len(floats)}d", *floats)
        self._lazy = pack_raw(head + b"".join(parts))
        self._lazy_oldest, self._lazy_newest = records[0][0], records[-1][0]
        self._closed_merged, self._closed_peaks = self._merge_records(records)
        self._closed = None
        for s in append:
            del self._live[s]
        return True

    def _append_closed(self, append: list[int]) -> bool:
        """:meth:`_splice_closed` when nothing expires (a history still filling: a backfill
        closes a day with every record of day-long chunks) and this process packed the closed
        windows and holds their merge: the new closed windows appended to the payload's bytes
        as they are, and to the merge, without decoding the packed ones.  The same text, merge
        and peaks as the general path, bit for bit (``tests/unit/test_fast_paths.py``): the
        scalars are added in the same order; the bins of the merge so far and of the new days
        are folded once, which is what folding them all gives (the floor depends only on the
        largest key, and a folded merge's lowest bin is its floor); the kept records' floats
        are the bytes the general path writes again (their offsets were exact differences).
        False (nothing changed) when it does not apply."""
        merged, newest, text = self._closed_merged, self._lazy_newest, self._lazy
        if merged is None or newest is None or text is None or not append:
            return False
        if append[0] <= newest:
            return False
        w = self.window_seconds
        raw = unpack_raw(text)
        (n,) = struct.unpack_from("<H", raw)
        head_end = 2 + 40 * n
        # the merge so far as the first record (at start 0: ``0 + first_ts`` is first_ts
        # exactly), then the new days: :meth:`_merge_records` adds them in the general path's
        # order and folds the bins once
        zero, min_key, bins = merged.sketch.bins()
        so_far = (merged.sum, merged.min, merged.max, merged.first_ts, merged.last_ts)
        records = [(0, merged.count, zero, min_key, bins, so_far)]
        floats: list[float] = []
        parts: list[bytes] = []
        prev = newest
        for s in append:
            win = self._live[s]
            kept = (win.sum, win.min, win.max, win.first_ts - s, win.last_ts - s)
            floats += kept
            parts += (uvarint_zigzag((s - prev) // w), win.encoded())
            prev = s
            records.append((s, win.count, *win.sketch.bins(), kept))
        total, peaks = self._merge_records(records)
        head = struct.pack("<H", n + len(append)) + raw[2:head_end]
        tail = struct.pack(f"<{len(floats)}d", *floats) + raw[head_end:] + b"".join(parts)
        self._lazy, self._lazy_newest = pack_raw(head + tail), prev
        self._closed_merged, self._closed_peaks = total, (*self._closed_peaks, *peaks[1:])
        self._closed = None
        for s in append:
            del self._live[s]
        return True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowedUsage:
        wu = cls(
            int(data["w"]),
            alpha=float(data["a"]),
            bin_limit=int(data["l"]),
            zero_threshold=float(data["t"]),
        )
        if "c" not in data:
            return wu._read_v1(data)
        wu._unpack(str(data["o"]), 0, wu._live)
        if "s" in data:
            # decoded when needed; decompressing now checks zlib's checksum of the payload
            text = str(data["c"])
            unpack_raw(text)
            wu._lazy, wu._lazy_oldest = text, int(data["s"])
            if wu._live and min(wu._live) <= wu._lazy_oldest:
                raise ValueError("corrupt windowed usage payload: open window not the newest")
        return wu

    def _unpack(self, text: str, start: int, into: dict[int, Window]) -> int:
        for at, count, zero, min_key, bins, floats in self._records(text, start):
            win = self._new_window()
            win.sketch.set_bins(zero, min_key, bins, checked=True)
            win.count = count
            win.sum, win.min, win.max, first, last = floats
            win.first_ts, win.last_ts = at + first, at + last
            into[at] = win
            start = at
        return start

    def _records(
        self, text: str, start: int
    ) -> Iterator[tuple[int, int, int, int, IntArray, tuple[float, ...]]]:
        """The packed windows one by one: ``(start, count, zero, min_key, bins, (sum, min, max,
        first - start, last - start))``, checked as they are read (ValueError when corrupt)."""
        return self._raw_records(unpack_raw(text), start)

    def _raw_records(
        self, raw: bytes, start: int
    ) -> Iterator[tuple[int, int, int, int, IntArray, tuple[float, ...]]]:
        """:meth:`_records` of a payload already unpacked."""
        if len(raw) < 2:
            raise ValueError("corrupt windowed usage payload")
        (n,) = struct.unpack_from("<H", raw)
        end = 2 + 8 * 5 * n
        if len(raw) < end:
            raise ValueError("corrupt windowed usage payload")
        floats = struct.unpack_from(f"<{5 * n}d", raw, 2)
        ints = unzigzag(decode_uvarints(raw[end:]))
        # one vectorized sign check for the whole payload: only min_key fields may be negative
        negative = np.flatnonzero(ints < 0).tolist()
        pos = 0
        for i in range(n):
            if pos + 5 > ints.size:
                raise ValueError("corrupt windowed usage payload")
            step, count, zero, min_key, nbins = ints[pos : pos + 5].tolist()
            if negative and negative[0] < pos + 5 + max(nbins, 0):
                if negative[0] != pos + 3:
                    raise ValueError("corrupt windowed usage payload")
                negative.pop(0)
            pos += 5
            if nbins < 0 or pos + nbins > ints.size:
                raise ValueError("corrupt windowed usage payload")
            start += step * self.window_seconds
            yield start, count, zero, min_key, ints[pos : pos + nbins], floats[5 * i : 5 * i + 5]
            pos += nbins
        if pos != ints.size or negative:
            raise ValueError("corrupt windowed usage payload")

    def _read_v1(self, data: dict[str, Any]) -> WindowedUsage:
        """The v1 layout (one blob per resource), as written before closed days were cached."""
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
            start += step * self.window_seconds
            win = self._new_window()
            win.sketch.set_bins(zero, min_key, ints[pos : pos + nbins])
            pos += nbins
            win.count = count
            win.sum, win.min, win.max, first, last = (c[i] for c in cols)
            win.first_ts, win.last_ts = start + first, start + last
            self._live[start] = win
        if pos != ints.size:
            raise ValueError("corrupt windowed usage payload")
        return self

    @property
    def is_empty(self) -> bool:
        return not self._live and self._lazy is None

    def nbytes(self) -> int:
        """Estimated memory of the decoded windows (see :meth:`ContainerUsage.nbytes`)."""
        wins = [*self._live.values()]
        if self._closed_merged is not None:
            wins.append(self._closed_merged)
        total = sum(_WINDOW_OVERHEAD + w.sketch.bins()[2].nbytes for w in wins)
        if self._lazy is not None and self._closed_merged is None:
            # the merge a summary will decode: about a wide day's sketch
            total += _WINDOW_OVERHEAD + 2 * max((w.sketch.num_bins for w in wins), default=0) * 8
        return total

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

    __slots__ = ("floor", "high_water", "ranges", "resources")

    def __init__(self, window_seconds: int = DEFAULT_WINDOW_SECONDS) -> None:
        self.high_water: float | None = None
        # every sample at or before ``floor`` counts as already seen (see the module docstring)
        self.floor: float = -math.inf
        # disjoint, sorted ``(start, end]`` ranges of accepted chunks, at most MAX_RANGES
        self.ranges: list[tuple[float, float]] = []
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
        rejected: dict[str, int] = {}
        converted: dict[str, tuple[FloatArray, FloatArray]] = {}
        for resource, samples in batch.samples.items():
            if resource not in self.resources:
                rejected["unknown-resource"] = rejected.get("unknown-resource", 0) + _size(samples)
                continue
            pair = arrays.get(resource) if arrays is not None else None
            if pair is None:
                pair = to_arrays(samples)
            if pair is None:
                rejected["wrong-type"] = rejected.get("wrong-type", 0) + _size(samples)
                continue
            converted[resource] = pair
        return self.ingest_arrays(
            batch.start,
            batch.end,
            converted,
            history_seconds=history_seconds,
            window_seconds=window_seconds,
            total=sum(_size(s) for s in batch.samples.values()),
            rejected=rejected,
        )

    def ingest_arrays(
        self,
        start: float,
        end: float,
        arrays: Mapping[str, tuple[FloatArray, FloatArray]],
        *,
        history_seconds: float = DEFAULT_HISTORY_SECONDS,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        total: int | None = None,
        rejected: dict[str, int] | None = None,
        validated: bool = False,
    ) -> IngestResult:
        """:meth:`ingest` of chunk ``(start, end]`` whose samples are already numpy arrays per
        resource (``(timestamps, values)``): the aggregator's columnar records and the one-shot
        fold samples without a Python object per sample.  ``validated``: the arrays come from
        :func:`engine.core.samples.validate_chunk` (finite, in range, inside the chunk), so
        those checks are not repeated."""
        if total is None:
            total = sum(int(ts.size) for ts, _ in arrays.values())
        hw = self.high_water
        if hw is not None and end <= hw and self._covers(start, end):
            return IngestResult(duplicates=total)
        duplicates = 0
        late = 0
        rejected = dict(rejected or {})
        fresh: dict[str, tuple[FloatArray, FloatArray]] = {}

        def reject(reason: str, n: int) -> None:
            if n:
                rejected[reason] = rejected.get(reason, 0) + n

        for resource, (ts, values) in arrays.items():
            if resource not in self.resources:
                reject("unknown-resource", int(ts.size))
                continue
            inside: Any = None
            if not validated:
                good = np.isfinite(ts) & np.isfinite(values) & (values >= 0)
                reject("invalid-value", int(ts.size - np.count_nonzero(good)))
                inside = good & (ts > start) & (ts <= end)
                reject("outside-chunk", int(np.count_nonzero(good) - np.count_nonzero(inside)))
            if hw is not None:
                old = ts <= hw if inside is None else inside & (ts <= hw)
                if old.any():
                    seen = old & self._covered(ts)
                    duplicates += int(np.count_nonzero(seen))
                    late += int(np.count_nonzero(old) - np.count_nonzero(seen))
                    inside = ~seen if inside is None else inside & ~seen
            if inside is not None and not inside.all():
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
            if hw is not None and expired:  # the oldest samples are the ones that expire
                late -= min(expired, int(np.count_nonzero(ts <= hw)))
            if by_resource[resource]:  # the newest samples are the last to expire
                newest_accepted = max(newest_accepted, float(ts.max()))
        if accepted:
            # The mark is the newest sample actually stored, never the batch's claimed ``end``:
            # a chunk that says it ends in ten years moves nothing it did not deliver.
            self.high_water = newest_accepted if hw is None else max(hw, newest_accepted)
            self._remember(start, end, self.high_water - history_seconds)
            # Keep every resource on the same horizon, even one that got no samples this time.
            newest = max((w.newest_ts or -math.inf) for w in self.resources.values())
            if math.isfinite(newest):
                for wu in self.resources.values():
                    wu.expire(newest, history_seconds)
        else:
            late = 0
        return IngestResult(accepted, duplicates, sorted(rejected.items()), by_resource, late)

    def _covers(self, start: float, end: float) -> bool:
        """Whether ``(start, end]`` lies wholly at or below the floor or in one accepted range."""
        if end <= self.floor:
            return True
        lo = max(start, self.floor)
        return any(s <= lo and end <= e for s, e in self.ranges)

    def _covered(self, ts: FloatArray) -> Any:
        mask = ts <= self.floor
        for s, e in self.ranges:
            mask |= (ts > s) & (ts <= e)
        return mask

    def _remember(self, start: float, end: float, horizon: float) -> None:
        """Add an accepted chunk's range; merge touching ranges; keep at most MAX_RANGES."""
        start = max(start, self.floor)
        if end <= start:
            return
        merged: list[tuple[float, float]] = []
        for s, e in sorted([*self.ranges, (start, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        while merged and merged[0][1] <= horizon:  # wholly past the horizon: fold into the floor
            self.floor = max(self.floor, merged.pop(0)[1])
        while len(merged) > MAX_RANGES:
            self.floor = max(self.floor, merged.pop(0)[1])
        self.ranges = merged

    def summary(self, resource: str) -> UsageSummary:
        wu = self.resources.get(resource)
        return UsageSummary() if wu is None else wu.summary()

    def expire(self, now: float, history_seconds: float = DEFAULT_HISTORY_SECONDS) -> int:
        """Age out windows of a container that stopped reporting (``now`` is a parameter)."""
        return sum(wu.expire(now, history_seconds) for wu in self.resources.values())

    @property
    def is_empty(self) -> bool:
        return all(wu.is_empty for wu in self.resources.values())

    def nbytes(self) -> int:
        """Estimated memory of this decoded object (for caches bounded by bytes): the bin
        arrays plus a measured per-window and per-object overhead."""
        total = _OBJECT_OVERHEAD
        for wu in self.resources.values():
            total += wu.nbytes()
        return total

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": FORMAT_VERSION, "hw": self.high_water}
        if self.ranges or math.isfinite(self.floor):
            out["f"] = self.floor if math.isfinite(self.floor) else None
            out["rg"] = [[s, e] for s, e in self.ranges]
        for r, wu in self.resources.items():
            out[r] = wu.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerUsage:
        if data.get("v") not in READABLE_VERSIONS:
            raise ValueError(f"unsupported usage state version: {data.get('v')!r}")
        cu = cls()
        hw = data.get("hw")
        cu.high_water = None if hw is None else float(hw)
        if "rg" in data:
            f = data.get("f")
            cu.floor = -math.inf if f is None else float(f)
            cu.ranges = [(float(s), float(e)) for s, e in data["rg"]][:MAX_RANGES]
        elif cu.high_water is not None:  # written before ranges: all up to the mark was seen
            cu.floor = cu.high_water
        for r in RESOURCES:
            if r in data:
                cu.resources[r] = WindowedUsage.from_dict(data[r])
        return cu

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContainerUsage):
            return NotImplemented
        return (
            self.high_water == other.high_water
            and self.floor == other.floor
            and self.ranges == other.ranges
            and self.resources == other.resources
        )

    __hash__ = None  # type: ignore[assignment]
