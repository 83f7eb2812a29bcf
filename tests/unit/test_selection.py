"""Selections pushed into PromQL, and counters turned into rates (engine.core.selection)."""

from __future__ import annotations

import pytest

from engine.core.selection import Selection, counter_rates, parse_selector, pod_matcher
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
