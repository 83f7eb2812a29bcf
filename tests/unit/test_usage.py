"""Windowed per-container usage state: idempotent ingest, expiry, summaries, codec, size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.model import MetricsBatch
from engine.core.sketch import QuantileSketch, encode_uvarints, exact_quantile, zigzag
from engine.core.usage import MAX_RANGES, ContainerUsage, IngestResult, Window, WindowedUsage

DAY = 86_400
T0 = 1_750_032_000.0  # a UTC midnight


def _batch(start: float, end: float, samples: dict[str, list[tuple[float, float]]]) -> MetricsBatch:
    return MetricsBatch(
        namespace="ns", kind="Deployment", workload="api", container="app",
        start=start, end=end, samples=samples,
    )  # fmt: skip


def _series(n: int, seed: int = 0, step: float = 60.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T0 + step * np.arange(1, n + 1)
    diurnal = 1 + 0.5 * np.sin(ts / DAY * 2 * np.pi)
    cpu = rng.lognormal(np.log(0.05), 0.7, n) * diurnal
    cpu[rng.random(n) < 0.05] = 0.0
    mem = 4e8 * diurnal * rng.normal(1.0, 0.03, n)
    return ts, cpu, mem


def _chunks(ts: np.ndarray, cpu: np.ndarray, mem: np.ndarray, size: int) -> list[MetricsBatch]:
    out = []
    for i in range(0, ts.size, size):
        sl = slice(i, i + size)
        start = ts[i] - 60.0
        out.append(
            _batch(
                start,
                float(ts[sl][-1]),
                {
                    "cpu": list(zip(ts[sl].tolist(), cpu[sl].tolist(), strict=True)),
                    "memory": list(zip(ts[sl].tolist(), mem[sl].tolist(), strict=True)),
                },
            )
        )
    return out


def _state_after(batches: list[MetricsBatch]) -> ContainerUsage:
    cu = ContainerUsage()
    for b in batches:
        cu.ingest(b)
    return cu


def test_overlapping_batch_counts_only_new_samples_per_resource() -> None:
    ts, cpu, mem = _series(500)
    (b,) = _chunks(ts, cpu, mem, 500)
    cu = ContainerUsage()
    cu.ingest(b.model_copy(update={"end": float(ts[299])}))
    result = cu.ingest(b)  # the first 300 samples per resource were already ingested
    assert result.duplicates == 600
    assert result.accepted_by_resource == {"cpu": 200, "memory": 200}
    assert result.accepted == 400


def test_same_batch_twice_equals_once() -> None:
    ts, cpu, mem = _series(500)
    (b,) = _chunks(ts, cpu, mem, 500)
    cu = ContainerUsage()
    first = cu.ingest(b)
    once = cu.to_dict()
    again = cu.ingest(b)
    assert first == IngestResult(
        accepted=1000, duplicates=0, rejected=[], accepted_by_resource={"cpu": 500, "memory": 500}
    )
    assert again == IngestResult(accepted=0, duplicates=1000, rejected=[])
    assert cu.to_dict() == once


def test_overlapping_batch_only_adds_samples_after_the_high_water_mark() -> None:
    ts, cpu, mem = _series(300)
    a = _chunks(ts[:200], cpu[:200], mem[:200], 200)[0]
    overlap = _chunks(ts[100:], cpu[100:], mem[100:], 200)[0]  # samples 100..299
    cu = ContainerUsage()
    cu.ingest(a)
    res = cu.ingest(overlap)
    assert res.accepted == 2 * 100 and res.duplicates == 2 * 100
    assert cu.high_water == ts[-1]
    reference = _state_after(_chunks(ts, cpu, mem, 200))
    for r in ("cpu", "memory"):
        got, want = cu.summary(r), reference.summary(r)
        assert got.count == want.count == 300
        assert (got.p95, got.p99, got.max) == (want.p95, want.p99, want.max)
        assert got.mean == pytest.approx(want.mean, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    size=st.integers(7, 400),
    replays=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_redelivery_anywhere_changes_nothing(seed: int, size: int, replays: list[int]) -> None:
    ts, cpu, mem = _series(1500, seed)
    batches = _chunks(ts, cpu, mem, size)
    stream: list[MetricsBatch] = []
    for i, b in enumerate(batches):
        stream.append(b)
        stream.extend(batches[r % (i + 1)] for r in replays if r % 3 == i % 3)
    clean, noisy = _state_after(batches), _state_after(stream)
    for r in ("cpu", "memory"):
        want, got = clean.resources[r], noisy.resources[r]
        assert want.windows.keys() == got.windows.keys()
        for k in want.windows:
            assert want.windows[k].sketch == got.windows[k].sketch
            assert want.windows[k].count == got.windows[k].count
        assert clean.summary(r) == noisy.summary(r)


def test_samples_outside_the_chunk_and_bad_values_are_rejected() -> None:
    cu = ContainerUsage()
    res = cu.ingest(
        _batch(
            T0,
            T0 + 600,
            {
                "cpu": [(T0, 1.0), (T0 + 60, 0.5), (T0 + 601, 1.0), (T0 + 120, float("nan"))],
                "memory": [(T0 + 60, -5.0), (T0 + 60, 1e9)],
                "gpu": [(T0 + 60, 1.0)],
            },
        )
    )
    assert res.accepted == 2
    assert dict(res.rejected) == {"outside-chunk": 2, "invalid-value": 2, "unknown-resource": 1}
    assert res.rejected_count == 5
    assert cu.summary("cpu").count == 1 and cu.summary("memory").max == 1e9
    assert cu.summary("gpu").count == 0


def test_summary_matches_exact_percentiles_of_the_retained_samples() -> None:
    ts, cpu, mem = _series(5 * 1440, seed=4)
    cu = _state_after(_chunks(ts, cpu, mem, 1000))
    for r, values in (("cpu", cpu), ("memory", mem)):
        s = cu.summary(r)
        assert s.count == values.size
        assert s.max == values.max() and s.mean == pytest.approx(values.mean(), rel=1e-9)
        assert (s.first_ts, s.last_ts) == (ts[0], ts[-1])
        for q, got in ((0.5, s.p50), (0.9, s.p90), (0.95, s.p95), (0.99, s.p99)):
            exact = exact_quantile(values, q)
            assert abs(got - exact) <= 0.01 * exact


def test_windows_older_than_history_are_dropped() -> None:
    ts, cpu, mem = _series(20 * 1440, seed=5)
    cu = _state_after(_chunks(ts, cpu, mem, 1440))
    newest = float(ts[-1])
    for r in ("cpu", "memory"):
        wins = cu.resources[r].windows
        assert len(wins) <= 15
        assert min(wins) + DAY > newest - 14 * DAY
        s = cu.summary(r)
        kept = ts >= min(wins)
        assert s.count == int(kept.sum()) < ts.size
        assert s.first_ts == ts[kept][0]
    assert cu.expire(newest + 30 * DAY) > 0 and cu.is_empty
    assert cu.summary("cpu").count == 0


def test_a_backfill_longer_than_history_reports_the_expired_part() -> None:
    ts, cpu, mem = _series(3 * 1440, seed=6)
    (b,) = _chunks(ts, cpu, mem, ts.size)
    cu = ContainerUsage()
    res = cu.ingest(b, history_seconds=DAY)
    rejected = dict(res.rejected)["older-than-history"]
    assert rejected > 0 and res.accepted + rejected == 2 * ts.size
    assert len(cu.resources["cpu"].windows) <= 2


def test_changing_the_window_length_keeps_every_sample() -> None:
    ts, cpu, mem = _series(2 * 1440, seed=7)
    batches = _chunks(ts, cpu, mem, 360)
    cu = ContainerUsage(window_seconds=3600)
    for b in batches[:4]:
        cu.ingest(b, window_seconds=3600)
    assert len(cu.resources["cpu"].windows) > 2
    for b in batches[4:]:
        cu.ingest(b, window_seconds=DAY)
    assert all(s % DAY == 0 for s in cu.resources["cpu"].windows)
    got, want = cu.summary("cpu"), _state_after(batches).summary("cpu")
    assert got.model_dump(exclude={"mean"}) == want.model_dump(exclude={"mean"})
    assert got.mean == pytest.approx(want.mean, rel=1e-12)


def test_json_round_trip_is_equal() -> None:
    ts, cpu, mem = _series(3 * 1440 + 17, seed=8)
    cu = _state_after(_chunks(ts, cpu, mem, 500))
    text = json.dumps(cu.to_dict())
    back = ContainerUsage.from_dict(json.loads(text))
    assert back == cu
    assert back.to_dict() == cu.to_dict()
    assert back.summary("cpu") == cu.summary("cpu")
    # the restored state keeps deduplicating
    assert back.ingest(_chunks(ts, cpu, mem, 500)[-1]).accepted == 0
    empty = ContainerUsage()
    assert ContainerUsage.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty
    with pytest.raises(ValueError):
        ContainerUsage.from_dict({"v": 99})
    broken = cu.to_dict()
    broken["cpu"]["c"] = broken["cpu"]["c"][:-8]
    with pytest.raises(ValueError):
        ContainerUsage.from_dict(broken)


def test_corrupt_payloads_are_value_errors_never_crashes() -> None:
    ts, cpu, mem = _series(2 * 1440, seed=3)
    good = _state_after(_chunks(ts, cpu, mem, 500)).to_dict()
    for resource in ("cpu", "memory"):
        for part in ("c", "o"):
            text = good[resource][part]
            for bad in (text[:1] + "!!!!", "x" + text[1:], text[:-4], "r" + "AAAA" * 3):
                doc = json.loads(json.dumps(good))
                doc[resource][part] = bad
                # packed closed days decode when first needed: the error may come then
                with pytest.raises(ValueError):
                    ContainerUsage.from_dict(doc).summary(resource)


def test_state_written_in_the_v1_layout_is_still_read() -> None:
    """A changelog written before v2 (one packed blob per resource) recovers unchanged."""
    fixture = json.loads((Path(__file__).parent / "data" / "usage_v1.json").read_text())
    assert fixture["state"]["v"] == 1
    cu = ContainerUsage.from_dict(fixture["state"])
    for r in ("cpu", "memory"):
        # the fixture predates the per-window peaks (growth-aware memory), compared apart
        got = cu.summary(r).model_dump(exclude={"window_max", "window_seconds"})
        assert got == fixture["summary"][r]
        assert cu.summary(r).window_max == tuple(
            w.max for _, w in sorted(cu.resources[r].windows.items())
        )
    again = ContainerUsage.from_dict(json.loads(json.dumps(cu.to_dict())))
    assert again == cu and cu.to_dict()["v"] == 2


def test_state_written_with_a_zlib_open_day_is_still_read() -> None:
    """A changelog value written before the open day was stored without zlib (commit
    824908d: ``o`` with header ``z``) recovers unchanged, and is rewritten in the new form."""
    fixture = json.loads((Path(__file__).parent / "data" / "usage_v2_zlib_open.json").read_text())
    assert {fixture["state"][r]["o"][0] for r in ("cpu", "memory")} == {"z"}
    cu = ContainerUsage.from_dict(fixture["state"])
    for r in ("cpu", "memory"):
        assert cu.summary(r).model_dump(mode="json") == fixture["summary"][r]
    now = cu.to_dict()
    assert {now[r]["o"][0] for r in ("cpu", "memory")} == {"r"}
    assert ContainerUsage.from_dict(json.loads(json.dumps(now))) == cu


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 2**40), max_size=300),
    count=st.integers(0, 2**40),
    zero=st.integers(0, 2**40),
    min_key=st.integers(-(2**31), 2**31),
)
def test_a_window_encodes_to_the_zigzag_varints_of_its_whole_row(
    counts: list[int], count: int, zero: int, min_key: int
) -> None:
    """``Window.encoded`` (head ints in Python, counts as ``2 * count``) gives byte for byte
    what the generic zigzag + varint encoder gives for ``[count, zero, min_key, nbins, *counts]``
    -- the layout every reader of codec v2 decodes."""
    win = Window(QuantileSketch())
    arr = np.asarray(counts, dtype=np.int64)
    win.sketch._zero, win.sketch._min_key, win.sketch._counts = zero, min_key, arr
    win.count = count
    row = np.asarray([count, zero, min_key, arr.size, *counts], dtype=np.int64)
    assert win.encoded() == encode_uvarints(zigzag(row))


def test_the_open_day_is_stored_without_zlib_and_closed_days_with_it() -> None:
    ts, cpu, mem = _series(2 * 1440 + 300, seed=13)
    cu = _state_after(_chunks(ts, cpu, mem, 500))
    doc = cu.to_dict()
    for r in ("cpu", "memory"):
        assert doc[r]["o"][0] == "r" and doc[r]["c"][0] == "z"
    # a corrupt uncompressed open day is an error, not a silently different state
    for bad in (doc["cpu"]["o"][:-4], doc["cpu"]["o"] + "AAAA", "r" + doc["cpu"]["o"][5:]):
        broken = json.loads(json.dumps(doc))
        broken["cpu"]["o"] = bad
        with pytest.raises(ValueError):
            ContainerUsage.from_dict(broken)


def test_closed_days_are_packed_once_and_only_the_open_day_is_rewritten() -> None:
    ts, cpu, mem = _series(3 * 1440, seed=4)
    batches = _chunks(ts, cpu, mem, 60)  # hourly
    cu = _state_after(batches[: 2 * 24 + 1])  # two closed days, an open third
    first = cu.to_dict()
    for b in batches[2 * 24 + 1 : 2 * 24 + 5]:
        cu.ingest(b)
        now = cu.to_dict()
        for r in ("cpu", "memory"):
            assert now[r]["c"] is first[r]["c"]  # the very same string: not re-packed
            assert now[r]["o"] != first[r]["o"]
        assert ContainerUsage.from_dict(json.loads(json.dumps(now))) == cu
    for b in batches[3 * 24 - 1 :]:
        cu.ingest(b)
    assert ContainerUsage.from_dict(cu.to_dict()) == cu


def test_fourteen_days_of_one_minute_samples_fit_in_4_kib_per_resource() -> None:
    ts, cpu, mem = _series(14 * 1440, seed=9)
    cu = _state_after(_chunks(ts, cpu, mem, 1000))
    for r in ("cpu", "memory"):
        size = len(json.dumps(cu.resources[r].to_dict(), separators=(",", ":")))
        assert size <= 4096, (r, size)
    # the container-level accepted ranges at their bound stay within the same budget
    for h in range(0, 4 * MAX_RANGES, 2):
        cu.ingest(_hour(14 * 24 + 1 + h, seed=h))  # every other hour after the series: gaps
    assert len(cu.ranges) == MAX_RANGES
    whole = len(json.dumps(cu.to_dict(), separators=(",", ":")))
    assert whole <= 4096 * len(cu.resources), whole


def test_empty_state_summarizes_to_no_data() -> None:
    wu = WindowedUsage()
    assert wu.summary().count == 0 and wu.merged() is None
    cu = ContainerUsage()
    res = cu.ingest(_batch(T0, T0 + 60, {}))
    # nothing stored, nothing moves: the mark follows stored samples only
    assert res == IngestResult() and cu.high_water is None


def test_encoding_follows_every_change_of_the_current_window() -> None:
    ts, cpu, mem = _series(600, seed=10)
    batches = _chunks(ts, cpu, mem, 100)
    cu = ContainerUsage()
    for b in batches:
        cu.ingest(b)
        encoded = json.loads(json.dumps(cu.to_dict()))  # reuses cached closed windows
        assert ContainerUsage.from_dict(encoded) == cu
    assert ContainerUsage.from_dict(cu.to_dict()).summary("cpu").count == 600


def test_wrong_types_in_an_unvalidated_batch_do_not_crash_ingest() -> None:
    b = MetricsBatch.model_construct(
        namespace="ns", kind="Deployment", workload="api", container="app", start=T0,
        end=T0 + 120, samples={"cpu": [(T0 + 60, 0.5)], "memory": "oops", "gpu": 7},  # type: ignore[dict-item]
    )  # fmt: skip
    res = ContainerUsage().ingest(b)
    assert res.accepted == 1
    assert dict(res.rejected) == {"wrong-type": 1, "unknown-resource": 1}


def test_a_state_decoded_from_the_table_behaves_like_one_never_encoded() -> None:
    """Closed days held packed: late samples, expiry, rewindow and summaries all match a state
    that was never serialized, over 17 days (three days expire) with out-of-order chunks."""
    ts, cpu, mem = _series(17 * 1440, seed=12)
    batches = _chunks(ts, cpu, mem, 97)
    plain, stored = ContainerUsage(), ContainerUsage().to_dict()
    for i, b in enumerate(batches):
        again = ContainerUsage.from_dict(json.loads(json.dumps(stored)))
        kwargs = {"window_seconds": 3600} if i == 300 else {}  # one rewindow mid-way
        assert again.ingest(b, **kwargs) == plain.ingest(b, **kwargs)
        if i % 50 == 0:
            for r in ("cpu", "memory"):
                assert again.summary(r) == plain.summary(r)
        stored = again.to_dict()
    final = ContainerUsage.from_dict(stored)
    assert final == plain
    assert len(plain.resources["cpu"].windows) == 15  # 14 days + the partial oldest


def test_a_late_sample_for_a_packed_day_lands_in_that_day() -> None:
    ts, cpu, mem = _series(4 * 1440, seed=13)
    plain = _state_after(_chunks(ts, cpu, mem, 240)).resources["cpu"]
    lazy = WindowedUsage.from_dict(json.loads(json.dumps(plain.to_dict())))
    late_ts, late_v = np.array([T0 + DAY + 30.0]), np.array([7.5])  # inside day 2 (closed)
    for wu in (plain, lazy):
        assert wu.add(late_ts, late_v, history_seconds=14 * DAY) == 0
    assert lazy == plain and lazy.windows[int(T0) + DAY].max == 7.5
    assert lazy.summary() == plain.summary()


def _hour(h: int, seed: int) -> MetricsBatch:
    """One hourly chunk ``(T0 + h h, T0 + (h+1) h]`` of 1-minute samples."""
    rng = np.random.default_rng(seed)
    ts = T0 + h * 3600 + 60.0 * np.arange(1, 61)
    cpu = rng.uniform(0.01, 2.0, 60)
    return _batch(T0 + h * 3600, T0 + (h + 1) * 3600, {"cpu": list(zip(ts, cpu, strict=True))})


def test_redelivery_changes_nothing_and_a_late_chunk_is_ingested_exactly_once() -> None:
    chunks = [_hour(h, seed=h) for h in range(6)]
    in_order = ContainerUsage()
    for b in chunks:
        in_order.ingest(b)
    # hour 2 arrives after hours 3-5: it is late, not a duplicate
    cu = ContainerUsage()
    for b in (chunks[0], chunks[1], chunks[3], chunks[4], chunks[5]):
        cu.ingest(b)
    before = json.dumps(cu.to_dict())
    res = cu.ingest(chunks[4])  # a re-delivery: counted, changes nothing
    assert res.duplicates == 60 and res.accepted == 0 and res.late == 0
    assert json.dumps(cu.to_dict()) == before
    res = cu.ingest(chunks[2])
    assert (res.accepted, res.late, res.duplicates) == (60, 60, 0)
    res = cu.ingest(chunks[2])  # the late chunk redelivered is now a duplicate
    assert (res.accepted, res.late, res.duplicates) == (0, 0, 60)
    assert cu.high_water == in_order.high_water
    s, ref = cu.summary("cpu"), in_order.summary("cpu")
    assert s.count == ref.count == 360
    assert s.mean == pytest.approx(ref.mean) and s.max == ref.max and s.p95 == ref.p95
    # the three accepted pieces merged into one range once the gap was filled
    assert cu.ranges == [(T0, T0 + 6 * 3600)]
    assert ContainerUsage.from_dict(json.loads(json.dumps(cu.to_dict()))) == cu


def test_a_half_late_chunk_stores_only_its_missing_samples() -> None:
    cu = ContainerUsage()
    cu.ingest(_hour(0, seed=0))
    cu.ingest(_hour(2, seed=2))
    h1 = _hour(1, seed=1)
    both = _batch(
        T0 + 1800, T0 + 3 * 3600, {"cpu": h1.samples["cpu"][30:] + _hour(2, 2).samples["cpu"]}
    )
    res = cu.ingest(both)  # 30 never-stored samples of hour 1, 60 already stored of hour 2
    assert (res.accepted, res.late, res.duplicates) == (30, 30, 60)
    assert cu.summary("cpu").count == 150


def test_ranges_stay_bounded_and_what_they_forget_counts_as_seen() -> None:
    cu = ContainerUsage()
    for h in range(0, 40, 2):  # 20 disjoint chunks, every other hour
        cu.ingest(_hour(h, seed=h))
    assert len(cu.ranges) == MAX_RANGES
    assert cu.floor == T0 + (2 * (20 - MAX_RANGES) - 1) * 3600  # end of the last forgotten one
    n = cu.summary("cpu").count
    old = cu.ingest(_hour(1, seed=1))  # under the floor: cannot be told apart, so not stored twice
    assert (old.accepted, old.duplicates) == (0, 60)
    recent = cu.ingest(_hour(37, seed=37))  # a gap still tracked: a late chunk, stored
    assert (recent.accepted, recent.late) == (60, 60)
    assert cu.summary("cpu").count == n + 60
    assert cu.ingest(_hour(36, seed=36)).duplicates == 60


def test_states_written_before_ranges_keep_everything_up_to_their_mark_a_duplicate() -> None:
    cu = ContainerUsage()
    cu.ingest(_hour(0, seed=0))
    cu.ingest(_hour(2, seed=2))
    old = cu.to_dict()
    del old["f"], old["rg"]  # the layout written before ranges existed
    back = ContainerUsage.from_dict(json.loads(json.dumps(old)))
    assert back.floor == back.high_water and back.ranges == []
    assert back.ingest(_hour(1, seed=1)).duplicates == 60
    fresh = ContainerUsage.from_dict(json.loads(json.dumps(cu.to_dict())))
    assert fresh.ingest(_hour(1, seed=1)).late == 60
