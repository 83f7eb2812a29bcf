"""Verified apply, pure half: the state machine, attribution, evidence, revert patch, penalty."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.core import patches
from engine.core.collect import Series
from engine.core.guardrails import decide
from engine.core.model import (
    Action,
    Confidence,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Execution,
    Mode,
    Recommendation,
    ResourcePair,
    Savings,
    WorkloadSpec,
)
from engine.core.policy import validate_policy
from engine.core.rollout import (
    Rollout,
    Signals,
    baseline_of,
    evidence,
    live_verdict,
    parse_rollout,
    pod_regex,
    rollout_expr,
    unavailable_expr,
)
from engine.core.verification import (
    Phase,
    Slo,
    Verification,
    VerificationOverrides,
    VerificationParams,
    advance,
    hold_state,
    revert_failed,
    revert_message,
    reverted,
    start,
    sync_hold,
)

MIB = 1024.0 * 1024.0
T0 = 1_800_000_000.0
NS, NAME = "smarthealth", "patient-api"


def current(
    cpu: float = 0.5, mem: float = 512 * MIB, cpu_limit: float | None = None
) -> ContainerSpec:
    return ContainerSpec(
        name="app",
        requests=ResourcePair(cpu=cpu, memory=mem),
        limits=ResourcePair(cpu=cpu_limit, memory=mem),
    )


def decision(mem: float = 256 * MIB, cpu: float = 0.25, **kw: Any) -> Decision:
    c = ContainerRecommendation(
        name="app",
        current=current(**kw),
        cpu_request=cpu,
        memory_request=mem,
        memory_limit=mem,
        confidence=Confidence.HIGH,
    )
    return Decision(
        id="dec-1",
        recommendation_id="rec-1",
        workload_id=f"{NS}/Deployment/{NAME}",
        namespace=NS,
        kind="Deployment",
        name=NAME,
        action=Action.APPLY,
        guardrail="autopilot",
        reason="policy p is in autopilot mode",
        mode=Mode.AUTOPILOT,
        policy_id="p",
        policy_version=1,
        containers=[c],
        decided_at=T0 - 10,
    )


def execution(sha: str = "a" * 40) -> Execution:
    return Execution(
        id="exec-c1",
        cycle="c1",
        workload_ids=[f"{NS}/Deployment/{NAME}"],
        decision_ids=["dec-1"],
        outcome="pushed",
        commit_sha=sha,
        executed_at=T0,
    )


def watch(**params: Any) -> Verification:
    v = start(decision(), execution(), VerificationParams(**params))
    assert v is not None
    return v


def s(name: str, value: float, **labels: str) -> Series:
    return Series({"__name__": name, "namespace": NS, **labels}, [(T0, value)])


def pod_series(
    pod: str, *, cpu: float, mem: float, ready: bool = True, rs: str = f"{NAME}-abc"
) -> list[Series]:
    out = [
        s("kube_pod_owner", 1, pod=pod, owner_kind="ReplicaSet", owner_name=rs),
        s("kube_pod_status_ready", 1 if ready else 0, pod=pod, condition="true"),
        s("kube_pod_status_ready", 0 if ready else 1, pod=pod, condition="false"),
    ]
    for section, res, unit, value in (
        ("requests", "cpu", "core", cpu),
        ("requests", "memory", "byte", mem),
        ("limits", "memory", "byte", mem),
    ):
        out.append(
            s(
                f"kube_pod_container_resource_{section}",
                value,
                pod=pod,
                container="app",
                resource=res,
                unit=unit,
            )
        )
    return out


def cluster(pods: list[list[Series]], desired: int = 2, updated: int = 2, ready: int = 2):
    series = [x for p in pods for x in p]
    series += [
        s(
            "kube_replicaset_owner",
            1,
            replicaset=f"{NAME}-abc",
            owner_kind="Deployment",
            owner_name=NAME,
        ),
        s(
            "kube_replicaset_owner",
            1,
            replicaset=f"{NAME}-old",
            owner_kind="Deployment",
            owner_name=NAME,
        ),
        s("kube_deployment_spec_replicas", desired, deployment=NAME),
        s("kube_deployment_status_replicas_updated", updated, deployment=NAME),
        s("kube_deployment_status_replicas_available", ready, deployment=NAME),
        # another workload in the namespace: never counted
        s("kube_pod_owner", 1, pod="billing-x-y", owner_kind="ReplicaSet", owner_name="billing-x"),
        s("kube_pod_status_ready", 1, pod="billing-x-y", condition="true"),
    ]
    return series


NEW = {"cpu": 0.25, "mem": 256 * MIB}
OLD = {"cpu": 0.5, "mem": 512 * MIB}


# --- start and rollout ---
def test_start_records_every_field_the_patch_sets_with_a_stable_id() -> None:
    v = watch()
    fields = {(e.container, e.section, e.resource): (e.old, e.new) for e in v.expected}
    assert fields == {
        ("app", "requests", "cpu"): ("500m", "250m"),
        ("app", "requests", "memory"): ("512Mi", "256Mi"),
        ("app", "limits", "memory"): ("512Mi", "256Mi"),
    }
    assert v.phase is Phase.PENDING and v.applied_at == T0 and v.commit_sha == "a" * 40
    assert v.id == watch().id != start(decision(), execution("b" * 40), VerificationParams()).id
    assert start(decision(), execution().model_copy(update={"commit_sha": None}), v.params) is None


def test_live_only_when_every_ready_pod_carries_the_new_values() -> None:
    v = watch()
    old = cluster(
        [pod_series("patient-api-old-1", rs=f"{NAME}-old", **OLD)] * 1
        + [pod_series("patient-api-abc-1", **NEW)]
    )
    is_live, why = live_verdict(v, parse_rollout(old, v))
    assert not is_live and "1 of 2 ready pods still run other values" in why

    # the old pod is gone but the second new one is not ready yet
    rolling = cluster(
        [
            pod_series("patient-api-abc-1", **NEW),
            pod_series("patient-api-abc-2", ready=False, **NEW),
        ],
        ready=1,
    )
    is_live, why = live_verdict(v, parse_rollout(rolling, v))
    assert not is_live and "1 of 2 desired replicas ready" in why

    done = cluster([pod_series("patient-api-abc-1", **NEW), pod_series("patient-api-abc-2", **NEW)])
    rollout = parse_rollout(done, v)
    assert [p.name for p in rollout.pods] == ["patient-api-abc-1", "patient-api-abc-2"]
    assert (rollout.desired, rollout.updated, rollout.ready) == (2, 2, 2)
    assert live_verdict(v, rollout)[0]

    # the controller still counts a replica not updated (e.g. a pod not yet reported)
    lagging = cluster(
        [pod_series("patient-api-abc-1", **NEW), pod_series("patient-api-abc-2", **NEW)], updated=1
    )
    is_live, why = live_verdict(v, parse_rollout(lagging, v))
    assert not is_live and "1 of 2 replicas updated" in why
    assert live_verdict(v, Rollout()) == (
        False,
        f"no ready pod of {v.workload_id} reported by kube-state-metrics",
    )


def test_rollout_query_names_the_status_metrics_of_the_kind() -> None:
    v = watch()
    expr = rollout_expr(v)
    assert 'namespace="smarthealth"' in expr and "kube_deployment_status_replicas_updated" in expr
    sts = v.model_copy(update={"kind": "StatefulSet"})
    assert "kube_statefulset_status_replicas_ready" in rollout_expr(sts)
    assert pod_regex("StatefulSet", "records-db") == "records\\-db-[0-9]+"
    assert 'statefulset="records-db"' in (
        unavailable_expr(sts.model_copy(update={"name": "records-db"}), 600, 60) or ""
    )


# --- the state machine ---
def test_pending_becomes_live_then_healthy_after_the_window() -> None:
    v = watch(deadline=600, window=3600)
    v = advance(v, T0 + 30, live=(False, "0 of 2"), evidence=[], autopilot=True)
    assert v.phase is Phase.PENDING and v.detail == "0 of 2" and v.checked_at == T0 + 30
    v = advance(v, T0 + 60, live=(True, "all 2 ready pods"), evidence=[], autopilot=True)
    assert v.phase is Phase.LIVE and v.live_at == T0 + 60
    v = advance(v, T0 + 60 + 3599, live=(True, ""), evidence=[], autopilot=True)
    assert v.phase is Phase.LIVE
    v = advance(v, T0 + 60 + 3600, live=(True, ""), evidence=[], autopilot=True)
    assert v.phase is Phase.HEALTHY and v.finished and v.penalty_until is None
    assert advance(v, T0 + 99999, live=(False, ""), evidence=[], autopilot=True) is v


def test_not_synced_after_the_deadline() -> None:
    v = watch(deadline=600)
    v = advance(
        v,
        T0 + 599,
        live=(False, "2 of 2 ready pods still run other values"),
        evidence=[],
        autopilot=True,
    )
    assert v.phase is Phase.PENDING
    v = advance(
        v,
        T0 + 600,
        live=(False, "2 of 2 ready pods still run other values"),
        evidence=[],
        autopilot=True,
    )
    assert v.phase is Phase.NOT_SYNCED and "not live 10m after the push" in v.detail
    state = hold_state(v)
    assert state["verification"] == "not-synced" and state["hold_reason"].startswith(
        "change aaaaaaaaaaaa"
    )


def oom_cluster(oom_at: float, *, pod_values: dict[str, float] = NEW) -> list[Series]:
    pod = "patient-api-abc-1"
    pods = [pod_series(pod, ready=False, **pod_values), pod_series(f"{NAME}-abc-2", **pod_values)]
    reason = "kube_pod_container_status_last_terminated_reason"
    return [
        *cluster(pods),
        s(reason, 1, pod=pod, container="app", reason="OOMKilled"),
        s("kube_pod_container_status_last_terminated_timestamp", oom_at, pod=pod, container="app"),
    ]


def test_an_oom_of_a_pod_with_the_new_limit_after_the_push_is_a_regression() -> None:
    v = watch(penalty=86400)
    found = evidence(v, parse_rollout(oom_cluster(T0 + 120), v), Signals(), T0 + 130)
    assert [(e.signal, e.pod, e.container, e.at) for e in found] == [
        ("oom", "patient-api-abc-1", "app", T0 + 120)
    ]
    assert "memory limit 256Mi" in found[0].line()
    # crashes count while pending: a lowered limit that OOMs at start never goes live
    v2 = advance(v, T0 + 130, live=(False, "1 of 2"), evidence=found, autopilot=True)
    assert v2.phase is Phase.REGRESSED and v2.cause == "oom" and v2.revert_pending
    assert v2.penalty_until == T0 + 130 + 86400 and "revert due" in v2.detail
    done = reverted(v2, "f" * 40, T0 + 140, "reverted")
    assert done.phase is Phase.REVERTED and done.finished and done.revert_sha == "f" * 40
    assert hold_state(done)["penalty_until"] == T0 + 130 + 86400


@pytest.mark.parametrize(
    ("oom_at", "values"),
    [(T0 - 60, NEW), (T0 + 120, OLD)],
    ids=["oom-before-the-change", "oom-of-a-pod-with-the-old-values"],
)
def test_an_oom_not_caused_by_the_change_is_not_attributed(
    oom_at: float, values: dict[str, float]
) -> None:
    v = watch()
    assert (
        evidence(v, parse_rollout(oom_cluster(oom_at, pod_values=values), v), Signals(), T0 + 130)
        == []
    )


def test_an_oom_after_a_change_that_did_not_lower_memory_is_not_attributed() -> None:
    raised = start(
        decision(mem=600 * MIB, cpu=0.25), execution(), VerificationParams()
    )  # memory 512Mi -> 600Mi, cpu 500m -> 250m
    assert raised is not None
    more = {"cpu": 0.25, "mem": 600 * MIB}
    rollout = parse_rollout(oom_cluster(T0 + 120, pod_values=more), raised)
    assert evidence(raised, rollout, Signals(), T0 + 130) == []


def test_recommend_mode_reports_the_regression_without_a_revert() -> None:
    v = watch()
    found = evidence(v, parse_rollout(oom_cluster(T0 + 120), v), Signals(), T0 + 130)
    v = advance(v, T0 + 130, live=(False, ""), evidence=found, autopilot=False)
    assert v.phase is Phase.REGRESSED and not v.revert_pending and v.finished
    assert "revert recommended" in v.detail and v.penalty_until is not None


def test_restarts_count_only_changed_containers_of_pods_with_new_values() -> None:
    v = watch()
    rollout = parse_rollout(
        cluster(
            [
                pod_series("patient-api-abc-1", **NEW),
                pod_series("patient-api-old-1", rs=f"{NAME}-old", **OLD),
            ]
        ),
        v,
    )
    signals = Signals(
        restarts={
            ("patient-api-abc-1", "app"): 2,
            ("patient-api-old-1", "app"): 5,  # old values: not this change's doing
            ("patient-api-abc-1", "sidecar"): 3,  # not a changed container
        }
    )
    found = evidence(v, rollout, signals, T0 + 60)
    assert [(e.signal, e.pod, e.value) for e in found] == [("restarts", "patient-api-abc-1", 2)]
    assert evidence(watch(restarts=2), rollout, signals, T0 + 60) == []
    # a crash-looping fleet: the evidence stays bounded
    many = [pod_series(f"patient-api-abc-{i}", **NEW) for i in range(30)]
    storm = Signals(restarts={(f"patient-api-abc-{i}", "app"): 3 for i in range(30)})
    assert len(evidence(v, parse_rollout(cluster(many, desired=30), v), storm, T0 + 60)) == 10


def live_watch(**params: Any) -> Verification:
    v = advance(watch(**params), T0 + 60, live=(True, ""), evidence=[], autopilot=True)
    assert v.phase is Phase.LIVE
    return v


def test_throttling_counts_only_with_a_cpu_limit_and_when_new() -> None:
    cpu_limited = start(decision(cpu_limit=0.5), execution(), VerificationParams())
    assert cpu_limited is not None
    d = decision().model_copy(
        update={"containers": [decision().containers[0].model_copy(update={"cpu_limit": 0.25})]}
    )
    v = advance(
        start(d, execution(), VerificationParams()),
        T0 + 60,
        live=(True, ""),
        evidence=[],
        autopilot=True,
    )
    assert v is not None and any(e.section == "limits" and e.resource == "cpu" for e in v.expected)
    rollout = Rollout()
    signals = Signals(throttling={"app": 0.4})
    v = v.model_copy(update={"baseline": baseline_of(Signals(throttling={"app": 0.05}))})
    found = evidence(v, rollout, signals, T0 + 120)
    assert [(e.signal, e.value, e.baseline) for e in found] == [("throttling", 0.4, 0.05)]
    # already throttled that much before the change: not attributed
    v = v.model_copy(update={"baseline": baseline_of(Signals(throttling={"app": 0.3}))})
    assert evidence(v, rollout, signals, T0 + 120) == []
    # no CPU limit anywhere: throttling is not a signal of this change
    assert evidence(live_watch(), rollout, signals, T0 + 120) == []


def test_readiness_and_slo_breaches_after_going_live() -> None:
    slo = Slo(name="p99", expr='histogram_quantile(0.99, x{namespace="$namespace"})', threshold=0.5)
    v = live_watch(slos=(slo,)).model_copy(update={"baseline": {"readiness": 0.0, "slo:p99": 0.2}})
    found = evidence(v, Rollout(), Signals(unavailable=1, slos={"p99": 0.9}), T0 + 120)
    assert [(e.signal, e.value) for e in found] == [("readiness", 1), ("slo:p99", 0.9)]
    # both already breaching before the change: none is this change's doing
    v = v.model_copy(update={"baseline": {"readiness": 1.0, "slo:p99": 0.7}})
    assert evidence(v, Rollout(), Signals(unavailable=1, slos={"p99": 0.9}), T0 + 120) == []
    # while pending, a readiness dip is the rollout itself
    assert evidence(watch(), Rollout(), Signals(unavailable=2), T0 + 30) == []


def test_a_failed_revert_keeps_regressed_and_the_penalty() -> None:
    v = advance(
        live_watch(),
        T0 + 90,
        live=(True, ""),
        evidence=evidence(live_watch(), Rollout(), Signals(unavailable=1), T0 + 90),
        autopilot=True,
    )
    v = revert_failed(v, T0 + 100, "app limits.memory changed since")
    assert v.phase is Phase.REGRESSED and v.finished and v.penalty_until is not None
    assert "revert not made" in v.detail


# --- revert ---
def doc(containers: dict[str, dict[str, dict[str, str]]]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": n, "resources": r} for n, r in sorted(containers.items())
                    ]
                }
            }
        },
    }


def test_revert_document_restores_the_changed_fields_only() -> None:
    before = doc({"app": {"requests": {"cpu": "500m"}}, "sidecar": {"limits": {"memory": "64Mi"}}})
    after = doc(
        {
            "app": {"requests": {"cpu": "250m", "memory": "256Mi"}},
            "sidecar": {"limits": {"memory": "64Mi"}},
        }
    )
    # since the commit, a later change moved sidecar; app is as the commit left it
    now = doc(
        {
            "app": {"requests": {"cpu": "250m", "memory": "256Mi"}},
            "sidecar": {"limits": {"memory": "80Mi"}},
        }
    )
    out, kept = patches.revert_document("Deployment", NAME, before, after, now)
    assert out == doc(
        {"app": {"requests": {"cpu": "500m"}}, "sidecar": {"limits": {"memory": "80Mi"}}}
    )
    assert kept == []


def test_revert_of_a_first_change_removes_the_file_and_reports_later_edits() -> None:
    after = doc({"app": {"limits": {"memory": "256Mi"}, "requests": {"memory": "256Mi"}}})
    assert patches.revert_document("Deployment", NAME, None, after, after) == (None, [])
    edited = doc({"app": {"limits": {"memory": "300Mi"}, "requests": {"memory": "256Mi"}}})
    out, kept = patches.revert_document("Deployment", NAME, None, after, edited)
    assert out == doc({"app": {"limits": {"memory": "300Mi"}}})
    assert kept == ["app limits.memory changed since (300Mi)"]


def test_revert_message_names_the_change_and_the_evidence_in_trailers() -> None:
    v = watch()
    found = evidence(v, parse_rollout(oom_cluster(T0 + 120), v), Signals(), T0 + 130)
    v = advance(v, T0 + 130, live=(False, ""), evidence=found, autopilot=True)
    message = revert_message(v)
    trailers = patches.parse_trailers(message)
    assert trailers["Kubefinops-Reverts"] == ["a" * 40]
    assert trailers["Kubefinops-Reverts-Decision"] == ["dec-1"]
    assert trailers["Kubefinops-Verification"] == [v.id]
    assert len(trailers["Kubefinops-Evidence"]) == 1
    assert "OOMKilled" in trailers["Kubefinops-Evidence"][0]
    assert "memory limit 256Mi" in trailers["Kubefinops-Evidence"][0]
    assert message.startswith("revert(rightsizing): smarthealth/Deployment/patient-api after oom")


# --- the gate after a verification ---
def rec(mem: float, cur_mem: float = 512 * MIB) -> tuple[Recommendation, WorkloadSpec]:
    c = ContainerRecommendation(
        name="app",
        current=current(mem=cur_mem),
        memory_request=mem,
        memory_limit=mem,
        confidence=Confidence.HIGH,
    )
    spec = WorkloadSpec(
        namespace=NS, kind="Deployment", name=NAME, replicas=2, containers=[c.current]
    )
    r = Recommendation(
        id=f"rec-{mem}",
        workload_id=spec.workload_id,
        namespace=NS,
        kind="Deployment",
        name=NAME,
        replicas=2,
        containers=[c],
        savings=Savings(),
        generated_at=T0,
    )
    return r, spec


def test_penalty_holds_the_next_decrease_but_not_an_increase() -> None:
    p = validate_policy({"id": "p", "mode": "autopilot"})
    r, spec = rec(256 * MIB)
    held = decide(
        r, spec, p, last_applied_at=None, last_applied_id=None, now=T0, penalty_until=T0 + 10
    )
    assert (held.action, held.guardrail) == (Action.HOLD, "penalty")
    assert held.containers[0].memory_limit is None and "no decrease until" in held.reason
    later = decide(
        r, spec, p, last_applied_at=None, last_applied_id=None, now=T0 + 11, penalty_until=T0 + 10
    )
    assert (later.action, later.guardrail) == (Action.APPLY, "autopilot")
    up, spec = rec(800 * MIB)
    grown = decide(
        up, spec, p, last_applied_at=None, last_applied_id=None, now=T0, penalty_until=T0 + 10
    )
    assert (grown.action, grown.guardrail) == (Action.APPLY, "autopilot")


def test_not_synced_holds_until_the_cluster_shows_the_change() -> None:
    v = advance(watch(deadline=60), T0 + 60, live=(False, "stuck"), evidence=[], autopilot=True)
    last = hold_state(v)
    _, spec = rec(256 * MIB, cur_mem=512 * MIB)
    assert sync_hold(last, spec, T0 + 100) is not None
    r, _ = rec(200 * MIB)
    p = validate_policy({"id": "p", "mode": "autopilot"})
    d = decide(
        r,
        spec,
        p,
        last_applied_at=None,
        last_applied_id=None,
        now=T0 + 100,
        sync_hold=sync_hold(last, spec, T0 + 100),
    )
    assert (d.action, d.guardrail) == (Action.HOLD, "not-synced")
    synced = spec.model_copy(update={"containers": [current(cpu=0.25, mem=256 * MIB)]})
    assert sync_hold(last, synced, T0 + 100) is None
    assert sync_hold(last, spec, last["hold_until"]) is None


def test_policy_overrides_resolve_over_the_worker_defaults() -> None:
    p = validate_policy(
        {
            "id": "p",
            "verification": {
                "window": "30m",
                "slos": [{"name": "p99", "expr": "x", "threshold": 0.3}],
            },
        }
    )
    params = p.verification.resolve(VerificationParams(deadline=900, window=7200))
    assert (params.deadline, params.window, params.penalty) == (900, 1800, 7 * 86400)
    assert [x.name for x in params.slos] == ["p99"]
    assert VerificationOverrides().resolve(VerificationParams()) == VerificationParams()
    with pytest.raises(Exception, match=r"verification\.throttling"):
        validate_policy({"id": "p", "verification": {"throttling": 2}})


def test_cycle_report_lists_the_outcomes_of_earlier_changes() -> None:
    from engine.core import report as rp

    v = watch()
    found = evidence(v, parse_rollout(oom_cluster(T0 + 120), v), Signals(), T0 + 130)
    v = reverted(
        advance(v, T0 + 130, live=(False, ""), evidence=found, autopilot=True),
        "f" * 40,
        T0 + 140,
        "reverted",
    )
    report = rp.CycleReport(cycle_id="c2", generated_at=T0 + 3600, decisions=[], verifications=[v])
    (row,) = json.loads(rp.render_json(report))["verifications"]
    assert (row["outcome"], row["cause"], row["revert_sha"]) == ("reverted", "oom", "f" * 40)
    assert "OOMKilled" in row["evidence"][0]
    assert "## Verified apply: earlier changes" in rp.render_markdown(report)
    assert 'id="verifications"' in rp.render_html(report) and "ffffffffffff" in rp.render_html(
        report
    )
    bare = rp.CycleReport(cycle_id="c3", generated_at=T0, decisions=[])
    assert "Verified apply" not in rp.render_markdown(bare) + rp.render_html(bare)
