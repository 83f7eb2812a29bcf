"""Hypothesis strategies for hostile input: every topic's records and the API's bodies.

Each ``*_records()`` strategy yields raw topic values (bytes): mostly a valid record with one
field replaced by something hostile (NaN, 1e300, a 400-digit integer, a newline or U+202E in
an id, deep nesting, a far-future time, a wrong type), some fully random JSON, some garbage.
Used by tests/unit/test_fuzz.py (a bounded number of cases in ``make test``) and by
bench/bench_fuzz.py (>= 10,000 records against a real worker).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

NOW = 1_800_000_000.0  # fixed "now" of the unit-level properties

# --- hostile leaves -------------------------------------------------------------------------------
HOSTILE_NUMBERS: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e300,
    -1e300,
    10**400,
    -(10**400),
    2**63,
    2**64 + 1,
    -1,
    0,
    1e-320,
    NOW + 10 * 365 * 86400,  # ten years ahead
    1.0,  # 1970
]
HOSTILE_TEXT: list[Any] = [
    "",
    "\n",
    "a\nKubefinops-Cycle: forged",
    "../../etc/passwd",
    "nul\x00byte",
    "rtl\u202eevil",
    "x" * 8192,
    "ns/Deployment/app\n\nKubefinops-Cycle: forged",
    "UPPER",
    " spaced ",
]


def deep(levels: int = 5000) -> Any:
    """A value nested ``levels`` deep (json.dumps of it needs no recursion for lists)."""
    return json.loads("[" * levels + "]" * levels) if levels < 500 else _DeepText(levels)


class _DeepText:
    """Marker for a value serialized as raw deeply nested JSON text (too deep to build)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels


hostile_leaf = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_TEXT),
    st.none(),
    st.booleans(),
    st.just([]),
    st.just({}),
    st.just(deep(50)),
    st.just(_DeepText(20_000)),
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value``; NaN/Infinity as JavaScript literals (what a broken producer
    sends), :class:`_DeepText` as raw nesting."""
    text = json.dumps(value, default=_deep_default)
    while '"__DEEP__' in text:
        head, _, rest = text.partition('"__DEEP__')
        levels, _, tail = rest.partition('__"')
        n = int(levels)
        text = head + "[" * n + "]" * n + tail
    return text.encode()


def _deep_default(value: Any) -> Any:
    if isinstance(value, _DeepText):
        return f"__DEEP__{value.levels}__"
    raise TypeError(type(value).__name__)


# --- valid records --------------------------------------------------------------------------------
namespaces = st.sampled_from(["smarthealth", "shop", "ns", "a", "kube-system"])
kinds = st.sampled_from(["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Pod"])
names = st.sampled_from(["patient-api", "web", "db-0", "a.b", "x"])
containers = st.sampled_from(["app", "sidecar", "envoy", "c"])


@st.composite
def batch_docs(draw: st.DrawFn, now: float = NOW) -> dict[str, Any]:
    end = draw(st.floats(now - 14 * 86400, now))
    start = end - draw(st.sampled_from([60.0, 3600.0, 6 * 3600.0]))
    n = draw(st.integers(0, 20))
    ts = sorted(draw(st.lists(st.floats(start + 0.001, end), min_size=n, max_size=n)))
    return {
        "type": "usage",
        "namespace": draw(namespaces),
        "kind": draw(kinds),
        "workload": draw(names),
        "container": draw(containers),
        "start": start,
        "end": end,
        "samples": {
            "cpu": [[t, draw(st.floats(0, 64))] for t in ts],
            "memory": [[t, draw(st.floats(0, 2**36))] for t in ts],
        },
    }


@st.composite
def spec_docs(draw: st.DrawFn) -> dict[str, Any]:
    cs = draw(st.lists(containers, min_size=1, max_size=3, unique=True))
    return {
        "namespace": draw(namespaces),
        "kind": draw(kinds),
        "name": draw(names),
        "replicas": draw(st.integers(0, 50)),
        "containers": [
            {
                "name": c,
                "requests": {
                    "cpu": draw(st.one_of(st.none(), st.floats(0.001, 64))),
                    "memory": draw(st.one_of(st.none(), st.floats(2**20, 2**36))),
                },
                "limits": {"memory": draw(st.one_of(st.none(), st.floats(2**20, 2**37)))},
                "last_oom_at": draw(st.one_of(st.none(), st.floats(NOW - 30 * 86400, NOW))),
                "restarts": draw(st.integers(0, 1000)),
            }
            for c in cs
        ],
        "hpa": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"name": names, "metrics": st.lists(st.sampled_from(["cpu", "memory"]))}
                ),
            )
        ),
        "labels": {"app": draw(names)},
        "observed_at": NOW,
    }


@st.composite
def cycle_end_docs(draw: st.DrawFn) -> dict[str, Any]:
    return {"type": "cycle-end", "cycle": "20261130T100000Z", "spec": draw(spec_docs())}


def _container_rec(draw: st.DrawFn, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "current": {"name": name, "requests": {"cpu": 1.0, "memory": 2.0**30}},
        "cpu_request": draw(st.one_of(st.none(), st.floats(0.001, 64))),
        "memory_request": draw(st.one_of(st.none(), st.floats(2**20, 2**36))),
        "memory_limit": draw(st.one_of(st.none(), st.floats(2**20, 2**36))),
        "confidence": draw(st.sampled_from(["none", "low", "medium", "high"])),
        "reasons": ["p95 x 1.15"],
    }


@st.composite
def recommendation_docs(draw: st.DrawFn) -> dict[str, Any]:
    ns, kind, name = draw(namespaces), draw(kinds), draw(names)
    return {
        "id": f"rec-{draw(st.integers(0, 10**9)):x}",
        "workload_id": f"{ns}/{kind}/{name}",
        "namespace": ns,
        "kind": kind,
        "name": name,
        "replicas": draw(st.integers(0, 20)),
        "containers": [_container_rec(draw, c) for c in draw(st.sets(containers, min_size=1))],
        "savings": {"monthly_delta": draw(st.floats(-1000, 1000))},
        "generated_at": NOW,
        "cycle": "20261130T100000Z",
    }


@st.composite
def decision_docs(draw: st.DrawFn) -> dict[str, Any]:
    rec = draw(recommendation_docs())
    return {
        "id": f"dec-{draw(st.integers(0, 10**9)):x}",
        "recommendation_id": rec["id"],
        "workload_id": rec["workload_id"],
        "namespace": rec["namespace"],
        "kind": rec["kind"],
        "name": rec["name"],
        "action": draw(st.sampled_from(["apply", "hold", "skip"])),
        "guardrail": draw(st.sampled_from(["autopilot", "min-change", "cooldown"])),
        "reason": draw(st.sampled_from(["policy p is in autopilot mode", "below 10%"])),
        "mode": "autopilot",
        "policy_id": "p",
        "policy_version": 1,
        "containers": rec["containers"],
        "savings": rec["savings"],
        "decided_at": NOW,
        "cycle": rec["cycle"],
    }


@st.composite
def execution_docs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "id": "exec-20261130T100000Z-abc",
        "cycle": "20261130T100000Z-abc",
        "workload_ids": ["smarthealth/Deployment/web"],
        "decision_ids": ["dec-1"],
        "outcome": draw(st.sampled_from(["pushed", "committed", "noop", "held", "failed"])),
        "commit_sha": "ab" * 20,
        "held": draw(
            st.dictionaries(st.just("smarthealth/Deployment/db"), st.text(max_size=40), max_size=1)
        ),
        "executed_at": NOW,
    }


@st.composite
def cycle_docs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "cycle": "20261130T100000Z-abc",
        "decisions": draw(st.lists(decision_docs(), max_size=3)),
        "execution": draw(execution_docs()),
        "policies": {"p": 1},
    }


@st.composite
def policy_docs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "id": "p",
        "mode": draw(st.sampled_from(["observe", "recommend", "autopilot"])),
        "priority": draw(st.integers(-10, 10)),
        "selectors": {"namespaces": ["smarthealth"]},
        "estimator": {"cpu_percentile": draw(st.floats(50, 100))},
        "guardrails": {"min_change": draw(st.floats(0, 1)), "cooldown": "1h"},
    }


# --- mutation ---------------------------------------------------------------------------------
def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _set(doc[head], rest, value)}
    copy = list(doc)
    copy[head] = _set(doc[head], rest, value)
    return copy


@st.composite
def mutated(draw: st.DrawFn, docs: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid document with one (sometimes two) fields replaced by a hostile value."""
    doc = draw(docs)
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        doc = _set(doc, path, draw(st.one_of(hostile_leaf, json_values)))
    return doc


def records(docs: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Raw topic values: valid, mutated, random JSON or not JSON at all."""
    return st.one_of(
        docs.map(dumps),
        mutated(docs).map(dumps),
        json_values.map(dumps),
        st.binary(max_size=64),
        st.just(dumps(_DeepText(100_000))),
    )


def metrics_records_at(now: float) -> st.SearchStrategy[bytes]:
    """Metrics records whose valid chunks end before ``now`` (a campaign against a live worker
    uses the real clock; the properties use the fixed :data:`NOW`)."""
    return records(st.one_of(batch_docs(now), cycle_end_docs()))


metrics_records = metrics_records_at(NOW)
workload_records = records(spec_docs())
recommendation_records = records(recommendation_docs())
decision_records = records(decision_docs())
execution_records = records(execution_docs())
cycle_records = records(cycle_docs())
policy_records = records(policy_docs())

# --- API bodies: (raw body, Content-Type header) ------------------------------------------------
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=x-unknown",
        "application/json; charset=utf-16",
        "text/plain",
        "application/xml",
        "application/merge-patch+json",
    ]
)
api_bodies = st.tuples(policy_records, content_types)
