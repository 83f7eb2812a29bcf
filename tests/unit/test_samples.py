"""Sample validation: clean part + counted reasons; the clean part ingests without rejections."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.model import MetricsBatch
from engine.core.samples import MAX_VALUE, sample_count, validate_batch, validate_samples
from engine.core.usage import ContainerUsage

NOW = 1_750_000_000.0
START, END = NOW - 600, NOW


def _batch(samples: dict[str, Any], *, construct: bool = False) -> MetricsBatch:
    fields: dict[str, Any] = {
        "namespace": "ns",
        "kind": "Deployment",
        "workload": "api",
        "container": "app",
        "start": START,
        "end": END,
        "samples": samples,
    }
    if construct:  # bypass pydantic, as a buggy producer inside the process could
        return MetricsBatch.model_construct(**fields)
    return MetricsBatch(**fields)


def test_a_clean_batch_is_returned_as_is() -> None:
    b = _batch({"cpu": [(NOW - 60, 0.0005), (NOW, 0.0)], "memory": [(NOW - 1, 2e8)]})
    clean, reasons = validate_samples(b, now=NOW)
    assert clean is b and reasons == []


def test_every_reason_is_counted_once() -> None:
    b = _batch(
        {
            "cpu": [
                (NOW - 60, 0.5),  # good
                (NOW - 30, math.nan),
                (NOW - 20, math.inf),
                (NOW - 10, -math.inf),
                (NOW - 5, -0.1),
                (NOW - 4, 2000.0),  # > 1024 cores
                (START, 0.5),  # start is outside (start, end]
                (NOW + 400, math.nan),  # future wins over nan: first reason only
                (math.nan, 1.0),
            ],
            "memory": [(NOW - 60, 17 * 2.0**40), (NOW - 60, 1e9), (NOW - 70, MAX_VALUE["memory"])],
            "gpu": [(NOW, 1.0), (NOW, 2.0)],
        }
    )
    clean, reasons = validate_samples(b, now=NOW)
    assert dict(reasons) == {
        "nan": 1,
        "inf": 2,
        "negative": 1,
        "absurd-value": 2,
        "outside-chunk": 1,
        "future-timestamp": 1,
        "bad-timestamp": 1,
        "unknown-resource": 2,
    }
    assert reasons == sorted(reasons)
    assert clean.samples == {
        "cpu": [(NOW - 60, 0.5)],
        "memory": [(NOW - 60, 1e9), (NOW - 70, MAX_VALUE["memory"])],
    }
    assert sample_count(clean) + sum(n for _, n in reasons) == sample_count(b)


def test_future_slack_uses_the_given_now() -> None:
    b = _batch({"cpu": [(NOW - 1, 1.0)]})
    assert validate_samples(b, now=NOW - 400)[1] == [("future-chunk", 1)]
    assert validate_samples(b, now=NOW - 200)[1] == []
    assert validate_samples(b, now=NOW - 400, future_slack=600)[1] == []


def test_a_whole_batch_problem_still_returns_reasons() -> None:
    b = _batch({"gpu": [(NOW, 1.0)] * 5})
    clean, reasons = validate_samples(b, now=NOW)
    assert reasons == [("unknown-resource", 5)] and clean.samples == {}


def test_wrong_types_are_reported() -> None:
    b = _batch(
        {"cpu": [(NOW, 1.0), ("x", 1.0), (NOW,), None, (NOW, None)], "memory": "oops"},
        construct=True,
    )
    clean, reasons = validate_samples(b, now=NOW)
    assert dict(reasons) == {"wrong-type": 5}
    assert clean.samples == {"cpu": [(NOW, 1.0)], "memory": []}


_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 2000),
    st.floats(0, 2e13),
)
_ts = st.one_of(st.floats(START - 100, NOW + 1000), st.just(math.nan))


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["cpu", "memory", "disk"]),
        st.lists(st.tuples(_ts, _value), max_size=30),
    )
)
def test_clean_part_always_ingests_without_rejections(
    samples: dict[str, list[tuple[float, float]]],
) -> None:
    b = _batch(samples)
    clean, reasons = validate_samples(b, now=NOW)
    assert sample_count(clean) + sum(n for _, n in reasons) == sample_count(b)
    for resource, kept in clean.samples.items():
        for ts, v in kept:
            assert START < ts <= END and 0 <= v <= MAX_VALUE[resource]
    res = ContainerUsage().ingest(clean)
    assert res.rejected == [] and res.accepted == sample_count(clean)
    checked = validate_batch(b, now=NOW)
    plain, fast = ContainerUsage(), ContainerUsage()
    plain.ingest(checked.batch)
    fast.ingest(checked.batch, arrays=checked.arrays)
    assert fast == plain
