"""The hot-path shortcuts of the recommender (issue 11, burst latency) give exactly what the
generic code they replace gives: the Theil-Sen median and index pairs against numpy's own,
a sketch's first merge and its batched quantiles against the general merge and one-at-a-time
rank lookups.  Exact equality (signed zeros and NaN included), so recommendations stay byte for
byte what they were."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.estimators import _median, _pairs
from engine.core.sketch import QuantileSketch
from engine.core.usage import Window, WindowedUsage


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1.0]),
        min_size=0,
        max_size=40,
    )
)
def test_median_is_numpys_bit_for_bit(values: list[float]) -> None:
    arr = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on empty / overflowing input
        expected = float(np.median(arr))
    assert same(_median(arr), expected), (values, _median(arr), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 14, 15, 40])
def test_pairs_are_numpys_and_read_only(n: int) -> None:
    x, i, j, dx = _pairs(n)
    ri, rj = np.triu_indices(n, k=1)
    rx = np.arange(n, dtype=np.float64)
    assert np.array_equal(x, rx) and np.array_equal(i, ri) and np.array_equal(j, rj)
    assert np.array_equal(dx, rx[rj] - rx[ri])
    with pytest.raises(ValueError):
        dx[...] = 0.0  # shared between calls: must not be writable


def reference_quantiles(sk: QuantileSketch, qs: list[float]) -> list[float | None]:
    """The one-rank-at-a-time lookup the batched version replaced."""
    n = sk.count
    if n == 0:
        return [None for _ in qs]
    cum = np.cumsum(sk._counts)
    out: list[float | None] = []
    for q in qs:
        rank = (n - 1) * q
        if rank < sk._zero:
            out.append(0.0)
            continue
        idx = int(np.searchsorted(cum, rank - sk._zero, side="right"))
        out.append(sk.value(sk._min_key + min(idx, cum.size - 1)))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e12), min_size=0, max_size=300),
    st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=0, max_size=300),
    st.sampled_from([8, 64, 2048]),
)
def test_first_merge_and_batched_quantiles_match_the_general_path(
    a: list[float], b: list[float], limit: int
) -> None:
    qs = [0.0, 0.5, 0.9, 0.95, 0.99, 1.0]
    src = QuantileSketch(bin_limit=limit)
    src.add_many(a)
    fast = QuantileSketch(bin_limit=limit)
    fast.merge(src)  # into an empty sketch: the copy shortcut
    # the general path: merge into a sketch that already has bins, then compare with the union
    seeded = QuantileSketch(bin_limit=limit)
    seeded.add_many(b)
    seeded.merge(src)
    union = QuantileSketch(bin_limit=limit)
    union.add_many(b)
    union.merge(fast)
    assert fast._min_key == src._min_key or src.num_bins == 0
    assert np.array_equal(fast._counts, src._counts) and fast._zero == src._zero
    assert fast._counts is not src._counts or src.num_bins == 0
    assert np.array_equal(seeded._counts, union._counts) and seeded._min_key == union._min_key
    for sk in (src, fast, seeded):
        assert sk.quantiles(qs) == reference_quantiles(sk, qs)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=64.0),
    st.floats(min_value=0.0, max_value=2.0**40),
    st.sampled_from(["autopilot", "observe", "recommend"]),
    st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z", fullmatch=True),
)
def test_history_raw_is_the_validated_record_byte_for_byte(
    cpu: float, mem: float, mode: str, name: str
) -> None:
    from engine.core.guardrails import decide
    from engine.core.model import ContainerSpec, HistoryRecord, ResourcePair, WorkloadSpec
    from engine.core.outbox import history_raw
    from engine.core.policy import validate_policy
    from engine.core.recommend import recommend
    from tests.fakes import flat_summary
    from tests.unit.classic_params import classic_policy_doc

    now = 1_764_300_000.0
    spec = WorkloadSpec(
        namespace="smarthealth",
        kind="Deployment",
        name="api",
        replicas=2,
        containers=[ContainerSpec(name=name, requests=ResourcePair(cpu=0.5, memory=512.0 * 2**20))],
    )
    policy = validate_policy(classic_policy_doc({"id": "p", "mode": mode}))
    usage = {name: {"cpu": flat_summary(cpu, now=now), "memory": flat_summary(mem, now=now)}}
    rec = recommend(spec, usage, policy, now=now)
    decision = decide(rec, spec, policy, last_applied_at=None, last_applied_id=None, now=now)
    for kind, item in (("recommendations", rec), ("decisions", decision)):
        slow = HistoryRecord(kind=kind, record=item.model_dump(mode="json"))  # type: ignore[arg-type]
        assert history_raw(kind, item) == slow.model_dump_json().encode()  # type: ignore[arg-type]


def test_memoized_bucket_values_are_the_mappings_and_survive_a_full_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.core import sketch

    monkeypatch.setattr(sketch, "_VALUES_MAX", 50)
    for accuracy in (0.01, 0.005):
        sk = QuantileSketch(relative_accuracy=accuracy)
        for key in [*range(-300, 300, 7), *range(-300, 300, 7)]:  # twice: memo hits
            assert sk.value(key) == float(sk._mapping.value(key))
        assert len(sketch._VALUES[sk._mapping]) <= 50


def test_estimator_quantile_reads_stored_points_and_interpolates_between() -> None:
    from engine.core.estimators import quantile
    from tests.fakes import flat_summary

    s = flat_summary(2.0).model_copy(update={"p50": 1.0, "p90": 2.0, "p95": 3.0, "p99": 4.0})
    assert quantile(s, 95.0) == (3.0, "p95") and quantile(s, 100.0) == (s.max, "max")
    value, label = quantile(s, 97.0)
    assert value == 3.0 + (97.0 - 95.0) / (99.0 - 95.0) * (4.0 - 3.0)
    assert label == "p97 (between p95 and p99)"


def _windowed(days: list[list[float]], limit: int, window: int = 100) -> WindowedUsage:
    """Closed windows (one per list, ``window`` s apart, empty lists skipped) + an open one."""
    wu = WindowedUsage(window, bin_limit=limit)
    for d, values in enumerate([*days, [1.0]]):
        if values:
            ts = d * window + np.linspace(1.0, window - 1.0, len(values))
            wu.add(ts, np.asarray(values, dtype=np.float64), history_seconds=1e9)
    return wu


def _reference_merge(wu: WindowedUsage, text: str) -> tuple[Window, tuple[tuple[int, float], ...]]:
    """What the closed days' merge was: every packed window decoded, then merged in a row."""
    packed: dict[int, Window] = {}
    wu._unpack(text, 0, packed)
    return wu._merge(packed), tuple((s, packed[s].max) for s in sorted(packed))


def _same_window(a: Window, b: Window) -> None:
    for name in ("count", "sum", "min", "max", "first_ts", "last_ts", "gen"):
        x, y = getattr(a, name), getattr(b, name)
        assert same(float(x), float(y)), (name, x, y)
    za, ka, ca = a.sketch.bins()
    zb, kb, cb = b.sketch.bins()
    assert (za, ka) == (zb, kb) and np.array_equal(ca, cb) and ca.dtype == cb.dtype


# closed days' samples (a list per day, empty days included) and the sketches' bin limits: 4
# and 16 make the merges fold their lowest bins
CLOSED_DAYS = st.lists(
    st.lists(
        st.floats(min_value=0.0, max_value=1e12) | st.sampled_from([0.0, 1e-12, 0.5]),
        max_size=60,
    ),
    min_size=1,
    max_size=16,
)
BIN_LIMITS = st.sampled_from([4, 16, 64, 1024])


@settings(max_examples=200, deadline=None)
@given(CLOSED_DAYS, BIN_LIMITS)
def test_packed_closed_days_merge_as_one_array_like_day_by_day(
    days: list[list[float]], limit: int
) -> None:
    wu = _windowed(days, limit)
    wu.to_dict()  # packs the closed windows (held packed: a summary merges them)
    text = wu._lazy
    if text is None:  # a single window: nothing closed to merge
        return
    fast, fast_peaks = wu._merge_packed(text)
    slow, slow_peaks = _reference_merge(wu, text)
    _same_window(fast, slow)
    assert fast_peaks == slow_peaks
    assert fast.sketch.quantiles([0.5, 0.99]) == slow.sketch.quantiles([0.5, 0.99])
    # and the summary a cold (just decoded) state gives is the one a warm state gives
    cold = WindowedUsage.from_dict(wu.to_dict())
    assert cold.summary() == _windowed(days, limit).summary()


def test_packed_merge_of_repeated_or_odd_windows_is_the_day_by_day_merge() -> None:
    wu = _windowed([[1.0, 2.0], [3.0], [5.0, 1e9]], 16)
    wins = wu.windows
    starts = sorted(wins)
    # a start repeated (the later window replaces the earlier when decoded one by one), and
    # bins with zeros at their ends (set_bins trims them)
    for order in ([starts[0], starts[0], starts[1]], [starts[1], starts[1]], starts):
        text = wu._pack(wins, order)
        fast, fast_peaks = wu._merge_packed(text)
        slow, slow_peaks = _reference_merge(wu, text)
        _same_window(fast, slow)
        assert fast_peaks == slow_peaks
    empty = WindowedUsage(100)
    _same_window(empty._merge_packed(empty._pack({}, []))[0], empty._merge({}))


@pytest.mark.parametrize("cut", [3, 10, 20, 45])
def test_a_corrupt_packed_payload_fails_the_same_way_merged_or_decoded(cut: int) -> None:
    from engine.core.sketch import pack_raw, unpack_raw

    wu = _windowed([[1.0, 2.0, 3.0], [4.0, 5.0]], 1024)
    wu.to_dict()
    assert wu._lazy is not None
    raw = unpack_raw(wu._lazy)
    for bad in (pack_raw(raw[:cut]), pack_raw(raw + b"\x05"), "x", pack_raw(raw[:1])):
        errors = []
        for merge in (wu._merge_packed, partial(_reference_merge, wu)):
            with pytest.raises(ValueError) as exc:
                merge(bad)
            errors.append(str(exc.value))
        assert errors[0] == errors[1]
    limited = WindowedUsage(100, bin_limit=2)  # more bins than its limit: what set_bins refuses
    for merge in (limited._merge_packed, partial(_reference_merge, limited)):
        with pytest.raises(ValueError, match="corrupt sketch bins"):
            merge(wu._lazy)


def _reference_decode_uvarints(data: bytes) -> np.ndarray:
    """The byte-position loop :func:`decode_uvarints` was (per position: a mask and a gather)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise ValueError("truncated varint stream")
    ends = np.flatnonzero((b & 0x80) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 9:
        raise ValueError("varint too long")
    payload = (b & 0x7F).astype(np.int64)
    out = np.zeros(ends.size, dtype=np.int64)
    for i in range(int(lengths.max())):
        live = lengths > i
        out[live] |= payload[starts[live] + i] << (7 * i)
    return out


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(0, 127) | st.integers(0, 2**14) | st.integers(0, 2**63 - 1), max_size=80)
    | st.binary(max_size=40)
)
def test_varint_decoding_is_the_byte_position_loop(values: list[int] | bytes) -> None:
    from engine.core.sketch import decode_uvarints, encode_uvarints

    data = (
        values
        if isinstance(values, bytes)  # any bytes: valid, truncated or too long
        else encode_uvarints(np.asarray(values, dtype=np.int64))
    )
    try:
        expected = _reference_decode_uvarints(data)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            decode_uvarints(data)
        return
    got = decode_uvarints(data)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    if not isinstance(values, bytes):
        assert got.tolist() == values


def test_estimator_knobs_dumped_once_per_policy_object_are_each_ones_own_dump() -> None:
    from engine.core.estimators import EstimatorParams
    from engine.core.recommend import _estimator_doc

    zero, negative = EstimatorParams(cpu_headroom=0.0), EstimatorParams(cpu_headroom=-0.0)
    assert zero == negative  # equal params (0.0 == -0.0) that dump differently: never shared
    for params in (zero, negative, zero, EstimatorParams(cpu_percentile=90)):
        doc = _estimator_doc(params)
        assert doc == params.model_dump(mode="json")
        assert str(doc["cpu_headroom"]) == str(params.cpu_headroom)


@pytest.mark.parametrize("seed", range(8))
def test_a_closing_day_is_spliced_into_the_packed_days_as_decoding_them_would_pack_it(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~20 days of chunks of 1-30 hours, sometimes a gap of days (several days expire at once),
    # some chunks all zero (windows without bins), small bin limits for some seeds (folding)
    # through two states: ``fast`` as the worker runs it, ``slow`` decoded before every change
    # and write (the path before the splice).  Every write and every summary must be the same.
    rng = np.random.default_rng(seed)
    day, history = 86400, 14 * 86400
    limit = 24 if seed % 3 == 2 else 2048
    fast = WindowedUsage(day, bin_limit=limit)
    slow = WindowedUsage(day, bin_limit=limit)
    taken: list[bool] = []
    original = WindowedUsage._splice_closed

    def counting(self: WindowedUsage, cutoff: float | None) -> bool:
        taken.append(original(self, cutoff))
        return taken[-1]

    monkeypatch.setattr(WindowedUsage, "_splice_closed", counting)
    t = 1_700_000_000.0 + float(rng.integers(0, day))
    while t < 1_700_000_000.0 + 20 * day:
        if rng.random() < 0.05:
            t += float(rng.integers(2, 5)) * day  # the container stopped reporting for days
        hours = int(rng.integers(1, 31))
        ts = t + 60.0 * np.arange(1, hours * 60 + 1)
        values = rng.lognormal(-2.0, 1.5, ts.size)
        if rng.random() < 0.15:
            values[:] = 0.0
        t = float(ts[-1])
        if rng.random() < 0.3:  # a state read back from its changelog value
            fast = WindowedUsage.from_dict(fast.to_dict())
        slow.windows  # noqa: B018 - decode the packed days
        assert fast.add(ts, values, history_seconds=history) == slow.add(
            ts, values, history_seconds=history
        )
        if rng.random() < 0.5:  # a summary between the ingest and the write, or after it
            assert fast.summary() == slow.summary()
        slow.windows  # noqa: B018
        assert fast.to_dict() == slow.to_dict()
        assert fast.summary() == slow.summary()
        assert fast == slow
    assert any(taken), "the splice never ran"


def test_a_payload_the_splice_does_not_reproduce_is_decoded_as_before() -> None:
    # a closed window whose bins are stored untrimmed (not what _pack writes): the splice
    # declines, the general path decodes it, and the result is the same state either way
    day = 86400
    wu = WindowedUsage(day)
    start = 1_700_000_000 // day * day
    for d in range(3):
        wu.add(np.array([start + d * day + 60.0]), np.array([0.5]), history_seconds=14 * day)
    data = wu.to_dict()
    text = data["c"]
    odd = WindowedUsage(day)
    wins: dict[int, Window] = {}
    odd._unpack(text, 0, wins)
    first = wins[min(wins)]
    *_, counts = first.sketch.bins()
    first.sketch._counts = np.concatenate([counts, [0]])  # untrimmed
    first._raw = None
    data["c"] = odd._pack(wins, sorted(wins))
    a, b = WindowedUsage.from_dict(data), WindowedUsage.from_dict(data)
    assert a._splice_closed(None) is False  # declined, nothing changed
    assert a.to_dict() == b.to_dict()
    b.windows  # noqa: B018
    later = np.array([start + 20 * day + 60.0])
    assert a.add(later, np.array([1.0]), history_seconds=14 * day) == b.add(
        later, np.array([1.0]), history_seconds=14 * day
    )
    assert a.to_dict() == b.to_dict() and a.summary() == b.summary()


@pytest.mark.parametrize("cut", [3, 10, 20, 45])
def test_a_corrupt_packed_payload_at_a_day_close_raises_as_the_decode_did(
    cut: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the splice declines a payload it cannot read; the general decode then raises its error
    from engine.core.sketch import pack_raw, unpack_raw

    day, history = 86400, 14 * 86400
    wu = WindowedUsage(day)
    t0 = 1_700_000_000.0 // day * day
    for d in range(3):
        wu.add(np.array([t0 + d * day + 60.0]), np.array([0.5]), history_seconds=history)
    wu.to_dict()
    assert wu._lazy is not None
    raw = unpack_raw(wu._lazy)
    original = WindowedUsage._splice_closed
    declined: list[bool] = []

    def spy(self: WindowedUsage, cutoff: float | None) -> bool:
        declined.append(not original(self, cutoff))
        return not declined[-1]

    # the oldest day expires, the others stay: the splice reads the payload
    newest = t0 + 15.5 * day  # cutoff 1.5 days after t0: day 0 expires, day 1 stays packed
    for bad in (pack_raw(raw[:cut]), pack_raw(raw + b"\x05"), pack_raw(raw[:1])):
        errors = []
        for splice in (True, False):
            state = WindowedUsage(day)
            state._unpack(wu._pack_open(wu._live), 0, state._live)
            state._lazy, state._lazy_oldest = bad, int(t0)
            with monkeypatch.context() as m:
                m.setattr(WindowedUsage, "_splice_closed", spy)
                if not splice:  # the path before the splice: decode at once
                    m.setattr(WindowedUsage, "_splice_closed", lambda self, cutoff: False)
                with pytest.raises(ValueError) as exc:
                    state.expire(newest, history)
            errors.append(str(exc.value))
        assert errors[0] == errors[1]
    assert declined == [True, True, True]  # it ran on each corrupt payload, and declined
    good = WindowedUsage(day)
    good._unpack(wu._pack_open(wu._live), 0, good._live)
    good._lazy, good._lazy_oldest = wu._lazy, int(t0)
    with monkeypatch.context() as m:
        m.setattr(WindowedUsage, "_splice_closed", spy)
        assert good.expire(newest, history) == 0  # spliced: the packed day 0 dropped
    assert declined[-1] is False and good._lazy_oldest == int(t0 + day)


@pytest.mark.parametrize("seed", range(8))
def test_a_closing_day_appended_to_the_packed_days_is_what_decoding_them_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backfill: chunks of 1-30 hours (a day per record for some seeds), nothing expiring yet,
    # some chunks all zero, a small bin limit for some seeds (merges that fold), sometimes a
    # state read back from its changelog value.  ``fast`` is never decoded between writes (so a
    # closing day is appended to the packed ones), ``slow`` before every change and write.
    rng = np.random.default_rng(100 + seed)
    day, history = 86400, 60 * 86400
    limit = 24 if seed % 3 == 2 else 2048
    fast = WindowedUsage(day, bin_limit=limit)
    slow = WindowedUsage(day, bin_limit=limit)
    appended: list[bool] = []
    original = WindowedUsage._append_closed

    def counting(self: WindowedUsage, starts: list[int]) -> bool:
        appended.append(original(self, starts))
        return appended[-1]

    monkeypatch.setattr(WindowedUsage, "_append_closed", counting)
    t = 1_700_000_000.0 + float(rng.integers(0, day))
    while t < 1_700_000_000.0 + 25 * day:
        hours = 24 if seed % 2 else int(rng.integers(1, 31))
        ts = t + 60.0 * np.arange(1, hours * 60 + 1)
        values = rng.lognormal(-2.0, 2.5, ts.size)  # a wide range: folding at the small limit
        if rng.random() < 0.15:
            values[:] = 0.0
        t = float(ts[-1])
        if rng.random() < 0.1:
            fast = WindowedUsage.from_dict(fast.to_dict())
        slow.windows  # noqa: B018 - decode the packed days
        assert fast.add(ts, values, history_seconds=history) == slow.add(
            ts, values, history_seconds=history
        )
        if rng.random() < 0.3:
            assert fast.summary() == slow.summary()
        slow.windows  # noqa: B018
        assert fast.to_dict() == slow.to_dict()
        assert fast.summary() == slow.summary()
    assert sum(appended) >= 5, appended
    assert fast.windows == slow.windows  # decoded at last: the same windows


@settings(max_examples=300, deadline=None)
@given(
    CLOSED_DAYS,
    st.lists(
        st.floats(min_value=0.0, max_value=1e15) | st.sampled_from([0.0, 1e-12, 3.0]),
        min_size=1,
        max_size=40,
    ),
    BIN_LIMITS,
)
def test_the_open_day_summary_is_the_merged_windows_summary(
    days: list[list[float]], today: list[float], limit: int
) -> None:
    """The hourly cycle's summary (packed closed days + the open day, without building their
    merged window) is field for field the summary of the merged window, bins folded alike."""
    from engine.core.usage import SUMMARY_QUANTILES

    wu = _windowed(days, limit)
    ts = len(days) * 100 + np.linspace(1.0, 99.0, len(today))
    wu.add(ts, np.asarray(today, dtype=np.float64), history_seconds=1e9)  # the open day
    wu.to_dict()  # the closed days held packed, as after a changelog write
    if wu._lazy is None or len(wu._live) != 1:
        return
    total = wu.merged()  # the general path
    assert total is not None
    want = wu._summary(total, total.sketch.quantiles(list(SUMMARY_QUANTILES)))
    got = wu.summary()
    assert got == want
    for name in ("p50", "p90", "p95", "p99", "max", "mean", "first_ts", "last_ts"):
        assert same(getattr(got, name), getattr(want, name)), name
