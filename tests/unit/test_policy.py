"""Policy schema, validation errors naming the field, matching and precedence, exclusions."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.core.model import ContainerSpec, Mode, WorkloadSpec
from engine.core.policy import (
    DEFAULT_POLICY,
    Policy,
    exclusion,
    matching,
    policy_for,
    select_policy,
    validate_policy,
)
from engine.errors import InvalidPolicy

MIB = 1024.0 * 1024.0


def workload(
    ns: str = "smarthealth",
    name: str = "patient-api",
    kind: str = "Deployment",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: tuple[str, ...] = ("app",),
) -> WorkloadSpec:
    return WorkloadSpec(
        namespace=ns,
        kind=kind,
        name=name,
        labels=labels or {},
        annotations=annotations or {},
        containers=[ContainerSpec(name=c) for c in containers],
    )


def pol(pid: str, **kw: Any) -> Policy:
    return validate_policy({"id": pid, **kw})


# --- schema ---------------------------------------------------------------------------------------


def test_minimal_document_gets_documented_defaults() -> None:
    p = validate_policy({"id": "p1"})
    assert p.mode is Mode.RECOMMEND and p.priority == 0 and p.version == 1
    e, g = p.estimator, p.guardrails
    # the backtest-tuned defaults (docs/recommendations.md)
    assert (e.cpu_percentile, e.cpu_percentile_mode, e.cpu_burst_cost) == (95, "adaptive", 2.0)
    assert (e.cpu_headroom, e.memory_buffer, e.memory_growth_horizon) == (0.05, 0.60, 7 * 86400)
    assert (e.memory_limit_equals_request, e.memory_request_basis) == (False, "samples")
    assert (e.memory_request_percentile, e.memory_request_buffer) == (99.0, 0.10)
    assert (e.cpu_floor, e.memory_floor, e.max_step, e.min_samples) == (0.010, 100 * MIB, None, 100)
    assert (e.min_history, e.oom_lookback, e.oom_bump_factor) == (3 * 3600, 7 * 86400, 3.0)
    assert (g.min_change, g.cooldown, g.hpa, g.oom) == (0.10, 86400, "memory-only", "protect")
    assert g.min_memory_increase == 0.35
    assert (g.min_decrease, g.min_increase, g.cooldown_tolerance, g.cooldown_scope) == (
        0.40,
        0.0,
        900,
        "decreases",
    )
    assert p.schedule is None


def test_full_document_with_quantities_durations_and_iso_time() -> None:
    p = validate_policy(
        {
            "id": "prod",
            "name": "Production",
            "priority": 10,
            "mode": "autopilot",
            "selectors": {
                "namespaces": ["smarthealth"],
                "labelSelector": {
                    "matchLabels": {"tier": "api"},
                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
                },
            },
            "estimator": {
                "cpu_percentile": 90,
                "cpu_floor": "25m",
                "memory_floor": "256Mi",
                "memory_cap": "4Gi",
                "min_history": "6h",
            },
            "guardrails": {"cooldown": "12h", "hpa": "skip"},
            "schedule": {"windows": [{"days": ["mon", "tue"], "start_hour": 9, "end_hour": 17}]},
            "version": 3,
            "updated_by": "alice",
            "updated_at": "2026-11-01T10:00:00Z",
            "_id": "mongo-object-id",
        }
    )
    assert p.estimator.cpu_floor == 0.025 and p.estimator.memory_cap == 4096 * MIB
    assert p.estimator.min_history == 6 * 3600 and p.guardrails.cooldown == 12 * 3600
    assert p.updated_at == datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp()
    assert validate_policy(p.model_dump(by_alias=True, mode="json")) == p  # round-trips
    assert validate_policy(p.model_dump(mode="json")) == p  # field names work too


@pytest.mark.parametrize(
    ("doc", "field", "fragment"),
    [
        ({}, "id", "Field required"),
        ({"id": ""}, "id", "should match pattern"),
        (
            {"id": "p", "estimator": {"cpu_headroom": 6}},
            "estimator.cpu_headroom",
            "must be 0..5 (got 6)",
        ),
        (
            {"id": "p", "estimator": {"cpu_headroom": -0.1}},
            "estimator.cpu_headroom",
            "must be 0..5",
        ),
        (
            {"id": "p", "estimator": {"cpu_percentile": 40}},
            "estimator.cpu_percentile",
            "must be 50..100 (got 40)",
        ),
        (
            {"id": "p", "estimator": {"memory_percentile": 101}},
            "estimator.memory_percentile",
            "must be 50..100",
        ),
        (
            {"id": "p", "estimator": {"cpu_floor": "1", "cpu_cap": "500m"}},
            "estimator.cpu_cap",
            "must be >= cpu_floor",
        ),
        (
            {"id": "p", "estimator": {"memory_cap": "64Mi"}},
            "estimator.memory_cap",
            "must be >= memory_floor",
        ),
        (
            {"id": "p", "estimator": {"cpu_floor": "lots"}},
            "estimator.cpu_floor",
            "not a valid cpu quantity",
        ),
        ({"id": "p", "estimator": {"cpu_floor": -1}}, "estimator.cpu_floor", "must be 0..4096"),
        ({"id": "p", "estimator": {"max_step": 0.5}}, "estimator.max_step", "must be 1..1000"),
        ({"id": "p", "estimator": {"headrom": 0.2}}, "estimator.headrom", "Extra inputs"),
        (
            {"id": "p", "estimator": {"cpu_limit_strategy": "magic"}},
            "estimator.cpu_limit_strategy",
            "'none', 'ratio' or 'percentile'",
        ),
        (
            {"id": "p", "guardrails": {"min_change": 1.5}},
            "guardrails.min_change",
            "must be 0..1 (got 1.5)",
        ),
        (
            {"id": "p", "guardrails": {"cooldown": "soon"}},
            "guardrails.cooldown",
            "not a valid duration",
        ),
        ({"id": "p", "guardrails": {"hpa": "ignore"}}, "guardrails.hpa", "'skip', 'memory-only'"),
        ({"id": "p", "mode": "yolo"}, "mode", "'observe', 'recommend' or 'autopilot'"),
        ({"id": "p", "version": 0}, "version", "must be 1..9007199254740992"),
        ({"id": "p", "updated_at": "yesterday"}, "updated_at", "ISO-8601"),
        (
            {
                "id": "p",
                "selectors": {
                    "labelSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}
                },
            },
            "selectors.labelSelector.matchExpressions.0",
            "needs at least one value",
        ),
        (
            {
                "id": "p",
                "selectors": {
                    "labelSelector": {
                        "matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]
                    }
                },
            },
            "selectors.labelSelector.matchExpressions.0",
            "takes no values",
        ),
        (
            {"id": "p", "schedule": {"windows": [{"start_hour": 18, "end_hour": 9}]}},
            "schedule.windows.0.end_hour",
            "must be after start_hour",
        ),
        (
            {"id": "p", "schedule": {"windows": [{"days": ["someday"]}]}},
            "schedule.windows.0.days.0",
            "'mon'",
        ),
        ({"id": "p", "schedule": {"windows": []}}, "schedule.windows", "at least 1 item"),
        # a flag for a number, a number as text: refused, not coerced (true was 1.0: 100 %)
        ({"id": "p", "priority": True}, "priority", "valid integer"),
        ({"id": "p", "estimator": {"cpu_headroom": True}}, "estimator.cpu_headroom", "number"),
        ({"id": "p", "estimator": {"max_step": True}}, "estimator.max_step", "number"),
        ({"id": "p", "estimator": {"cpu_percentile": "95"}}, "estimator.cpu_percentile", "number"),
    ],
)
def test_invalid_policies_name_the_field(doc: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        validate_policy(doc)
    assert caught.value.field == field
    assert fragment in caught.value.reason
    assert str(caught.value).startswith(f"{field}: ")


def test_a_huge_offending_value_is_named_not_echoed() -> None:
    """A selector of 10,000 namespaces is rejected with a message of bounded size."""
    doc = {"id": "p", "selectors": {"namespaces": [f"ns{i}" for i in range(10_000)]}}
    with pytest.raises(InvalidPolicy) as info:
        validate_policy(doc)
    text = str(info.value)
    assert "selectors.namespaces" in text and "at most 256 items" in text
    assert len(text) < 600 and "characters)" in text


def test_numbers_stay_numbers_and_yaml_dates_are_read() -> None:
    """Strict only about kinds: an integer where a fraction is allowed, an enum as its text, a
    date parsed by a YAML reader all still validate."""
    from datetime import UTC, datetime

    doc = {"id": "p", "mode": "autopilot", "estimator": {"cpu_headroom": 1, "max_step": 2}}
    policy = validate_policy({**doc, "updated_at": datetime(2026, 11, 1, 10, tzinfo=UTC)})
    assert policy.estimator.cpu_headroom == 1.0 and policy.mode.value == "autopilot"


def test_not_a_document() -> None:
    with pytest.raises(InvalidPolicy) as caught:
        validate_policy(["id", "p"])  # type: ignore[arg-type]
    assert caught.value.field == "policy"


# --- matching -------------------------------------------------------------------------------------


def test_selectors_match() -> None:
    w = workload(labels={"tier": "api", "env": "prod"}, containers=("app", "istio-proxy"))
    assert pol("a").selectors.matches(w)  # catch-all
    assert pol("b", selectors={"namespaces": ["smart*"]}).selectors.matches(w)
    assert not pol("c", selectors={"namespaces": ["kube-*"]}).selectors.matches(w)
    assert pol(
        "d", selectors={"workloads": ["patient-*"], "kinds": ["Deployment"]}
    ).selectors.matches(w)
    assert not pol("e", selectors={"kinds": ["StatefulSet"]}).selectors.matches(w)
    assert pol("f", selectors={"containers": ["istio-*"]}).selectors.matches(w)
    assert not pol("g", selectors={"containers": ["db"]}).selectors.matches(w)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ({"key": "env", "operator": "In", "values": ["prod", "stage"]}, True),
        ({"key": "env", "operator": "In", "values": ["dev"]}, False),
        ({"key": "env", "operator": "NotIn", "values": ["dev"]}, True),
        ({"key": "missing", "operator": "NotIn", "values": ["x"]}, True),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, False),
        ({"key": "env", "operator": "Exists"}, True),
        ({"key": "missing", "operator": "Exists"}, False),
        ({"key": "missing", "operator": "DoesNotExist"}, True),
        ({"key": "env", "operator": "DoesNotExist"}, False),
    ],
)
def test_match_expressions(expr: dict[str, Any], expected: bool) -> None:
    p = pol(
        "p",
        selectors={"labelSelector": {"matchLabels": {"tier": "api"}, "matchExpressions": [expr]}},
    )
    assert p.selectors.matches(workload(labels={"tier": "api", "env": "prod"})) is expected
    assert not p.selectors.matches(workload(labels={"tier": "web", "env": "prod"}))


# --- precedence -----------------------------------------------------------------------------------


def pick(policies: list[Policy], w: WorkloadSpec | None = None) -> str | None:
    w = w or workload(labels={"tier": "api"})
    shuffled = policies[:]
    random.Random(3).shuffle(shuffled)
    found = select_policy(shuffled, w)
    assert found == select_policy(list(reversed(policies)), w)  # input order never matters
    return found.id if found else None


def test_highest_priority_wins_over_specificity() -> None:
    broad = pol("broad", priority=10)
    narrow = pol("narrow", priority=1, selectors={"workloads": ["patient-api"]})
    assert pick([broad, narrow]) == "broad"


def test_tie_on_priority_most_specific_level_wins() -> None:
    by_name = pol("by-name", selectors={"workloads": ["patient-*"]})
    by_label = pol("by-label", selectors={"labelSelector": {"matchLabels": {"tier": "api"}}})
    by_ns = pol("by-ns", selectors={"namespaces": ["smarthealth"]})
    catch_all = pol("all")
    assert pick([by_name, by_label, by_ns, catch_all]) == "by-name"
    assert pick([by_label, by_ns, catch_all]) == "by-label"
    assert pick([by_ns, catch_all]) == "by-ns"
    assert pick([catch_all]) == "all"


def test_tie_on_level_more_constraints_win() -> None:
    one = pol("one", selectors={"namespaces": ["smarthealth"]})
    two = pol("two", selectors={"namespaces": ["smarthealth"], "kinds": ["Deployment"]})
    assert pick([one, two]) == "two"


def test_tie_on_specificity_most_recently_updated_then_id() -> None:
    old = pol("zz-old", updated_at=1000)
    new = pol("aa-new", updated_at=2000)
    assert pick([old, new]) == "aa-new"
    b, a = pol("b", updated_at=5), pol("a", updated_at=5)
    assert pick([b, a]) == "a"


def test_no_match_gives_none_and_default_policy_applies() -> None:
    only_prod = pol("prod", selectors={"namespaces": ["prod"]})
    assert select_policy([only_prod], workload()) is None
    assert policy_for([only_prod], workload()) is DEFAULT_POLICY
    assert DEFAULT_POLICY.mode is Mode.RECOMMEND
    assert [p.id for p in matching([only_prod, pol("x")], workload())] == ["x"]


# --- exclusions and schedule ----------------------------------------------------------------------


def test_exclusions() -> None:
    p = pol(
        "p",
        guardrails={
            "exclusions": {
                "namespaces": ["kube-system", "monitoring"],
                "labels": {"kubefinops.io/tier": "critical"},
                "workloads": ["legacy-*"],
            }
        },
    )
    assert exclusion(workload(), p) is None
    assert "annotation" in (
        exclusion(workload(annotations={"kubefinops.io/exclude": "true"}), p) or ""
    )
    assert exclusion(workload(annotations={"kubefinops.io/exclude": "false"}), p) is None
    assert "namespace monitoring" in (exclusion(workload(ns="monitoring"), p) or "")
    assert "label" in (exclusion(workload(labels={"kubefinops.io/tier": "critical"}), p) or "")
    assert "legacy-billing" in (exclusion(workload(name="legacy-billing"), p) or "")
    assert exclusion(workload(ns="kube-system"), DEFAULT_POLICY) is not None  # default excludes


def test_schedule_windows_in_utc() -> None:
    p = pol("p", schedule={"windows": [{"days": ["sat", "sun"], "start_hour": 2, "end_hour": 6}]})
    assert p.schedule is not None
    sat_3am = datetime(2026, 11, 28, 3, 30, tzinfo=UTC).timestamp()
    sat_6am = datetime(2026, 11, 28, 6, 0, tzinfo=UTC).timestamp()
    fri_3am = datetime(2026, 11, 27, 3, 30, tzinfo=UTC).timestamp()
    assert p.schedule.is_open(sat_3am)
    assert not p.schedule.is_open(sat_6am)  # end hour is exclusive
    assert not p.schedule.is_open(fri_3am)
