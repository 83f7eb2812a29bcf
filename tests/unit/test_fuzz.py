"""Fuzz: every topic's records and the API's bodies, through the pure code that handles them.

The property everywhere: a record is either refused with the project's own error (InvalidRecord,
InvalidPolicy, BodyError — what an agent turns into a dead letter with a reason) or it goes all
the way through without raising, and what comes out stays inside its bounds (a high-water mark
never ahead of "now", one-line commit trailers nobody can forge).  A bounded number of cases runs
in ``make test``; ``FUZZ_EXAMPLES=5000`` runs more.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings

from engine.core.bounds import FUTURE_SLACK_SECONDS, BodyError, parse_json_body
from engine.core.guardrails import decide
from engine.core.model import (
    CycleEnd,
    CycleSummary,
    Decision,
    Execution,
    MetricsBatch,
    Recommendation,
    UsageSummary,
    WorkloadSpec,
    parse,
    parse_metrics_record,
)
from engine.core.patches import UnsupportedWorkload, build_patch, commit_message, parse_trailers
from engine.core.policy import DEFAULT_POLICY, Policy, parse_policy_record, validate_policy
from engine.core.recommend import recommend
from engine.core.report import CycleReport, documents
from engine.core.samples import validate_batch
from engine.core.usage import ContainerUsage
from engine.errors import InvalidPolicy, InvalidRecord
from tests import strategies as s

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
AUTOPILOT = validate_policy({"id": "auto", "mode": "autopilot", "guardrails": {"cooldown": 0}})


def _usage(value: float) -> dict[str, UsageSummary]:
    summary = UsageSummary(
        p50=value, p90=value, p95=value, p99=value, max=value, mean=value, count=5000,
        first_ts=s.NOW - 8 * 86400, last_ts=s.NOW,
    )  # fmt: skip
    return {"cpu": summary, "memory": summary.model_copy(update={"max": value * 2**30})}


def _through_the_gate(spec: WorkloadSpec, policy: Policy = AUTOPILOT) -> Decision:
    usage = {c.name: _usage(0.3) for c in spec.containers}
    rec = recommend(spec, usage, policy, now=s.NOW)
    return decide(rec, spec, policy, last_applied_at=None, last_applied_id=None, now=s.NOW)


def _commit_checks(decision: Decision) -> None:
    try:
        build_patch(decision)
    except UnsupportedWorkload:
        pass  # a kind without a pod template: the executor holds it with this reason
    message = commit_message("20261130T100000Z-abc", [decision])
    trailers = parse_trailers(message)
    assert trailers["Kubefinops-Cycle"] == ["20261130T100000Z-abc"]
    assert set(trailers) <= {
        "Kubefinops-Cycle",
        "Kubefinops-Workload",
        "Kubefinops-Monthly-Delta",
        "Kubefinops-Decision",
    }
    assert "\r" not in message and "\u202e" not in message and "\x00" not in message


@FUZZ
@given(s.metrics_records)
def test_metrics_records(raw: bytes) -> None:
    try:
        record = parse_metrics_record(raw)
    except InvalidRecord:
        return
    if isinstance(record, CycleEnd):
        _commit_checks(_through_the_gate(record.spec))
        return
    assert isinstance(record, MetricsBatch)
    checked = validate_batch(record, now=s.NOW)
    given = sum(len(samples) for samples in record.samples.values())
    valid = sum(len(samples) for samples in checked.batch.samples.values())
    assert valid + sum(n for _, n in checked.reasons) == given  # each dropped one counted once
    usage = ContainerUsage()
    result = usage.ingest(checked.batch, arrays=checked.arrays)
    # a fresh container, clean samples: each is stored or too old for the history, none is lost
    assert result.duplicates == 0 and {r for r, _ in result.rejected} <= {"older-than-history"}
    assert result.accepted + result.rejected_count == valid
    if usage.high_water is not None:
        assert usage.high_water <= s.NOW + FUTURE_SLACK_SECONDS
        assert result.accepted > 0  # the mark moved only because samples were stored
    assert ContainerUsage.from_dict(usage.to_dict()) == usage


@FUZZ
@given(s.workload_records)
def test_workload_records(raw: bytes) -> None:
    try:
        spec = parse(WorkloadSpec, raw)
    except InvalidRecord:
        return
    decision = _through_the_gate(spec)
    _commit_checks(decision)
    # the observe-mode default policy too
    _through_the_gate(spec, DEFAULT_POLICY)


@FUZZ
@given(s.recommendation_records)
def test_recommendation_records(raw: bytes) -> None:
    try:
        rec = parse(Recommendation, raw)
    except InvalidRecord:
        return
    spec = WorkloadSpec(
        namespace=rec.namespace,
        kind=rec.kind,
        name=rec.name,
        containers=[c.current for c in rec.containers],
    )
    decision = decide(rec, spec, AUTOPILOT, last_applied_at=None, last_applied_id=None, now=s.NOW)
    _commit_checks(decision)


@FUZZ
@given(s.decision_records)
def test_decision_records(raw: bytes) -> None:
    try:
        decision = parse(Decision, raw)
    except InvalidRecord:
        return
    _commit_checks(decision)


@FUZZ
@given(s.execution_records)
def test_execution_records(raw: bytes) -> None:
    try:
        execution = parse(Execution, raw)
    except InvalidRecord:
        return
    assert parse(Execution, execution.model_dump_json()) == execution  # held survives a round trip


@FUZZ
@given(s.cycle_records)
def test_cycle_records(raw: bytes) -> None:
    try:
        summary = parse(CycleSummary, raw)
    except InvalidRecord:
        return
    assert len(documents(CycleReport.from_summary(summary))) == 4


@FUZZ
@given(s.policy_records)
def test_policy_records(raw: bytes) -> None:
    try:
        policy = parse_policy_record(raw)
    except InvalidPolicy:
        return
    assert len(policy.model_dump_json()) <= 64 * 1024


@FUZZ
@given(s.api_bodies)
def test_api_bodies(body: tuple[bytes, str | None]) -> None:
    raw, content_type = body
    try:
        document: Any = parse_json_body(raw, content_type)
    except BodyError as exc:
        assert exc.status in (400, 413, 415)
        return
    if isinstance(document, dict):
        try:
            validate_policy({**document, "id": "p"})
        except InvalidPolicy:
            pass
