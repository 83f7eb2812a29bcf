"""Regression tests: each hostile record, request or value the issue-10 campaign found.

Every case here crashed an agent, moved a mark it should not have, or was stored when it should
have been refused, before the bounds of engine/core/bounds.py existed.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from engine.core.bounds import (
    MAX_BODY_BYTES,
    BodyError,
    is_policy_id,
    is_user,
    one_line,
    parse_json_body,
)
from engine.core.estimators import fmt_time
from engine.core.guardrails import decide
from engine.core.model import (
    CycleSummary,
    Decision,
    MetricsBatch,
    WorkloadSpec,
    parse,
    parse_metrics_record,
)
from engine.core.patches import commit_message, parse_trailers
from engine.core.policy import parse_policy_record, validate_policy
from engine.core.recommend import recommend
from engine.core.samples import validate_batch
from engine.core.usage import ContainerUsage
from engine.errors import InvalidPolicy, InvalidRecord

NOW = 1_800_000_000.0
YEAR = 365 * 86400.0


def batch(start: float, end: float, samples: dict[str, Any], **extra: Any) -> bytes:
    doc = {
        "namespace": "ns",
        "kind": "Deployment",
        "workload": "api",
        "container": "app",
        "start": start,
        "end": end,
        "samples": samples,
        **extra,
    }
    return json.dumps(doc).encode()


def ingest(usage: ContainerUsage, raw: bytes, now: float = NOW) -> int:
    record = parse_metrics_record(raw)
    assert isinstance(record, MetricsBatch)
    checked = validate_batch(record, now=now)
    return usage.ingest(checked.batch, arrays=checked.arrays).accepted


# --- 1. one chunk must not blind a container ---------------------------------------------------
def test_a_far_future_chunk_is_refused_whole_and_moves_nothing() -> None:
    usage = ContainerUsage()
    assert ingest(usage, batch(NOW - 120, NOW - 60, {"cpu": [[NOW - 90, 0.5]]})) == 1
    mark = usage.high_water
    future = batch(NOW - 60, NOW + 10 * YEAR, {"cpu": [[NOW - 30, 0.5], [NOW + YEAR, 0.5]]})
    record = parse_metrics_record(future)
    assert isinstance(record, MetricsBatch)
    checked = validate_batch(record, now=NOW)
    assert [r for r, _ in checked.reasons] == ["future-chunk"]
    assert usage.ingest(checked.batch, arrays=checked.arrays).accepted == 0
    assert usage.high_water == mark
    # the next real chunk still counts
    assert ingest(usage, batch(NOW - 60, NOW, {"cpu": [[NOW - 10, 0.7]]})) == 1


def test_a_batch_whose_samples_are_all_rejected_leaves_the_state_untouched() -> None:
    usage = ContainerUsage()
    ingest(usage, batch(NOW - 120, NOW - 60, {"cpu": [[NOW - 90, 0.5]]}))
    before = usage.to_dict()
    assert ingest(usage, batch(NOW - 60, NOW, {"cpu": [[NOW - 30, -1.0], [NOW - 20, 1e9]]})) == 0
    assert usage.to_dict() == before


def test_the_mark_is_the_newest_stored_sample_not_the_claimed_end() -> None:
    usage = ContainerUsage()
    ingest(usage, batch(NOW - 600, NOW, {"cpu": [[NOW - 500, 0.5]]}))
    assert usage.high_water == NOW - 500


def test_samples_dated_1970_or_nan_are_rejected_with_a_reason() -> None:
    raw = batch(0, NOW, {"cpu": [[1.0, 0.5], [NOW - 5, 0.5]], "memory": [[NOW - 5, float("nan")]]})
    record = parse_metrics_record(raw)
    assert isinstance(record, MetricsBatch)
    reasons = dict(validate_batch(record, now=NOW).reasons)
    assert reasons == {"bad-timestamp": 1, "nan": 1}


@pytest.mark.parametrize("start", ["NaN", "-Infinity", "Infinity", "1e300"])
def test_non_finite_or_absurd_chunk_bounds_are_invalid(start: str) -> None:
    raw = batch(0, NOW, {}).replace(b'"start": 0', f'"start": {start}'.encode())
    with pytest.raises(InvalidRecord, match="start"):
        parse_metrics_record(raw)


# --- 2. records that crashed an agent ------------------------------------------------------------
def test_a_400_digit_integer_sample_is_a_reason_not_a_crash() -> None:
    raw = batch(NOW - 60, NOW, {"cpu": [[NOW - 5, 10**400], [NOW - 4, 0.5]]})
    record = parse_metrics_record(raw)
    assert isinstance(record, MetricsBatch)
    checked = validate_batch(record, now=NOW)
    assert dict(checked.reasons) == {"wrong-type": 1}
    assert ContainerUsage().ingest(checked.batch, arrays=checked.arrays).accepted == 1


def test_deeply_nested_policy_json_is_invalid_not_a_recursion_error() -> None:
    raw = b'{"id": "p", "selectors": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidPolicy, match="nested deeper"):
        parse_policy_record(raw)


def spec_doc(**container: Any) -> dict[str, Any]:
    return {
        "namespace": "ns",
        "kind": "Deployment",
        "name": "api",
        "containers": [{"name": "app", "requests": {"cpu": 1.0}, **container}],
    }


@pytest.mark.parametrize("value", [1e300, "NaN", "Infinity", -1.0])
def test_an_absurd_last_oom_at_is_invalid(value: Any) -> None:
    text = json.dumps(spec_doc(last_oom_at="X")).replace('"X"', str(value))
    with pytest.raises(InvalidRecord, match="last_oom_at"):
        parse(WorkloadSpec, text)


def test_guardrails_survive_an_unreadable_oom_time() -> None:
    assert fmt_time(1e300).startswith("t=") and fmt_time(math.nan).startswith("t=")
    spec = WorkloadSpec.model_construct(**WorkloadSpec.model_validate(spec_doc()).__dict__)
    policy = validate_policy({"id": "p", "mode": "autopilot"})
    rec = recommend(spec, {}, policy, now=NOW)
    decide(rec, spec, policy, last_applied_at=None, last_applied_id=None, now=NOW)


def decision_doc(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "dec-1",
        "recommendation_id": "rec-1",
        "workload_id": "ns/Deployment/api",
        "namespace": "ns",
        "kind": "Deployment",
        "name": "api",
        "action": "apply",
        "guardrail": "autopilot",
        "reason": "policy p is in autopilot mode",
        "mode": "autopilot",
        "containers": [
            {"name": "app", "current": {"name": "app"}, "cpu_request": 0.5, "confidence": "high"}
        ],
        "decided_at": NOW,
    }
    doc.update(fields)
    return doc


@pytest.mark.parametrize(
    "fields",
    [
        {"containers": [{"name": "app", "current": {"name": "app"}, "cpu_request": "NaN"}]},
        {"containers": [{"name": "app", "current": {"name": "app"}, "cpu_request": 1e300}]},
        {"savings": {"monthly_delta": "Infinity"}},
        {"decided_at": "NaN"},
        {"workload_id": "ns/Deployment/api\nKubefinops-Cycle: forged"},
        {"workload_id": "other/Deployment/api"},  # key/value consistency
        {"name": "api\u202e"},
        {"id": "dec\n1"},
    ],
)
def test_hostile_decisions_are_invalid(fields: dict[str, Any]) -> None:
    text = json.dumps(decision_doc(**fields)).replace('"NaN"', "NaN").replace('"Infinity"', "1e999")
    with pytest.raises(InvalidRecord):
        parse(Decision, text)


def test_a_nan_executed_at_in_a_cycle_record_is_invalid() -> None:
    doc = {
        "cycle": "c1",
        "decisions": [],
        "execution": {
            "id": "exec-c1",
            "cycle": "c1",
            "workload_ids": [],
            "decision_ids": [],
            "outcome": "noop",
            "executed_at": "NaN",
        },
    }
    with pytest.raises(InvalidRecord, match="executed_at"):
        parse(CycleSummary, json.dumps(doc).replace('"NaN"', "NaN"))


# --- 6. forged commit trailers ---------------------------------------------------------------
def test_commit_message_fields_are_single_lines() -> None:
    decision = Decision.model_validate(decision_doc())
    forged = decision.model_copy(  # model_copy skips validation: the worst case
        update={
            "workload_id": "ns/Deployment/api\n\nKubefinops-Cycle: forged",
            "reason": "x\nKubefinops-Cycle: forged\u202e",
        }
    )
    message = commit_message("c1", [forged])
    assert parse_trailers(message)["Kubefinops-Cycle"] == ["c1"]
    assert "\u202e" not in message
    assert all(not line.startswith("Kubefinops-Cycle: forged") for line in message.splitlines())


def test_one_line() -> None:
    assert one_line("a\nb\r\nc\x00d\u202ee\u2028f") == "a b c d e f"
    assert len(one_line("x" * 10_000, 100)) == 100


# --- 5. API bodies, ids and the audit user ----------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{}", "text/plain", 415),
        (b"{}", "application/json; charset=x-unknown", 415),
        (b" " * (MAX_BODY_BYTES + 1), "application/json", 413),
        (b"[" * 20_000 + b"]" * 20_000, None, 400),
        (b'{"a": ' + str(2**64).encode() + b"}", None, 400),
        (b'{"a": 1e999}', None, 400),
        (b'{"a": NaN}', None, 400),
        (b'{"a": Infinity}', None, 400),
        (b"\xff\xfe", None, 400),
        (b"{", None, 400),
        (b'{"mode": "observe", "mode": "autopilot"}', None, 400),  # which would win?
        (b'{"estimator": {"max_step": 0.5, "max_step": 5}}', None, 400),  # nested too
    ],
)
def test_malformed_bodies(raw: bytes, content_type: str | None, status: int) -> None:
    with pytest.raises(BodyError) as caught:
        parse_json_body(raw, content_type)
    assert caught.value.status == status


def test_a_duplicate_key_is_named() -> None:
    with pytest.raises(BodyError, match="duplicate key 'mode'"):
        parse_json_body(b'{"mode": "observe", "mode": "observe"}', None)


def test_a_good_body_parses() -> None:
    body = b'{"id": "p", "estimator": {"cpu_floor": 0.05}, "priority": 9223372036854775807}'
    assert parse_json_body(body, "application/json; charset=UTF-8")["priority"] == 2**63 - 1


@pytest.mark.parametrize(
    "pid", ["../../etc/passwd", "a\x00b", "a\nb", "a\u202eb", "", "A", "x" * 64, "-p", "p-"]
)
def test_policy_ids_outside_the_pattern(pid: str) -> None:
    assert not is_policy_id(pid)
    with pytest.raises(InvalidPolicy, match="id"):
        validate_policy({"id": pid})


@pytest.mark.parametrize("pid", ["p", "default", "smarthealth-autopilot", "team.a_b-1"])
def test_policy_ids_inside_the_pattern(pid: str) -> None:
    assert is_policy_id(pid) and validate_policy({"id": pid}).id == pid


def test_audit_user_is_bounded() -> None:
    assert is_user("alice@example.com") and is_user("system:serviceaccount:ns:ci")
    assert not is_user("x" * 8192) and not is_user("a\nb") and not is_user("")


@pytest.mark.parametrize(
    "estimator", [{"cpu_floor": "Infinity"}, {"cpu_floor": 1e300}, {"memory_cap": 10**400}]
)
def test_policy_numbers_are_finite_and_bounded(estimator: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy, match="estimator"):
        validate_policy({"id": "p", "estimator": estimator})


def test_a_1mb_policy_is_refused_before_any_store() -> None:
    doc = {"id": "p", "selectors": {"workloads": [f"w{i}" for i in range(250)] * 1}}
    validate_policy(doc)  # a big but sane one passes
    huge = {"id": "p", "name": "x" * (1024 * 1024)}
    with pytest.raises(InvalidPolicy):
        validate_policy(huge)
    with pytest.raises(InvalidPolicy):
        parse_policy_record(json.dumps(huge).encode())


# --- settings and child processes --------------------------------------------------------------
@pytest.mark.parametrize(
    "field", ["api_token", "api_read_token", "git_token", "kafka_password", "s3_secret_key"]
)
def test_an_empty_secret_is_a_settings_error(field: str) -> None:
    from engine.errors import ConfigError
    from engine.settings import load_settings

    with pytest.raises(ConfigError, match=field):
        load_settings(**{field: "  "})


def test_a_client_certificate_needs_its_key(tmp_path: Any) -> None:
    from engine.errors import ConfigError
    from engine.settings import load_settings

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="kafka_ssl_certfile"):
        load_settings(kafka_ssl_certfile=cert, kafka_password="p")
    with pytest.raises(ConfigError, match="kafka_ssl_cafile"):
        load_settings(kafka_ssl_cafile=tmp_path / "missing.pem")


def test_child_env_keeps_only_the_allow_list() -> None:
    from engine.adapters.gitops import TOKEN_ENV, child_env

    env = child_env(
        {
            "PATH": "/bin",
            "HOME": "/root",
            "LC_ALL": "C",
            "KUBEFINOPS_MONGODB_URI": "mongodb://u:secret@h",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "GIT_DIR": "/r/.git",
            "GIT_PYTHON_TRACE": "full",
            TOKEN_ENV: "t",
        },
        EXTRA="1",
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "LC_ALL": "C",
        "GIT_DIR": "/r/.git",
        TOKEN_ENV: "t",
        "EXTRA": "1",
    }


# --- 6. the web API's query parameters and tokens (pure parts) ---------------------------------
def test_decision_page_parameters_are_checked_not_clamped() -> None:
    from agents.stats_web import _cursor_id, _limit, _time

    assert _limit(None) == 50 and _limit("") == 50 and _limit("1") == 1 and _limit("500") == 500
    for bad in ("0", "501", "-1", "abc", "1_0", " 5", "\u0665", "9" * 5000, "1.5"):
        with pytest.raises(ValueError, match="limit must be an integer from 1 to 500"):
            _limit(bad)
    assert _time("1796000000.25", "before") == 1796000000.25 and _time(None, "before") is None
    for bad in ("nan", "inf", "-inf", "1e309", "-1", "1_796_000_050", "12", "5000000000"):
        with pytest.raises(ValueError, match="before must be a Unix time"):
            _time(bad, "before")
    assert _cursor_id("d-rec-1") == "d-rec-1" and _cursor_id("") is None
    for bad in ("x" * 301, "a\nb"):
        with pytest.raises(ValueError, match="before_id"):
            _cursor_id(bad)


def test_a_token_that_is_not_utf8_is_wrong_not_an_error() -> None:
    from pydantic import SecretStr

    from agents.web import auth_problem

    token, read = SecretStr("write-token"), SecretStr("read-token")
    # aiohttp hands header bytes that are not UTF-8 over as lone surrogates
    for header in ("Bearer t\udcf6k", "Bearer \udcff", "Bearer \ud800"):
        assert auth_problem("read", header, token, read) == (401, "missing or wrong bearer token")
        assert auth_problem("write", header, token, read) == (401, "missing or wrong bearer token")
    assert auth_problem("read", "Bearer read-token", token, read) is None
