"""The collector's pure half: the incremental plan, parsing, owners, batches and specs."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.collect import (
    SPEC_METRICS,
    MalformedResponse,
    Owners,
    Series,
    SpecBuilder,
    build_batches,
    build_specs,
    eval_start,
    first_eval_time,
    parse_matrix,
    parse_matrix_body,
    parse_result,
    plan_chunks,
)
from engine.errors import PermanentError

H = 3600
DAY = 86400
NOW = 1_800_000_123.0
KW = {"scrape_lag": 120, "history": 14 * DAY, "chunk": 6 * H, "step": 60}


def _horizon(now: float = NOW, lag: int = 120, step: int = 60) -> float:
    return math.floor((now - lag) / step) * step


# --- plan -----------------------------------------------------------------------------------
def test_first_run_backfills_history_in_aligned_contiguous_chunks() -> None:
    chunks = plan_chunks(None, NOW, **KW)
    assert chunks[-1][1] == _horizon()
    assert chunks[0][0] == _horizon() - 14 * DAY
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all(0 < e - s <= 6 * H for s, e in chunks)
    assert all(e % 60 == 0 for _, e in chunks)
    assert all(e % (6 * H) == 0 for _, e in chunks[:-1])  # boundaries stable across runs
    assert 56 <= len(chunks) <= 58


def test_later_cycle_asks_only_since_watermark() -> None:
    wm = _horizon() - H
    chunks = plan_chunks(wm, NOW, **KW)
    assert chunks[0][0] == wm and chunks[-1][1] == _horizon()
    assert sum(e - s for s, e in chunks) == H


def test_up_to_date_or_future_watermark_plans_nothing() -> None:
    assert plan_chunks(_horizon(), NOW, **KW) == []
    assert plan_chunks(_horizon() + 999, NOW, **KW) == []


def test_scrape_lag_keeps_the_freshest_minutes_for_later() -> None:
    chunks = plan_chunks(None, NOW, **{**KW, "scrape_lag": 600})
    assert chunks[-1][1] <= NOW - 600


def test_stale_watermark_is_clamped_to_history() -> None:
    chunks = plan_chunks(NOW - 60 * DAY, NOW, **KW)
    assert chunks[0][0] == _horizon() - 14 * DAY


def test_chunk_never_exceeds_prometheus_point_limit() -> None:
    chunks = plan_chunks(None, NOW, **{**KW, "chunk": 30 * DAY, "step": 15})
    assert all((e - s) / 15 <= 11_000 for s, e in chunks)


def test_a_failed_chunk_leaves_the_rest_for_the_next_cycle() -> None:
    plan = plan_chunks(None, NOW, **KW)
    watermarks: dict[str, float] = {}
    for i, (_, end) in enumerate(plan):
        if i == 5:  # Prometheus went away while collecting chunk 5
            break
        watermarks["usage"] = end  # as the collector agent: after the chunk was published
    replan = plan_chunks(watermarks["usage"], NOW, **KW)
    assert replan == plan[5:]
    later = plan_chunks(watermarks["usage"], NOW + H, **KW)
    assert later[0][0] == plan[4][1] and later[-1][1] == _horizon(NOW + H)


def test_bad_plan_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        plan_chunks(None, NOW, **{**KW, "step": 0})


@given(
    wm=st.one_of(st.none(), st.floats(NOW - 20 * DAY, NOW)),
    now_shift=st.integers(0, 3 * DAY),
    step=st.sampled_from([15, 30, 60, 300]),
    chunk=st.sampled_from([H, 2 * H, 6 * H, 7 * H + 13]),
)
def test_plan_tiles_the_window_without_gaps_or_overlap(
    wm: float | None, now_shift: int, step: int, chunk: int
) -> None:
    now = NOW + now_shift
    chunks = plan_chunks(wm, now, scrape_lag=120, history=14 * DAY, chunk=chunk, step=step)
    horizon = _horizon(now, 120, step)
    for (_, e1), (s2, _) in itertools.pairwise(chunks):
        assert e1 == s2
    for s, e in chunks:
        assert s < e and e % step == 0 and e <= now - 120
    if chunks:
        assert chunks[-1][1] == horizon
        assert chunks[0][0] >= horizon - 14 * DAY - step


def test_first_eval_time_is_strictly_after_start_and_aligned() -> None:
    assert first_eval_time(600.0, 60) == 660.0
    assert first_eval_time(601.5, 60) == 660.0


def test_a_last_chunk_shorter_than_the_step_has_nothing_to_ask() -> None:
    """CI found it when ``now`` fell just past a boundary: the window's last chunk (12:00,
    12:02] holds no 5-minute evaluation time, and a range query from 12:05 to 12:02 is refused
    by Prometheus; the helper says "nothing" instead."""
    noon = 1_800_000_000.0 // 3600 * 3600
    assert eval_start(noon, noon + 120, 300) is None
    assert eval_start(noon, noon + 120, 60) == noon + 60
    assert eval_start(noon, noon + 300, 300) == noon + 300  # exactly one: the end itself
    chunks = plan_chunks(None, noon + 120 + 7, scrape_lag=0, history=DAY, chunk=H, step=60)
    assert chunks[-1] == (noon, noon + 120)
    assert eval_start(*chunks[-1], 300) is None
    assert all(eval_start(s, e, 60) is not None for s, e in chunks)


# --- parsing --------------------------------------------------------------------------------
def _same_arrays(a: Any, b: Any) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.labels == y.labels
        assert x.ts.tolist() == y.ts.tolist() and x.values.tolist() == y.values.tolist()


@pytest.mark.parametrize(
    "body",
    [
        # Prometheus's own compact layout, with non-finite values dropped
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"pod":"a]]"},'
        b'"values":[[1700000000,"1.5"],[1700000060.5,"NaN"],[1700000120,"2e+3"]]},'
        b'{"metric":{},"values":[[1,"+Inf"],[2,"0"]]}]}}',
        # an empty series between two others
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"1"},'
        b'"values":[[1,"2"]]},{"metric":{"b":"2"},"values":[]},{"metric":{"c":"3"},'
        b'"values":[[3,"4"],[5,"6e-3"]]}]}}',
        # any other layout takes the checked path and gives the same answer
        b'{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {"p": '
        b'"x"}, "values": [[1, "3"]]}]}}',
        b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
    ],
)
def test_the_matrix_body_parser_equals_the_checked_one(body: bytes) -> None:
    _same_arrays(parse_matrix_body(body, json.loads), parse_matrix(json.loads(body)))


@pytest.mark.parametrize(
    ("grid", "values"),
    [
        ((120.0, 60), '[120,"1"],[180,"2.5"],[240,"3"]'),  # every point: times computed
        ((120.0, 60), '[180,"1"],[240,"2"]'),  # starts later, still whole
        ((120.0, 60), '[120,"1"],[240,"3"]'),  # a point missing: converted
        ((120.0, 60), '[150,"1"],[210,"2"]'),  # off the grid
        ((0.5, 60), '[0.5,"1"],[60.5,"2"],[120.5,"4e-3"]'),  # a start with a fraction
        ((1700000000.123, 30), '[1700000000.123,"7"],[1700000030.123,"8"]'),
        ((120.0, 60), '[120,"1"],[180,"NaN"],[240,"+Inf"]'),  # non-finite: the checked path
        ((120.0, 60), '[120,"1"]'),  # one point
        ((120.0, 60), ""),  # none
        ((120.0, 60), '[120.0004,"1"],[180.0004,"2"]'),  # not whole milliseconds
    ],
)
def test_range_timestamps_computed_from_the_grid_equal_the_parsed_ones(
    grid: tuple[float, int], values: str
) -> None:
    body = (
        '{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"p":"a"},'
        f'"values":[{values}]}},{{"metric":{{"p":"b"}},"values":[[120,"9"]]}}]}}}}'
    ).encode()
    want = parse_matrix(json.loads(body))
    for loads in (json.loads, orjson.loads):
        got = parse_matrix_body(body, loads, grid)
        _same_arrays(got, want)
        for g, w in zip(got, want, strict=True):  # the same floats, bit for bit
            assert g.ts.tobytes() == w.ts.tobytes()


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
        b'"values":[[1,"x1"]]}]}}',
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
        b'"values":[[1,"2",3]]}]}}',
        b'{"status":"error","error":"boom","data":{"resultType":"matrix","result":[{"metric"'
        b':{},"values":[[1,"2"]]}]}}',
    ],
)
def test_the_matrix_body_parser_refuses_what_the_checked_one_refuses(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_matrix(json.loads(body))
    with pytest.raises(MalformedResponse):
        parse_matrix_body(body, json.loads)


def _matrix(*series: tuple[dict[str, str], list[Any]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": m, "values": v} for m, v in series]},
    }


def test_parse_matrix_and_drop_non_finite() -> None:
    doc = _matrix(({"pod": "a"}, [[60, "0.5"], [120, "NaN"], [180, "+Inf"], [240, "1e-3"]]))
    [s] = parse_result(doc, "matrix")
    assert s.labels == {"pod": "a"}
    assert s.values == [(60.0, 0.5), (240.0, 0.001)]


def test_parse_vector() -> None:
    doc = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"__name__": "x"}, "value": [1.5, "3"]}],
        },
    }
    assert parse_result(doc, "vector") == [Series({"__name__": "x"}, [(1.5, 3.0)])]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ([1, 2], "not a JSON object"),
        ({"status": "error", "error": "boom"}, "boom"),
        ({"status": "success"}, "data.result"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "resultType"),
        (
            {"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}},
            "metric",
        ),
        (_matrix(({"pod": 1}, [])), "non-string"),  # type: ignore[dict-item]
        (
            {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}}]}},
            "values",
        ),
        (_matrix(({}, [[1, "x"]])), "not numeric"),
        (_matrix(({}, [[1]])), "[timestamp"),
    ],
)
def test_malformed_bodies_raise_a_permanent_error_naming_the_part(doc: Any, fragment: str) -> None:
    with pytest.raises(MalformedResponse, match=None) as info:
        parse_result(doc, "matrix")
    assert isinstance(info.value, PermanentError)
    assert fragment in str(info.value)


# --- owners ---------------------------------------------------------------------------------
def _s(value: float = 1.0, **labels: str) -> Series:
    return Series(dict(labels), [(0.0, value)])


OWNERS = Owners.build(
    [
        _s(namespace="ns", pod="web-abc-1", owner_kind="ReplicaSet", owner_name="web-abc"),
        _s(namespace="ns", pod="web-abc-2", owner_kind="ReplicaSet", owner_name="web-abc"),
        _s(namespace="ns", pod="orphan-rs-1", owner_kind="ReplicaSet", owner_name="orphan-rs"),
        _s(namespace="ns", pod="db-0", owner_kind="StatefulSet", owner_name="db"),
        _s(namespace="ns", pod="agent-x", owner_kind="DaemonSet", owner_name="agent"),
        _s(namespace="ns", pod="nightly-28-q", owner_kind="Job", owner_name="nightly-28"),
        _s(namespace="ns", pod="once-q", owner_kind="Job", owner_name="once"),
        _s(namespace="ns", pod="bare", owner_kind="<none>", owner_name="<none>"),
        _s(
            namespace="ns",
            pod="db-0",
            owner_kind="Node",
            owner_name="n1",
            owner_is_controller="false",
        ),
    ],
    [_s(namespace="ns", replicaset="web-abc", owner_kind="Deployment", owner_name="web")],
    [_s(namespace="ns", job_name="nightly-28", owner_kind="CronJob", owner_name="nightly")],
)


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ("web-abc-1", ("Deployment", "web")),
        ("orphan-rs-1", ("ReplicaSet", "orphan-rs")),
        ("db-0", ("StatefulSet", "db")),
        ("agent-x", ("DaemonSet", "agent")),
        ("nightly-28-q", ("CronJob", "nightly")),
        ("once-q", ("Job", "once")),
        ("bare", ("Pod", "bare")),
        ("unknown", ("Pod", "unknown")),
    ],
)
def test_owner_resolution(pod: str, expected: tuple[str, str]) -> None:
    assert OWNERS.resolve("ns", pod) == expected


# --- batches --------------------------------------------------------------------------------
def _usage(pod: str, container: str, values: list[tuple[float, float]]) -> Series:
    return Series({"namespace": "ns", "pod": pod, "container": container}, values)


def test_batches_hold_every_pods_samples_per_container_and_skip_pause() -> None:
    cpu = [
        _usage("web-abc-1", "app", [(60, 0.1), (120, 0.2), (999, 9.0)]),
        _usage("web-abc-2", "app", [(60, 0.3)]),
        _usage("web-abc-1", "POD", [(60, 5.0)]),
        _usage("web-abc-1", "", [(60, 5.0)]),
        _usage("db-0", "pg", [(60, 1.0), (0, 7.0)]),
    ]
    mem = [_usage("web-abc-1", "app", [(60, 100.0)]), _usage("web-abc-2", "app", [(120, 300.0)])]
    batches = build_batches(cpu, mem, OWNERS, 0.0, 120.0)
    by_id = {b.container_id: b for b in batches}
    assert set(by_id) == {"ns/Deployment/web/app", "ns/StatefulSet/db/pg"}
    web = by_id["ns/Deployment/web/app"]
    assert web.samples == {
        "cpu": [(60, 0.1), (60, 0.3), (120, 0.2)],
        "memory": [(60, 100.0), (120, 300.0)],
    }
    assert (web.start, web.end) == (0.0, 120.0)
    assert by_id["ns/StatefulSet/db/pg"].samples["cpu"] == [(60, 1.0)]  # (start, end] only


def test_batches_do_not_depend_on_series_order() -> None:
    cpu = [
        _usage("web-abc-1", "app", [(60, 0.1)]),
        _usage("web-abc-2", "app", [(60, 0.3)]),
        _usage("db-0", "pg", [(60, 1.0)]),
    ]
    a = build_batches(cpu, [], OWNERS, 0.0, 120.0)
    b = build_batches(list(reversed(cpu)), [], OWNERS, 0.0, 120.0)
    assert a == b


# --- specs ----------------------------------------------------------------------------------
def _k(name: str, value: float = 1.0, **labels: str) -> Series:
    return _s(value, __name__=name, namespace="ns", **labels)


def _ksm_series() -> list[Series]:
    """Every kind of spec series build_specs reads, for two workloads."""
    mib = 1024.0**2
    return [
        _k("kube_pod_owner", pod="web-abc-1", owner_kind="ReplicaSet", owner_name="web-abc"),
        _k("kube_pod_owner", pod="web-abc-2", owner_kind="ReplicaSet", owner_name="web-abc"),
        _k(
            "kube_replicaset_owner", replicaset="web-abc", owner_kind="Deployment", owner_name="web"
        ),
        _k("kube_pod_owner", pod="bare", owner_kind="<none>", owner_name="<none>"),
        _k(
            "kube_pod_container_resource_requests",
            0.25,
            pod="web-abc-1",
            container="app",
            resource="cpu",
            unit="core",
        ),
        _k(
            "kube_pod_container_resource_requests",
            0.5,
            pod="web-abc-2",
            container="app",
            resource="cpu",
            unit="core",
        ),
        _k(
            "kube_pod_container_resource_requests",
            7.0,
            pod="web-abc-2",
            container="app",
            resource="cpu",
            unit="millicore",
        ),  # unknown unit: ignored
        _k(
            "kube_pod_container_resource_limits",
            512 * mib,
            pod="web-abc-1",
            container="app",
            resource="memory",
            unit="byte",
        ),
        _k(
            "kube_pod_container_resource_limits",
            256 * mib,
            pod="web-abc-2",
            container="app",
            resource="memory",
            unit="byte",
        ),
        _k(
            "kube_pod_container_resource_requests",
            0.1,
            pod="web-abc-1",
            container="POD",
            resource="cpu",
            unit="core",
        ),
        _k("kube_pod_container_info", pod="web-abc-1", container="app", image="eclipse-temurin:21"),
        _k("kube_pod_container_info", pod="web-abc-1", container="envoy", image="envoy:1.30"),
        _k("kube_pod_container_status_restarts_total", 2, pod="web-abc-1", container="app"),
        _k("kube_pod_container_status_restarts_total", 3, pod="web-abc-2", container="app"),
        _k(
            "kube_pod_container_status_last_terminated_reason",
            pod="web-abc-2",
            container="app",
            reason="OOMKilled",
        ),
        _k(
            "kube_pod_container_status_last_terminated_reason",
            pod="web-abc-1",
            container="app",
            reason="Completed",
        ),
        _k(
            "kube_pod_container_status_last_terminated_timestamp",
            1234.0,
            pod="web-abc-2",
            container="app",
        ),
        _k("kube_deployment_spec_replicas", 4, deployment="web"),
        _k("kube_deployment_labels", deployment="web", label_app="web", label_team="x"),
        _k(
            "kube_deployment_annotations",
            deployment="web",
            annotation_kubefinops_io_exclude="true",
            annotation_owner="team-x",
        ),
        _k(
            "kube_horizontalpodautoscaler_info",
            horizontalpodautoscaler="web",
            scaletargetref_kind="Deployment",
            scaletargetref_name="web",
        ),
        _k(
            "kube_horizontalpodautoscaler_spec_target_metric",
            70,
            horizontalpodautoscaler="web",
            metric_name="cpu",
        ),
        _k("kube_horizontalpodautoscaler_spec_min_replicas", 2, horizontalpodautoscaler="web"),
        _k("kube_horizontalpodautoscaler_spec_max_replicas", 9, horizontalpodautoscaler="web"),
        _k(
            "kube_pod_container_resource_requests",
            0.05,
            pod="bare",
            container="c",
            resource="cpu",
            unit="core",
        ),
    ]


def test_specs_from_kube_state_metrics() -> None:
    mib = 1024.0**2
    series = _ksm_series()
    specs = {s.workload_id: s for s in build_specs(series, at=5000.0)}
    assert set(specs) == {"ns/Deployment/web", "ns/Pod/bare"}
    web = specs["ns/Deployment/web"]
    assert web.replicas == 4 and web.observed_at == 5000.0
    assert web.labels == {"app": "web", "team": "x"}
    assert web.annotations == {"kubefinops.io/exclude": "true", "owner": "team-x"}
    assert web.hpa is not None and web.hpa.metrics == ["cpu"]
    assert (web.hpa.min_replicas, web.hpa.max_replicas) == (2, 9)
    app, envoy = web.containers
    assert app.name == "app" and envoy.name == "envoy"
    assert app.requests.cpu == 0.5 and app.limits.memory == 512 * mib  # max across pods
    assert app.restarts == 5 and app.is_jvm and not envoy.is_jvm
    assert app.last_oom_at == 1234.0 and app.oom_limit_bytes == 256 * mib  # the OOMed pod's limit
    assert envoy.last_oom_at is None and envoy.requests.cpu is None
    bare = specs["ns/Pod/bare"]
    assert bare.replicas == 1 and bare.hpa is None and bare.containers[0].requests.cpu == 0.05


def test_oom_without_timestamp_metric_is_dated_at_observation() -> None:
    series = [
        _k("kube_pod_owner", pod="db-0", owner_kind="StatefulSet", owner_name="db"),
        _k(
            "kube_pod_container_status_last_terminated_reason",
            pod="db-0",
            container="pg",
            reason="OOMKilled",
        ),
    ]
    [spec] = build_specs(series, at=777.0)
    assert spec.containers[0].last_oom_at == 777.0
    assert spec.containers[0].oom_limit_bytes is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "data",
                    "resultType",
                    "result",
                    "metric",
                    "values",
                    "value",
                    "error",
                    "pod",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(doc=_json, expect=st.sampled_from(["matrix", "vector"]))
def test_parser_never_raises_anything_but_malformed_response(doc: Any, expect: str) -> None:
    try:
        series = parse_result(doc, expect)
    except MalformedResponse:
        return
    assert all(isinstance(s.labels, dict) and isinstance(s.values, list) for s in series)


@given(doc=_json)
def test_parser_survives_a_well_formed_envelope_with_garbage_inside(doc: Any) -> None:
    envelope = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {"pod": "a"}, "values": doc}]},
    }
    try:
        parse_result(envelope, "matrix")
    except MalformedResponse as exc:
        assert "data.result[0]" in str(exc)


@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(["pod", "a]]", 'q"values":[']), st.text(max_size=8)),
            st.lists(
                st.tuples(
                    st.integers(0, 2**40),
                    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70),
                ),
                max_size=6,
            ),
        ),
        max_size=4,
    )
)
def test_the_matrix_body_parser_agrees_on_any_series(
    series: list[tuple[dict[str, str], list[tuple[int, float]]]],
) -> None:
    """Prometheus's compact layout, any labels (brackets and quotes included), any numbers
    (as Prometheus writes them: ``"NaN"``, ``"+Inf"``, exponents, huge integers)."""

    def text(v: float) -> str:
        if isinstance(v, float) and math.isnan(v):
            return "NaN"
        if isinstance(v, float) and math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)

    doc = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": labels, "values": [[t, text(v)] for t, v in values]}
                for labels, values in series
            ],
        },
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    for loads in (json.loads, orjson.loads):  # orjson refuses integers past 64 bits: fallback
        _same_arrays(parse_matrix_body(body, loads), parse_matrix(json.loads(body)))


@given(
    start_ms=st.integers(946_684_800_000, 4_102_444_800_000),
    step=st.sampled_from([1, 15, 60, 300]),
    present=st.lists(st.booleans(), min_size=1, max_size=40),
    first=st.integers(0, 5),
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=40, max_size=40),
)
def test_grid_timestamps_equal_the_parsed_ones_with_any_gaps(
    start_ms: int, step: int, present: list[bool], first: int, values: list[float]
) -> None:
    """A range answer's points on the grid from ``start`` (any millisecond), some missing: the
    computed timestamps are the parsed floats bit for bit, and a gap falls back."""
    start = start_ms / 1000
    points = [
        [(start_ms + (first + i) * step * 1000) / 1000, repr(v)]
        for i, (keep, v) in enumerate(zip(present, values, strict=False))
        if keep
    ]
    doc = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    doc["data"]["result"] = [{"metric": {"pod": "a"}, "values": points}]  # type: ignore[index]
    body = json.dumps(doc, separators=(",", ":")).encode()
    want = parse_matrix(json.loads(body))
    got = parse_matrix_body(body, orjson.loads, (start, step))
    _same_arrays(got, want)
    assert got[0].ts.tobytes() == want[0].ts.tobytes()


@given(order=st.permutations(list(SPEC_METRICS)), dropped=st.sets(st.sampled_from(SPEC_METRICS)))
@settings(max_examples=60, deadline=None)
def test_the_spec_builder_gives_build_specs_whatever_order_the_metrics_come_in(
    order: list[str], dropped: set[str]
) -> None:
    """The collector folds each metric's answer in as it arrives (``SpecBuilder``): in any
    order, with any metrics missing (answered empty), the specs are build_specs' of the same
    series."""
    series = [s for s in _ksm_series() if s.labels["__name__"] not in dropped]
    builder = SpecBuilder(5000.0)
    for name in order:
        builder.add(name, [s for s in series if s.labels["__name__"] == name])
    got = [s.model_dump() for s in builder.finish()]
    assert got == [s.model_dump() for s in build_specs(series, at=5000.0)]
