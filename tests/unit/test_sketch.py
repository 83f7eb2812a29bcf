"""Properties of the quantile sketch: 1% accuracy, exact merges, codec, bounded size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.sketch import (
    DEFAULT_ZERO_THRESHOLD,
    QuantileSketch,
    decode_uvarints,
    encode_uvarints,
    exact_quantile,
    pack_ints,
    unpack_ints,
)

QS = (0.5, 0.9, 0.95, 0.99)
FAST = settings(max_examples=60, deadline=None)


def _series(kind: str, n: int, seed: int, scale: float, zero_frac: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "skewed":
        v = rng.lognormal(0.0, 1.5, n)
    elif kind == "bimodal":
        v = np.where(rng.random(n) < 0.7, rng.normal(1.0, 0.05, n), rng.normal(8.0, 0.5, n))
    elif kind == "spiky":
        v = rng.normal(1.0, 0.02, n)
        spikes = rng.random(n) < 0.02
        v[spikes] *= rng.uniform(10, 100, int(spikes.sum()))
    else:  # constant
        v = np.ones(n)
    v = np.abs(v) * scale
    v[rng.random(n) < zero_frac] = 0.0
    return v


def _assert_within_1pct(sk: QuantileSketch, values: np.ndarray) -> None:
    for q in QS:
        exact = exact_quantile(values, q)
        est = sk.quantile(q)
        assert est is not None
        if exact <= DEFAULT_ZERO_THRESHOLD:
            assert abs(est - exact) <= DEFAULT_ZERO_THRESHOLD
        else:
            assert abs(est - exact) <= 0.01 * exact, (q, est, exact)


@FAST
@given(
    kind=st.sampled_from(["skewed", "bimodal", "spiky", "constant"]),
    n=st.integers(1, 5000),
    seed=st.integers(0, 2**32 - 1),
    # CPU cores (tiny fractions) up to memory bytes
    scale=st.sampled_from([0.0005, 0.01, 1.0, 3e8, 6e10]),
    zero_frac=st.sampled_from([0.0, 0.05, 0.5, 0.97]),
)
def test_quantiles_within_one_percent_of_exact(
    kind: str, n: int, seed: int, scale: float, zero_frac: float
) -> None:
    values = _series(kind, n, seed, scale, zero_frac)
    sk = QuantileSketch()
    sk.add_many(values)
    assert sk.count == n
    _assert_within_1pct(sk, values)


@FAST
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=1e11)),
        min_size=1,
        max_size=300,
    )
)
def test_arbitrary_values_within_one_percent(values: list[float]) -> None:
    arr = np.asarray(values)
    sk = QuantileSketch(bin_limit=4096)  # arbitrary floats span more decades than 1024 bins
    sk.add_many(arr)
    _assert_within_1pct(sk, arr)


def test_batch_insert_matches_the_library_sketch() -> None:
    values = _series("skewed", 20_000, 7, 0.3, 0.1)
    sk = QuantileSketch()
    sk.add_many(values)
    lib = sk.to_ddsketch()
    from ddsketch import LogCollapsingLowestDenseDDSketch

    ref = LogCollapsingLowestDenseDDSketch(sk.relative_accuracy, sk.bin_limit)
    for v in values:
        ref.add(float(v))
    for q in (0.0, *QS, 1.0):
        ours, theirs = sk.quantile(q), ref.get_quantile_value(q)
        assert ours == pytest.approx(theirs, rel=1e-9)
        assert lib.get_quantile_value(q) == pytest.approx(theirs, rel=1e-9)
    keys = sk.keys(values[values > 0])
    assert (keys == [sk._mapping.key(float(v)) for v in values[values > 0]]).all()


def _parts(seed: int, limit: int) -> tuple[list[QuantileSketch], np.ndarray]:
    rng = np.random.default_rng(seed)
    chunks = [
        rng.lognormal(rng.uniform(-8, 8), rng.uniform(0.1, 4), rng.integers(1, 500))
        for _ in range(3)
    ]
    chunks[1][:3] = 0.0
    sketches = []
    for c in chunks:
        s = QuantileSketch(bin_limit=limit)
        s.add_many(c)
        sketches.append(s)
    return sketches, np.concatenate(chunks)


def _merged(*parts: QuantileSketch) -> QuantileSketch:
    out = parts[0].copy()
    for p in parts[1:]:
        out.merge(p)
    return out


@FAST
@given(seed=st.integers(0, 2**32 - 1), limit=st.sampled_from([8, 64, 1024]))
def test_merge_is_associative_commutative_and_equals_the_union(seed: int, limit: int) -> None:
    (a, b, c), everything = _parts(seed, limit)
    left = _merged(_merged(a, b), c)
    right = _merged(a, _merged(b, c))
    swapped = _merged(c, a, b)
    whole = QuantileSketch(bin_limit=limit)
    whole.add_many(everything)
    assert left == right == swapped == whole
    assert left.num_bins <= limit
    assert left.quantiles(list(QS)) == whole.quantiles(list(QS))
    keys = whole.keys(everything[everything > whole.zero_threshold])
    if keys.max() - keys.min() < limit:  # nothing collapsed: the 1% promise survives merging
        _assert_within_1pct(left, everything)


def test_merge_rejects_different_parameters() -> None:
    with pytest.raises(ValueError):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


def test_collapse_keeps_high_quantiles_accurate() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(1e-8, 1e-6, 100), rng.lognormal(0, 0.3, 10_000)])
    sk = QuantileSketch(bin_limit=128)
    sk.add_many(values)
    assert sk.num_bins <= 128
    for q in (0.9, 0.95, 0.99):
        assert sk.quantile(q) == pytest.approx(exact_quantile(values, q), rel=0.01)
    low = sk.quantile(0.001)
    assert low is not None and low > exact_quantile(values, 0.001) * 10  # low tail collapsed


@FAST
@given(
    values=st.lists(st.one_of(st.just(0.0), st.floats(1e-9, 1e12)), max_size=400),
    alpha=st.sampled_from([0.0099, 0.02]),
)
def test_serialization_round_trip(values: list[float], alpha: float) -> None:
    sk = QuantileSketch(alpha)
    sk.add_many(np.asarray(values))
    back = QuantileSketch.from_dict(json.loads(json.dumps(sk.to_dict())))
    assert back == sk
    assert back.quantiles(list(QS)) == sk.quantiles(list(QS))
    assert back.to_dict() == sk.to_dict()


def test_size_is_bounded_regardless_of_sample_count() -> None:
    rng = np.random.default_rng(11)
    sizes = {}
    for n in (10_000, 1_000_000):
        sk = QuantileSketch(bin_limit=256)
        sk.add_many(rng.lognormal(0, 4, n))  # heavy tail: would need >1000 bins uncollapsed
        assert sk.count == n
        assert sk.num_bins <= 256
        sizes[n] = len(json.dumps(sk.to_dict()))
    # 256 bins x at most 3 varint bytes (counts < 2**21), base64, plus the parameters
    assert sizes[1_000_000] <= 256 * 3 * 4 // 3 + 120
    assert sizes[1_000_000] < 4 * sizes[10_000]


def test_empty_and_invalid_input() -> None:
    sk = QuantileSketch()
    assert sk.quantile(0.5) is None and sk.count == 0
    sk.add_many([])
    assert QuantileSketch.from_dict(sk.to_dict()) == sk
    for bad in ([float("nan")], [float("inf")], [-1.0]):
        with pytest.raises(ValueError):
            sk.add_many(bad)
    with pytest.raises(ValueError):
        sk.quantile(1.5)


@given(st.lists(st.integers(-(2**60), 2**60), max_size=200))
def test_packed_int_codec_round_trip(ints: list[int]) -> None:
    arr = np.asarray(ints, dtype=np.int64)
    assert (unpack_ints(pack_ints(arr)) == arr).all()
    assert (unpack_ints(pack_ints(arr, compress=False)) == arr).all()


def test_varint_codec_rejects_truncation() -> None:
    data = encode_uvarints(np.asarray([300, 5], dtype=np.int64))
    assert decode_uvarints(data).tolist() == [300, 5]
    assert len(data) == 3
    with pytest.raises(ValueError):
        decode_uvarints(data[:1])
    with pytest.raises(ValueError):
        unpack_ints("x")
