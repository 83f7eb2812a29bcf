"""Selections pushed into PromQL, and counters turned into rates (engine.core.selection)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.selection import (
    Selection,
    counter_rate_arrays,
    counter_rates,
    left_open_ranges,
    max_per_time,
    parse_selector,
    pod_matcher,
    window_maxima,
)
from engine.errors import ConfigError


def test_label_selector_syntax_and_matchers() -> None:
    reqs = parse_selector(
        "app=api, k8s-app==dns,tier!=batch,team in (a, b),env notin (dev),!legacy,x"
    )
    assert [str(r) for r in reqs] == [
        "app=api", "k8s-app=dns", "tier!=batch", "team in (a,b)", "env notin (dev)", "!legacy", "x",
    ]  # fmt: skip
    assert [r.matcher() for r in reqs] == [
        'label_app="api"',
        'label_k8s_app="dns"',
        'label_tier!="batch"',
        'label_team=~"a|b"',
        'label_env!~"dev"',
        'label_legacy=""',
        'label_x!=""',
    ]
    labels = {"app": "api", "k8s_app": "dns", "tier": "web", "team": "b", "x": "1"}
    assert all(r.matches(labels) for r in reqs)
    assert not parse_selector("team in (c)")[0].matches(labels)


@pytest.mark.parametrize("bad", ["a b=c", "=x", "team in ()"])
def test_bad_selector_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_selector(bad)


def test_selection_matchers_and_description() -> None:
    one = Selection.build(["payments"])
    assert one.namespace_matcher() == 'namespace="payments"'
    two = Selection.build(["b", "a", "b"], "app=api")
    assert two.namespace_matcher() == 'namespace=~"a|b"'
    assert two.describe() == 'namespace "a", "b" and selector "app=api"'
    assert two.selects("a", {"app": "api"}) and not two.selects("c", {"app": "api"})
    assert Selection().everything and Selection().describe() == "the whole cluster"
    with pytest.raises(ConfigError, match="not a Kubernetes namespace"):
        Selection.build(['x"}'])


def test_pod_matcher_escapes_regex_metacharacters() -> None:
    assert pod_matcher(["web-1.2", "api-0"]) == 'pod=~"api-0|web-1\\\\.2"'
    assert pod_matcher([]) == ""


def test_counter_rates_with_a_reset_and_a_gap() -> None:
    values = [(0.0, 10.0), (60.0, 16.0), (120.0, 28.0), (180.0, 3.0), (360.0, 9.0), (420.0, 15.0)]
    assert counter_rates(values, 60) == [(60.0, 0.1), (120.0, 0.2), (180.0, 0.05), (420.0, 0.1)]


def test_counter_rates_over_two_steps_are_promql_rates_over_the_window() -> None:
    t = np.array([0.0, 60, 120, 180, 240, 420, 480, 540])
    v = np.array([0.0, 6, 18, 3, 9, 21, 27, 33])  # a reset at 180, a gap 240 -> 420
    ts, rates = counter_rate_arrays(t, v, 60, 2)
    assert ts.tolist() == [120.0, 180.0, 240.0, 540.0]
    # (0->6->18) / 120; (6->18, reset: 3) / 120; (reset: 3, 3->9) / 120; (21->27->33) / 120
    assert rates.tolist() == [18 / 120, 15 / 120, 9 / 120, 12 / 120]
    one_t, one = counter_rate_arrays(t, v, 60, 1)
    assert list(zip(one_t.tolist(), one.tolist(), strict=True)) == counter_rates(
        list(zip(t.tolist(), v.tolist(), strict=True)), 60
    )


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_counter_rate_windows_of_any_length_match_a_plain_loop(steps: int) -> None:
    """The shifted-slice window sums against the definition, on a counter with resets, gaps
    (a missing step, a longer absence) and uneven scrapes."""
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.choice([60.0, 60, 60, 61, 120, 300], size=400))
    v = np.cumsum(rng.uniform(0, 30, size=400))
    v[150:] -= v[150] - 2.0  # a reset
    ts, rates = counter_rate_arrays(t, v, 60, steps)
    want_t, want = [], []
    for i in range(steps, t.size):
        dts = [t[j] - t[j - 1] for j in range(i - steps + 1, i + 1)]
        if all(0 < d <= 90 for d in dts):
            incs = [
                v[j] - v[j - 1] if v[j] >= v[j - 1] else v[j] for j in range(i - steps + 1, i + 1)
            ]
            want_t.append(t[i])
            want.append(sum(incs) / sum(dts))
    assert ts.tolist() == want_t
    assert rates == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("version", "left_open"),
    [
        ("3.16.0", True),
        ("3.0.0-rc.1", True),
        ("v3.1.0", True),
        ("10.2.1", True),
        ("2.42.0", False),
        ("2.55.1+dirty", False),
        ("", False),
        (None, False),
        ("unknown", False),
    ],
)
def test_left_open_ranges_from_prometheus_3(version: str | None, left_open: bool) -> None:
    assert left_open_ranges(version) is left_open


def test_window_maxima_are_max_over_time_of_closed_windows() -> None:
    """[t - 60, t] as Prometheus 2.x reads it: the sample on a boundary counts in both windows;
    several series of one container are max-ed; an empty window gives no point."""
    t = np.array([30.0, 60, 90, 120, 150, 300, 95])
    v = np.array([5.0, 9, 1, 2, 3, 4, 7])  # the last one from a second series
    times, peaks = window_maxima(t, v, 60, 300, 60)
    assert times.tolist() == [60.0, 120.0, 180.0, 300.0]
    assert peaks.tolist() == [9.0, 9.0, 3.0, 4.0]


def test_max_per_time_is_max_by_over_series_at_the_same_steps() -> None:
    t = np.array([120.0, 60, 180, 60, 120])
    v = np.array([5.0, 1, 7, 3, 2])
    times, peaks = max_per_time(t, v)
    assert times.tolist() == [60.0, 120.0, 180.0]
    assert peaks.tolist() == [3.0, 5.0, 7.0]
