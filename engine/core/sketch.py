"""A mergeable, bounded quantile sketch (DDSketch) with numpy batch insert and a compact codec.

The value->bin mapping is the published ``ddsketch`` library's :class:`LogarithmicMapping`
(Masson et al., VLDB 2019): bin ``k`` holds values in ``(gamma**(k-1), gamma**k]`` and is
reported as ``2*gamma**k/(1+gamma)``, so any value read back is within ``relative_accuracy`` of
every value that fell into its bin.  The store is a dense numpy count array with the library's
"collapsing lowest" policy: at most ``bin_limit`` bins; when the key range grows beyond that the
lowest bins fold into the lowest kept one (only low quantiles lose accuracy).  We keep our own
numpy store instead of ``ddsketch.store`` because that one is a Python list of floats with
per-key Python loops for add, merge and rank; here a batch of samples costs one ``log2``, one
``bincount`` and one array add.  :meth:`QuantileSketch.to_ddsketch` converts to the library's
sketch (the tests use it as an oracle).

Quantile semantics ("exact" for the accuracy promise): the sketch answers the order statistic
at index ``floor(q*(n-1))`` of the sorted samples -- what ``numpy.percentile(...,
method="lower")`` returns and what ``ddsketch.get_quantile_value`` uses.  With the default
``relative_accuracy`` of 0.0099 the answer is within 1% of that exact value (0.0001 of slack
absorbs float rounding at bin edges).  Values ``<= zero_threshold`` count in a zero bucket and
read back as 0.0: below the threshold the error is absolute (at most the threshold).

Merging is exact on integer counts, hence associative and commutative; collapsing depends only
on the largest key seen, so the merged sketch equals the sketch of the union of the samples.
Serialized size is bounded by ``bin_limit`` varints whatever the sample count.
"""

from __future__ import annotations

import base64
import functools
import math
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch import LogCollapsingLowestDenseDDSketch
from ddsketch.mapping import LogarithmicMapping

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DEFAULT_RELATIVE_ACCURACY = 0.0099
DEFAULT_BIN_LIMIT = 1024  # gamma**1024 ~ 6e8: a dynamic range of ~9 decades before collapsing
DEFAULT_ZERO_THRESHOLD = 1e-9  # CPU cores: a nanocore is zero; memory bytes: < 1 byte is zero

_EMPTY = np.zeros(0, dtype=np.int64)


# --- varint codec (vectorized) ----------------------------------------------------------------


def zigzag(values: IntArray) -> IntArray:
    """Signed -> unsigned so that small magnitudes stay small: 0,-1,1,-2 -> 0,1,2,3."""
    v = values.astype(np.int64)
    return (v << 1) ^ (v >> 63)


def unzigzag(values: IntArray) -> IntArray:
    v = values.astype(np.int64)
    return (v >> 1) ^ -(v & 1)


def encode_uvarints(values: IntArray) -> bytes:
    """LEB128 unsigned varints of non-negative integers, vectorized: one column of 7-bit groups
    per byte length, then the bytes each value needs, row by row (an open day's bins are
    encoded on every changelog write, so this is on the ingest hot path)."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    groups = [v]
    rest = v >> np.uint64(7)
    while rest.any():
        groups.append(rest)
        rest = rest >> np.uint64(7)
    if len(groups) == 1:  # every value below 128: one byte each
        return v.astype(np.uint8).tobytes()
    nbytes = np.ones(v.size, dtype=np.int64)
    for g in groups[1:]:
        nbytes += g > 0
    out = np.empty((v.size, len(groups)), dtype=np.uint8)
    for i, g in enumerate(groups):
        more = (nbytes > i + 1).astype(np.uint8) << np.uint8(7)
        out[:, i] = (g & np.uint64(0x7F)).astype(np.uint8) | more
    return out[np.arange(len(groups)) < nbytes[:, np.newaxis]].tobytes()


def decode_uvarints(data: bytes) -> IntArray:
    """Inverse of :func:`encode_uvarints`; raises ValueError on a truncated stream.

    Vectorized from each value's last byte back (Horner's rule on the 7-bit groups), on the
    values still longer than the bytes read so far: most are one or two bytes, so this is a
    pass or two over the stream (every summary after a decoded-state cache miss decodes its
    closed days' bins: ~2,000 varints per container-resource)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return _EMPTY.copy()
    if b[-1] & 0x80:
        raise ValueError("truncated varint stream")
    last = b < 0x80  # the last byte of a value
    ends = np.flatnonzero(last)
    out = b[ends].astype(np.int64)
    if ends.size == b.size:
        return out
    payload = (b & 0x7F).astype(np.int64)
    # values with a byte before their last one (ends[0] - 1 == -1 reads the stream's last
    # byte, a last byte: the first value never looks past its start)
    longer = np.flatnonzero(~last[ends - 1])
    read = 1
    while longer.size:
        if read == 9:
            raise ValueError("varint too long")
        pos = ends[longer] - read
        out[longer] = (out[longer] << 7) | payload[pos]
        read += 1
        longer = longer[~last[pos - 1]]
    return out


def uvarint_zigzag(value: int) -> bytes:
    """One signed int as a zigzag varint, in plain Python (cheaper than numpy for a scalar)."""
    v = (value << 1) ^ (value >> 63)
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def pack_raw(raw: bytes, *, compress: bool = True) -> str:
    """Varint bytes -> base64 text, zlib'd when that is shorter (header ``z`` or ``r``)."""
    if compress:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return "z" + base64.b64encode(packed).decode("ascii")
    return "r" + base64.b64encode(raw).decode("ascii")


def pack_ints(values: IntArray, *, compress: bool = True) -> str:
    """Signed ints -> base64 text: zigzag varints, zlib'd when that is shorter."""
    return pack_raw(encode_uvarints(zigzag(values)), compress=compress)


def unpack_raw(text: str) -> bytes:
    """Inverse of :func:`pack_raw`; ValueError (zlib.error included) when corrupt."""
    if not text or text[0] not in "zr":
        raise ValueError("bad packed-int header")
    raw = base64.b64decode(text[1:], validate=True)
    if text[0] == "z":
        try:
            raw = zlib.decompress(raw)
        except zlib.error as exc:
            raise ValueError(f"corrupt packed payload: {exc}") from None
    return raw


def unpack_ints(text: str) -> IntArray:
    return unzigzag(decode_uvarints(unpack_raw(text)))


@functools.lru_cache(maxsize=16)
def _mapping(relative_accuracy: float) -> LogarithmicMapping:
    """Mappings are immutable after construction: share one per accuracy."""
    return LogarithmicMapping(relative_accuracy)


# bucket values by mapping (one per accuracy, shared) and key; bounded, cleared when full
_VALUES: dict[LogarithmicMapping, dict[int, float]] = {}
_VALUES_MAX = 65_536


def _add_spans(spans: Iterable[tuple[int, IntArray]], floor_key: int, hi: int) -> IntArray:
    """Bins ``(min_key, counts)`` added into one array of keys ``floor_key..hi``, those below
    ``floor_key`` folded into it (collapsing lowest); untrimmed."""
    out = np.zeros(hi - floor_key + 1, dtype=np.int64)
    for start, cnt in spans:
        if cnt.size == 0:
            continue
        cut = floor_key - start  # bins below floor_key fold into the first kept bin
        if cut > 0:
            out[0] += int(cnt[:cut].sum())
            cnt = cnt[cut:]
            start = floor_key
        out[start - floor_key : start - floor_key + cnt.size] += cnt
    return out


def _fold(spans: Iterable[tuple[int, IntArray]], floor_key: int, hi: int) -> tuple[int, IntArray]:
    """:func:`_add_spans`, returned trimmed as ``(min_key, counts)``."""
    out = _add_spans(spans, floor_key, hi)
    nz = np.flatnonzero(out)
    return floor_key + int(nz[0]), out[nz[0] : nz[-1] + 1]


# --- the sketch -------------------------------------------------------------------------------


class QuantileSketch:
    """DDSketch over non-negative values; integer counts; numpy batch insert."""

    __slots__ = ("_counts", "_mapping", "_min_key", "_zero", "bin_limit", "zero_threshold")

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = DEFAULT_BIN_LIMIT,
        zero_threshold: float = DEFAULT_ZERO_THRESHOLD,
    ) -> None:
        if bin_limit < 1:
            raise ValueError("bin_limit must be >= 1")
        self._mapping = _mapping(float(relative_accuracy))
        self.bin_limit = int(bin_limit)
        self.zero_threshold = max(float(zero_threshold), self._mapping.min_possible)
        self._min_key = 0
        self._counts: IntArray = _EMPTY
        self._zero = 0

    # --- properties
    @property
    def relative_accuracy(self) -> float:
        return float(self._mapping.relative_accuracy)

    @property
    def count(self) -> int:
        return self._zero + int(self._counts.sum())

    @property
    def zero_count(self) -> int:
        return self._zero

    @property
    def num_bins(self) -> int:
        return int(self._counts.size)

    def keys(self, values: FloatArray) -> IntArray:
        """The library mapping's key for each (positive) value, vectorized."""
        mult = self._mapping._multiplier  # the float key() uses
        return np.ceil(np.log2(values) * mult).astype(np.int64)

    def value(self, key: int) -> float:
        """The library mapping's value of ``key`` (memoized: a pure function of the shared
        mapping and the key, asked for again by every summary of every container)."""
        memo = _VALUES.get(self._mapping)
        if memo is None:
            if len(_VALUES) >= 32:  # mappings are shared per accuracy: a handful at most
                _VALUES.clear()
            memo = _VALUES.setdefault(self._mapping, {})
        found = memo.get(key)
        if found is None:
            if len(memo) >= _VALUES_MAX:
                memo.clear()
            found = memo[key] = float(self._mapping.value(key))
        return found

    # --- updates
    def add(self, value: float) -> None:
        self.add_many(np.asarray([value], dtype=np.float64))

    def add_many(self, values: npt.ArrayLike) -> None:
        """Insert a whole array; values must be finite and >= 0 (validate first)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError("sketch values must be finite and non-negative")
        self.add_valid(arr)

    def add_valid(self, arr: FloatArray) -> None:
        """:meth:`add_many` of a 1-D float array already known finite and >= 0 (the usage
        state's windows: their samples were validated before)."""
        pos = arr[arr > self.zero_threshold]
        self._zero += int(arr.size - pos.size)
        if pos.size == 0:
            return
        keys = self.keys(pos)
        lo = int(keys.min())
        counts = np.bincount(keys - lo).astype(np.int64)
        self._add_counts(lo, counts)

    def _add_counts(self, lo: int, counts: IntArray) -> None:
        if counts.size == 0:
            return
        if (
            self._counts.size == 0
            and counts.size <= self.bin_limit
            and counts[0] != 0
            and counts[-1] != 0
        ):
            # into an empty sketch, bins already trimmed and within the limit: what the general
            # path below would compute, as a plain copy (a summary's first merge)
            self._min_key = lo
            self._counts = counts.astype(np.int64, copy=True)
            return
        if self._counts.size == 0:
            new_lo, new_hi = lo, lo + counts.size - 1
        else:
            new_lo = min(lo, self._min_key)
            new_hi = max(lo + counts.size, self._min_key + self._counts.size) - 1
        floor_key = max(new_lo, new_hi - self.bin_limit + 1)
        spans = ((self._min_key, self._counts), (lo, counts))
        self._min_key, self._counts = _fold(spans, floor_key, new_hi)

    def _check_mergeable(self, other: QuantileSketch) -> None:
        if (
            self._mapping.gamma != other._mapping.gamma
            or self.bin_limit != other.bin_limit
            or self.zero_threshold != other.zero_threshold
        ):
            raise ValueError("cannot merge sketches with different parameters")

    def merge(self, other: QuantileSketch) -> None:
        self._check_mergeable(other)
        self._zero += other._zero
        self._add_counts(other._min_key, other._counts)

    def copy(self) -> QuantileSketch:
        new = QuantileSketch.__new__(QuantileSketch)
        new._mapping = self._mapping
        new.bin_limit = self.bin_limit
        new.zero_threshold = self.zero_threshold
        new._min_key = self._min_key
        new._counts = self._counts.copy()
        new._zero = self._zero
        return new

    # --- queries
    def quantiles(self, qs: list[float]) -> list[float | None]:
        """Value at each quantile (0..1); ``None`` when empty."""
        return self.quantiles_of(self._zero, self._min_key, self._counts, qs)

    def quantiles_of(
        self, zero: int, min_key: int, counts: IntArray, qs: list[float]
    ) -> list[float | None]:
        """:meth:`quantiles` of a sketch with this one's mapping and bins ``(zero, min_key,
        counts)`` (counts may carry zero bins at either end: the rank search skips them),
        without building it (:meth:`merged_quantiles`)."""
        if any(not 0.0 <= q <= 1.0 for q in qs):
            raise ValueError(f"quantiles must be in [0, 1]: {qs}")
        cum = np.cumsum(counts)
        n = zero + (int(cum[-1]) if cum.size else 0)  # == self.count
        if n == 0:
            return [None for _ in qs]
        ranks = [(n - 1) * q for q in qs]  # same float expression as numpy's method="lower"
        # one searchsorted for every quantile above the zero bucket
        above = [r - zero for r in ranks if r >= zero]
        found = iter(np.searchsorted(cum, above, side="right").tolist() if above else [])
        last = cum.size - 1
        return [0.0 if r < zero else self.value(min_key + min(next(found), last)) for r in ranks]

    def merged_quantiles(self, other: QuantileSketch, qs: list[float]) -> list[float | None]:
        """``quantiles`` of the merge of this sketch and ``other`` (a copy of this one merged
        with ``other``), without the copy: the two bin arrays added into one and the lowest
        folded as a merge folds them (collapsing depends only on the largest key).  A usage
        summary's sketch is the closed days' merge plus the open day, every cycle."""
        self._check_mergeable(other)
        zero = self._zero + other._zero
        spans = [(self._min_key, self._counts), (other._min_key, other._counts)]
        spans = [(key, counts) for key, counts in spans if counts.size]
        if not spans:
            return self.quantiles_of(zero, 0, _EMPTY, qs)
        floor_key, hi = self._fold_range(spans)
        out = _add_spans(spans, floor_key, hi)  # untrimmed: the rank search skips zero bins
        return self.quantiles_of(zero, floor_key, out, qs)

    def quantile(self, q: float) -> float | None:
        return self.quantiles([q])[0]

    def to_ddsketch(self) -> LogCollapsingLowestDenseDDSketch:
        """The same bins in the library's own sketch (for cross-checks and interop)."""
        sk = LogCollapsingLowestDenseDDSketch(self.relative_accuracy, self.bin_limit)
        if self._zero:
            sk.add(0.0, float(self._zero))
        for i in np.flatnonzero(self._counts):
            key = self._min_key + int(i)
            sk.add(self._mapping.value(key), float(self._counts[i]))
        return sk

    # --- codec
    def bins(self) -> tuple[int, int, IntArray]:
        """``(zero_count, min_key, counts)``: the raw state, for compact joint encodings."""
        return self._zero, self._min_key, self._counts

    def set_bins(self, zero: int, min_key: int, counts: IntArray, *, checked: bool = False) -> None:
        """Restore raw state; ``checked=True``: the caller already verified ``counts >= 0``."""
        counts = np.asarray(counts, dtype=np.int64)
        if zero < 0 or counts.size > self.bin_limit:
            raise ValueError("corrupt sketch bins")
        if not checked and (counts < 0).any():
            raise ValueError("corrupt sketch bins")
        self._zero = int(zero)
        if counts.size and counts[0] > 0 and counts[-1] > 0:  # trimmed already (the common case)
            self._min_key, self._counts = int(min_key), counts.copy()
            return
        if counts.size == 0 or not counts.any():
            self._min_key, self._counts = 0, _EMPTY
            return
        nz = np.flatnonzero(counts)
        self._min_key = int(min_key) + int(nz[0])
        self._counts = counts[nz[0] : nz[-1] + 1].copy()

    def set_folded(self, zero: int, spans: list[tuple[int, IntArray]]) -> None:
        """Set this (empty) sketch to the merge of sketches given as their zero counts' sum and
        their trimmed ``(min_key, counts)``: the bins added into one array and the lowest folded
        once, to what merging them in a row gives (the fold floor depends only on the largest
        key: ``hi - bin_limit + 1`` as soon as any merge folded)."""
        self._zero = int(zero)
        if not spans:
            self._min_key, self._counts = 0, _EMPTY
            return
        self._min_key, self._counts = _fold(spans, *self._fold_range(spans))

    def _fold_range(self, spans: list[tuple[int, IntArray]]) -> tuple[int, int]:
        """``(floor_key, hi)`` of the merge of these (non-empty) spans: the largest key, and the
        lowest one kept within ``bin_limit`` of it (those below fold into it)."""
        lo = min(key for key, _ in spans)
        hi = max(key + counts.size - 1 for key, counts in spans)
        return max(lo, hi - self.bin_limit + 1), hi

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: parameters + ``b`` = base64 of zigzag-varint [zero, min_key, counts...]."""
        head = np.asarray([self._zero, self._min_key], dtype=np.int64)
        return {
            "a": self.relative_accuracy,
            "l": self.bin_limit,
            "t": self.zero_threshold,
            "b": pack_ints(np.concatenate((head, self._counts))),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantileSketch:
        sk = cls(float(data["a"]), int(data["l"]), float(data["t"]))
        ints = unpack_ints(str(data["b"]))
        if ints.size < 2:
            raise ValueError("corrupt sketch payload")
        sk.set_bins(int(ints[0]), int(ints[1]), ints[2:])
        return sk

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return (
            self._mapping.gamma == other._mapping.gamma
            and self.bin_limit == other.bin_limit
            and self.zero_threshold == other.zero_threshold
            and self._zero == other._zero
            and (self._counts.size == 0 or self._min_key == other._min_key)
            and np.array_equal(self._counts, other._counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(alpha={self.relative_accuracy}, count={self.count}, "
            f"bins={self.num_bins}, zero={self._zero})"
        )


def exact_quantile(values: npt.ArrayLike, q: float) -> float:
    """The reference the accuracy promise is stated against (``method="lower"``)."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q, method="lower"))


def relative_error(estimate: float, exact: float) -> float:
    if exact == 0.0:
        return 0.0 if estimate == 0.0 else math.inf
    return abs(estimate - exact) / abs(exact)
