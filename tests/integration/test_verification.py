"""Verified apply against a real Prometheus receiving live samples and the real Git remote.

The cluster is simulated only in what it exports: kube-state-metrics series written into a
Prometheus 2.42 through its remote-write receiver (tests/integration/cluster_sim.py).  The
change itself is a real commit the GitOps writer pushed; the revert is a real commit on the
same remote.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.adapters.gitops import GitOpsWriter
from engine.adapters.prometheus import PrometheusClient
from engine.adapters.verification import ClusterTelemetry, check, settle
from engine.core import patches
from engine.core.collect import Series
from engine.core.guardrails import decide
from engine.core.model import (
    Action,
    Confidence,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Mode,
    Recommendation,
    ResourcePair,
    Savings,
    WorkloadSpec,
)
from engine.core.policy import validate_policy
from engine.core.rollout import rollout_expr
from engine.core.verification import (
    Phase,
    Verification,
    VerificationParams,
    hold_state,
    start,
)
from engine.settings import Settings, load_settings
from tests.harness.git_http import GitRemote
from tests.harness.remote_write import LivePrometheus
from tests.integration.cluster_sim import MIB, SimDeployment

pytestmark = pytest.mark.integration

OVERLAY = "smarthealth-gitops/overlays/production"
PATCH = f"{OVERLAY}/kubefinops/deployment-patient-api.yaml"
OLD = {
    ("requests", "cpu"): 0.5,
    ("requests", "memory"): 512 * MIB,
    ("limits", "memory"): 1024 * MIB,
}
NEW = {("requests", "cpu"): 0.5, ("requests", "memory"): 256 * MIB, ("limits", "memory"): 256 * MIB}


def settings_for(prom: LivePrometheus, remote: GitRemote | None, workdir: Path) -> Settings:
    return load_settings(
        prometheus_url=prom.url,
        git_remote_url=remote.url if remote else None,
        git_token=remote.token if remote else None,
        git_username=remote.username if remote else "x",
        git_workdir=workdir / "gitops",
        data_dir=workdir,
        kafka_username=None,
    )


def lowered_memory(did: str = "dec-lower") -> Decision:
    current = ContainerSpec(
        name="app",
        requests=ResourcePair(cpu=0.5, memory=512 * MIB),
        limits=ResourcePair(memory=1024 * MIB),
    )
    rec = ContainerRecommendation(
        name="app",
        current=current,
        memory_request=256 * MIB,
        memory_limit=256 * MIB,
        confidence=Confidence.HIGH,
        reasons=["peak 210Mi + 15%"],
    )
    return Decision(
        id=did,
        recommendation_id="rec-lower",
        workload_id="smarthealth/Deployment/patient-api",
        namespace="smarthealth",
        kind="Deployment",
        name="patient-api",
        action=Action.APPLY,
        guardrail="autopilot",
        reason="policy p is in autopilot mode",
        mode=Mode.AUTOPILOT,
        policy_id="p",
        policy_version=1,
        containers=[rec],
        savings=Savings(monthly_delta=-3.0, monthly_savings=3.0),
        decided_at=time.time(),
    )


def other_workload() -> Decision:
    """A second workload changed in the same cycle: a revert of patient-api must not touch it."""
    d = lowered_memory("dec-billing")
    c = ContainerRecommendation(
        name="app",
        current=ContainerSpec(name="app", requests=ResourcePair(cpu=1.0, memory=1024 * MIB)),
        cpu_request=0.6,
        confidence=Confidence.HIGH,
    )
    return d.model_copy(
        update={
            "workload_id": "smarthealth/Deployment/billing",
            "name": "billing",
            "containers": [c],
        }
    )


async def watch_until(
    telemetry: ClusterTelemetry, v: Verification, phases: set[Phase], timeout: float = 30.0
) -> Verification:
    deadline = time.monotonic() + timeout
    while True:
        v = await check(telemetry, v, time.time(), autopilot=True)
        if v.phase in phases or time.monotonic() > deadline:
            return v
        await asyncio.sleep(0.3)


def params(**kw: float) -> VerificationParams:
    return VerificationParams(**{"deadline": 60.0, "window": 60.0, **kw})


def test_new_requests_on_all_ready_pods_make_the_change_live_then_healthy(
    prometheus_rw: LivePrometheus, tmp_path: Path
) -> None:
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)
    v = start(lowered_memory(), _execution(time.time()), params(window=3.0))
    assert v is not None

    async def scenario() -> tuple[Verification, Verification, Verification]:
        async with PrometheusClient(settings_for(prometheus_rw, None, tmp_path)) as client:
            telemetry = ClusterTelemetry(client)
            before = await check(telemetry, v, time.time(), autopilot=True)
            sim.rollout(NEW)
            live = await watch_until(telemetry, before, {Phase.LIVE})
            healthy = await watch_until(telemetry, live, {Phase.HEALTHY}, timeout=20)
            return before, live, healthy

    before, live, healthy = asyncio.run(scenario())
    assert before.phase is Phase.PENDING
    assert "2 of 2 ready pods still run other values" in before.detail
    assert live.phase is Phase.LIVE and live.live_at is not None, live.detail
    assert "all 2 ready pods carry the new values" in live.detail
    assert live.baseline is None  # measured at the first check after going live
    assert healthy.phase is Phase.HEALTHY, healthy.detail
    assert healthy.evidence == [] and healthy.penalty_until is None
    assert healthy.baseline is not None


def test_a_change_whose_requests_never_change_is_not_synced_after_the_deadline(
    prometheus_rw: LivePrometheus, tmp_path: Path
) -> None:
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)
    v = start(lowered_memory(), _execution(time.time()), params(deadline=2.0))
    assert v is not None

    async def scenario() -> Verification:
        async with PrometheusClient(settings_for(prometheus_rw, None, tmp_path)) as client:
            return await watch_until(ClusterTelemetry(client), v, {Phase.NOT_SYNCED, Phase.LIVE})

    out = asyncio.run(scenario())
    assert out.phase is Phase.NOT_SYNCED
    assert "not live 2s after the push" in out.detail
    assert "ready pods still run other values" in out.detail
    assert hold_state(out)["hold_reason"].startswith(f"change {out.commit_sha[:12]} not live")


def _execution(at: float, sha: str = "0" * 40, cycle: str = "c-test"):
    from engine.core.model import Execution

    return Execution(
        id=f"exec-{cycle}",
        cycle=cycle,
        workload_ids=["smarthealth/Deployment/patient-api"],
        decision_ids=["dec-lower"],
        outcome="pushed",
        commit_sha=sha,
        executed_at=at,
    )


def test_oom_after_a_lowered_limit_reverts_once_through_git_and_holds_the_next_decrease(
    prometheus_rw: LivePrometheus, git_remote: GitRemote, tmp_path: Path
) -> None:
    remote = git_remote.fresh("verify-oom")
    settings = settings_for(prometheus_rw, remote, tmp_path)
    writer = GitOpsWriter(settings)
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)

    async def scenario() -> tuple[Verification, Verification, Verification]:
        change = lowered_memory()
        execution = await writer.apply_cycle("c-oom", [change, other_workload()])
        assert execution.outcome == "pushed", execution.detail
        assert len(execution.workload_ids) == 2, execution.detail
        v = start(change, execution, params(penalty=3600))
        assert v is not None
        async with PrometheusClient(settings) as client:
            telemetry = ClusterTelemetry(client)
            sim.rollout(NEW)
            live = await watch_until(telemetry, v, {Phase.LIVE})
            assert live.phase is Phase.LIVE, live.detail
            live = await check(telemetry, live, time.time(), autopilot=True)  # baseline
            sim.oom(0)
            regressed = await watch_until(telemetry, live, {Phase.REGRESSED})
            done = await settle(regressed, writer, time.time())
            # the same watch settled again (a replay after a crash): no second commit
            again = await settle(regressed, writer, time.time())
            return regressed, done, again

    heads_before = len(remote.log())
    regressed, done, again = asyncio.run(scenario())
    assert regressed.phase is Phase.REGRESSED and regressed.cause == "oom", regressed.detail
    assert done.phase is Phase.REVERTED and done.revert_sha, done.detail
    assert again.phase is Phase.REVERTED and again.revert_sha == done.revert_sha
    log = remote.log()
    assert len(log) == heads_before + 2  # the change, then exactly one revert
    assert log[0] == done.revert_sha
    message = remote.log(fmt="%B")[0]
    trailers = patches.parse_trailers(message)
    assert trailers["Kubefinops-Reverts"] == [regressed.commit_sha]
    assert trailers["Kubefinops-Verification"] == [regressed.id]
    assert trailers["Kubefinops-Reverts-Decision"] == ["dec-lower"]
    # the OOM first, then the restart it caused, each with its metric, value and threshold
    oom, restart = trailers["Kubefinops-Evidence"]
    assert "OOMKilled" in oom and "memory limit 256Mi" in oom and "threshold 0" in oom
    assert restart.startswith("restarts ") and "restarts_total = 1 (threshold 0)" in restart
    # that workload's previous values only: its bot file is gone (first change), billing's stays
    assert remote.changed_files() == [
        f"{OVERLAY}/kubefinops/deployment-patient-api.yaml",
        f"{OVERLAY}/kubefinops/kustomization.yaml",
    ]
    assert "0.6" not in remote.show(f"{OVERLAY}/kubefinops/deployment-billing.yaml")
    assert "600m" in remote.show(f"{OVERLAY}/kubefinops/deployment-billing.yaml")
    assert "deployment-patient-api.yaml" not in remote.show(
        f"{OVERLAY}/kubefinops/kustomization.yaml"
    )

    # the penalty: the next decrease of that workload is held, not applied
    last = hold_state(done)
    spec = WorkloadSpec(
        namespace="smarthealth",
        kind="Deployment",
        name="patient-api",
        replicas=2,
        containers=[lowered_memory().containers[0].current],
    )
    rec = Recommendation(
        id="rec-next",
        workload_id=spec.workload_id,
        namespace="smarthealth",
        kind="Deployment",
        name="patient-api",
        replicas=2,
        containers=[lowered_memory().containers[0]],
        savings=Savings(),
        generated_at=time.time(),
    )
    policy = validate_policy({"id": "p", "mode": "autopilot"})
    nxt = decide(
        rec,
        spec,
        policy,
        last_applied_at=None,
        last_applied_id=None,
        now=time.time(),
        penalty_until=last["penalty_until"],
    )
    assert (nxt.action, nxt.guardrail) == (Action.HOLD, "penalty")


def test_a_healthy_window_makes_no_commit(
    prometheus_rw: LivePrometheus, git_remote: GitRemote, tmp_path: Path
) -> None:
    remote = git_remote.fresh("verify-healthy")
    settings = settings_for(prometheus_rw, remote, tmp_path)
    writer = GitOpsWriter(settings)
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)

    async def scenario() -> Verification:
        execution = await writer.apply_cycle("c-healthy", [lowered_memory()])
        v = start(lowered_memory(), execution, params(window=2.0))
        assert v is not None
        async with PrometheusClient(settings) as client:
            telemetry = ClusterTelemetry(client)
            sim.rollout(NEW)
            out = await watch_until(telemetry, v, {Phase.HEALTHY, Phase.REGRESSED})
            return await settle(out, writer, time.time())

    out = asyncio.run(scenario())
    assert out.phase is Phase.HEALTHY, out.detail
    assert len(remote.log()) == 2  # the seed and the change: no revert
    assert "revert" not in remote.log(fmt="%s")[0]


class CountingClient(PrometheusClient):
    """The real client, recording every query it sends (to the real Prometheus)."""

    asked: list[str]

    async def query(self, expr: str, at: float) -> list[Series]:
        self.asked = [*getattr(self, "asked", []), expr]
        return await super().query(expr, at)


def test_watches_of_one_namespace_share_a_ticks_queries(
    prometheus_rw: LivePrometheus, tmp_path: Path
) -> None:
    """After a cycle of many changes one tick asked the same whole-namespace rollout selector
    once per watch; now once per tick, with answers equal to unshared ones."""
    sim = SimDeployment(prometheus_rw.writer)
    sim.start(OLD)
    pushed = time.time()
    first = start(lowered_memory(), _execution(pushed), params())
    billing = other_workload()
    second = start(
        billing,
        _execution(pushed).model_copy(
            update={"workload_ids": [billing.workload_id], "decision_ids": [billing.id]}
        ),
        params(),
    )
    assert first is not None and second is not None

    async def scenario() -> tuple[list[Verification], list[Verification], list[str], list[str]]:
        async with CountingClient(settings_for(prometheus_rw, None, tmp_path)) as client:
            shared = ClusterTelemetry(client)
            at = time.time()
            together = [await check(shared, v, at, autopilot=True) for v in (first, second)]
            one_tick = list(client.asked)
            alone = [
                await check(ClusterTelemetry(client), v, at, autopilot=True)
                for v in (first, second)
            ]
            await check(shared, first, at + 1, autopilot=True)  # the next tick asks again
            return together, alone, one_tick, client.asked[len(one_tick) :]

    together, alone, one_tick, later = asyncio.run(scenario())
    assert together == alone
    assert rollout_expr(first) == rollout_expr(second)
    assert one_tick.count(rollout_expr(first)) == 1
    assert len(one_tick) == len(set(one_tick))  # the restarts query is shared too
    assert later.count(rollout_expr(first)) == 3  # twice unshared, once in the next tick
