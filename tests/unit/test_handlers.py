"""The agents' handlers without a broker: bytes in, records out, over in-memory fakes.

The real-server tests (tests/integration) run the same handlers inside Faust workers; these drive
them directly — the recommender (through the aggregator's cycle-end), the gate, the executor and
the reporter — including a workload the Git writer holds, all the way into the report.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from agents import aggregator, collector, executor, gate, ledger, policies, reporter
from agents import history as history_agent
from agents.runtime import Runtime
from engine.backoff import retry_forever
from engine.core.bundles import partition_of
from engine.core.model import (
    Action,
    ContainerSpec,
    CycleEnd,
    CycleSummary,
    Decision,
    Execution,
    MetricsBatch,
    Recommendation,
    ResourcePair,
    WorkloadSpec,
)
from engine.core.policy import validate_policy
from engine.errors import DependencyUnavailable, PermanentError, RetryableError
from engine.metrics import CYCLE_FAILURES
from engine.services import Services
from tests.fakes import (
    FakeGit,
    FakeHistory,
    FakePolicies,
    FakeReports,
    FakeUsage,
    dead_letters,
    metrics_sent,
    runtime,
    sent,
)

NOW = 1_800_000_000.0
MIB = 2.0**20
AUTOPILOT = {"id": "shop-autopilot", "selectors": {"namespaces": ["shop"]}, "mode": "autopilot"}


def spec(name: str, namespace: str = "shop") -> WorkloadSpec:
    return WorkloadSpec(
        namespace=namespace,
        kind="Deployment",
        name=name,
        replicas=2,
        containers=[
            ContainerSpec(
                name="app",
                requests=ResourcePair(cpu=1.0, memory=1024 * MIB),
                limits=ResourcePair(memory=1024 * MIB),
            )
        ],
        observed_at=NOW,
    )


def usage(s: WorkloadSpec, hours: int = 8, seed: int = 1) -> list[MetricsBatch]:
    """Hourly batches of minute samples ending before NOW: ~0.2 cores, ~300 MiB (oversized)."""
    rng = np.random.default_rng(seed)
    end = NOW - 120
    out = []
    for h in range(hours):
        t0 = end - (hours - h) * 3600
        ts = np.arange(t0 + 60, t0 + 3601, 60, dtype=float).tolist()
        cpu = rng.uniform(0.15, 0.25, len(ts)).tolist()
        mem = rng.uniform(280, 320, len(ts)) * MIB
        out.append(
            MetricsBatch(
                namespace=s.namespace,
                kind=s.kind,
                workload=s.name,
                container="app",
                start=t0,
                end=t0 + 3600,
                samples={
                    "cpu": list(zip(ts, cpu, strict=True)),
                    "memory": list(zip(ts, mem.tolist(), strict=True)),
                },
            )
        )
    return out


def key(s: WorkloadSpec) -> bytes:
    return s.workload_id.encode()


def with_autopilot(rt: Runtime) -> Runtime:
    rt.tables.policies[AUTOPILOT["id"]] = validate_policy(AUTOPILOT)
    return rt


async def recommend_for(rt: Runtime, *specs: WorkloadSpec) -> list[Recommendation]:
    """What the collector sends for a cycle: usage batches, then the cycle-end marker."""
    for s in specs:
        for batch in usage(s):
            await aggregator.ingest(rt, key(s), batch.model_dump_json().encode())
        marker = CycleEnd(cycle="20261130T090000Z", spec=s)
        await aggregator.ingest(rt, key(s), marker.model_dump_json().encode())
    return [Recommendation.model_validate(v) for v in sent(rt, "recommendations")]


# --- recommender --------------------------------------------------------------------------------


def test_recommender_turns_the_cycle_end_into_a_recommendation_from_the_ingested_state() -> None:
    rt = with_autopilot(runtime(now=NOW))
    (rec,) = asyncio.run(recommend_for(rt, spec("api")))
    assert rec.collection_cycle == "20261130T090000Z"  # which cycle: the collection's
    assert rec.workload_id == "shop/Deployment/api"
    (c,) = rec.containers
    assert c.usage["cpu"]["count"] == 8 * 60  # every sample ingested once
    # rightsized from 1 core towards ~0.2 used, at most halved in one step
    assert c.cpu_request is not None and 0.2 <= c.cpu_request <= 0.5
    assert rec.savings.monthly_savings > 0
    assert rt.tables.workloads.get("shop/Deployment/api") == spec("api")  # typed, not a dict
    usage_state = rt.tables.usage.get("shop/Deployment/api/app")
    assert usage_state is not None and usage_state.summary("cpu").count == 8 * 60


def test_an_unchanged_spec_is_not_written_back_every_cycle_but_a_changed_one_at_once() -> None:
    """One changelog record per workload and hourly cycle was ~15 % of a burst's CPU: the spec
    is written when it changes, and an unchanged one again only after SPEC_REFRESH_SECONDS."""
    from agents.recommender import SPEC_REFRESH_SECONDS

    rt = with_autopilot(runtime(now=NOW))
    table = rt.tables.workloads
    writes: list[str] = []
    store = table.store

    class Counting(dict[Any, Any]):
        def __setitem__(self, k: Any, v: Any) -> None:
            writes.append(str(k))
            super().__setitem__(k, v)

    table.store = Counting(store)

    async def marker(s: WorkloadSpec) -> None:
        raw = CycleEnd(cycle="c", spec=s).model_dump_json().encode()
        await aggregator.ingest(rt, key(s), raw)

    first = spec("api")
    asyncio.run(marker(first))
    asyncio.run(marker(first.model_copy(update={"observed_at": NOW + 3600})))
    assert len(writes) == 1 and table.get(first.workload_id) == first  # same spec: kept as is
    scaled = first.model_copy(update={"observed_at": NOW + 7200, "replicas": 5})
    asyncio.run(marker(scaled))
    assert len(writes) == 2 and table.get(first.workload_id) == scaled  # changed: at once
    later = scaled.model_copy(update={"observed_at": NOW + 7200 + SPEC_REFRESH_SECONDS})
    asyncio.run(marker(later))
    assert len(writes) == 3 and table.get(first.workload_id) == later  # refreshed
    # every marker recommends and is decided; the topic has the changes (the scaled one)
    assert len(sent(rt, "decisions")) == 4
    assert [r["replicas"] for r in sent(rt, "recommendations")] == [2, 5]


def test_an_unchanged_recommendation_is_decided_and_archived_but_published_once() -> None:
    """The recommendations topic carries a workload's recommendation when it changed (or every
    ``recommendation_refresh_seconds``); every cycle's is decided and archived in the history."""
    now = [NOW]
    rt = with_autopilot(runtime(Services(history=FakeHistory()), now=NOW))
    rt.clock = lambda: now[0]
    s = spec("api")

    async def cycle(name: str, at: float) -> None:
        now[0] = at
        marker = CycleEnd(cycle=name, spec=s.model_copy(update={"observed_at": at}))
        await aggregator.ingest(rt, key(s), marker.model_dump_json().encode())

    (first,) = asyncio.run(recommend_for(rt, s))
    asyncio.run(cycle("c2", NOW + 3600))  # the same usage: the same recommendation
    assert len(sent(rt, "recommendations")) == 1
    decisions = [Decision.model_validate(v) for v in sent(rt, "decisions")]
    assert [d.recommendation_id for d in decisions] == [first.id, first.id]
    assert [d.collection_cycle for d in decisions] == ["20261130T090000Z", "c2"]
    outbox = rt.topics.history.sent  # type: ignore[attr-defined]
    archived = [m for _, batch in outbox for m in json.loads(batch)["records"]]
    assert [m["kind"] for m in archived].count("recommendations") == 2  # both cycles archived
    asyncio.run(cycle("c3", NOW + rt.settings.recommendation_refresh_seconds))  # refreshed
    asyncio.run(cycle("c4", NOW + rt.settings.recommendation_refresh_seconds + 1))
    assert [r["collection_cycle"] for r in sent(rt, "recommendations")] == [
        "20261130T090000Z",
        "c3",
    ]
    rt.published.clear()  # a rebalance: every workload once more
    asyncio.run(cycle("c5", NOW + rt.settings.recommendation_refresh_seconds + 2))
    assert sent(rt, "recommendations")[-1]["collection_cycle"] == "c5"
    assert sent(rt, "recommendations")[-1]["id"] == first.id  # unchanged content, same id


def test_a_batch_redelivered_after_a_rebalance_is_not_counted_twice() -> None:
    rt = runtime(now=NOW)
    s = spec("api")
    first = usage(s)[0].model_dump_json().encode()
    for _ in range(3):
        asyncio.run(aggregator.ingest(rt, key(s), first))
    state = rt.tables.usage.get("shop/Deployment/api/app")
    assert state is not None and state.summary("cpu").count == 60


def test_a_record_on_the_wrong_key_is_dead_lettered_with_the_reason() -> None:
    rt = runtime(now=NOW)
    batch = usage(spec("api"))[0].model_dump_json().encode()
    asyncio.run(aggregator.ingest(rt, b"shop/Deployment/other", batch))
    (letter,) = dead_letters(rt)
    assert letter.reason.startswith("key-mismatch") and letter.agent == "aggregator"
    assert rt.tables.usage.get("shop/Deployment/api/app") is None


# --- gate ---------------------------------------------------------------------------------------


def test_the_cycle_end_is_decided_in_the_same_pass_sent_and_archived() -> None:
    """The marker's recommendation goes to the gate in the aggregator's pass (no topic hop):
    the recommendation and its decision are both published, and archived together."""
    history = FakeHistory()
    rt = with_autopilot(runtime(Services(history=history), now=NOW))
    (rec,) = asyncio.run(recommend_for(rt, spec("api")))
    [decision] = [Decision.model_validate(v) for v in sent(rt, "decisions")]
    assert (decision.action, decision.guardrail) == (Action.APPLY, "autopilot")
    assert decision.recommendation_id == rec.id
    assert decision.collection_cycle == rec.collection_cycle
    assert dead_letters(rt) == []
    # the history goes through the outbox; the history writer stores it
    outbox = rt.topics.history.sent  # type: ignore[attr-defined]
    [(_, batch)] = outbox  # the marker's pair in one outbox message
    assert [m["kind"] for m in json.loads(batch)["records"]] == ["recommendations", "decisions"]
    assert history.saved == []
    asyncio.run(history_agent.write_batch(rt, outbox))
    assert [kind for kind, _ in history.saved] == ["recommendations", "decisions"]
    assert [doc["id"] for _, doc in history.saved] == [rec.id, decision.id]
    # the record-level gate (a recommendation read as bytes) decides the same way
    again = asyncio.run(gate.handle(rt, key(spec("api")), rec.model_dump_json().encode()))
    assert again == decision


def test_a_gate_failure_dead_letters_the_recommendation_not_the_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gate runs under its own guard inside the aggregator's pass: what it fails on is
    dead-lettered as the gate would have (the recommendation, from the recommendations topic),
    the recommendation is still published and the next workload is decided."""
    rt = with_autopilot(runtime(now=NOW))
    real = gate.decide

    def flaky(rec: Recommendation, *args: Any, **kwargs: Any) -> Decision:
        if rec.name == "api":
            raise RuntimeError("boom")
        return real(rec, *args, **kwargs)

    monkeypatch.setattr(gate, "decide", flaky)
    recs = asyncio.run(recommend_for(rt, spec("api"), spec("web")))
    assert [r.name for r in recs] == ["api", "web"]
    assert [Decision.model_validate(v).workload_id for v in sent(rt, "decisions")] == [
        "shop/Deployment/web"
    ]
    [letter] = dead_letters(rt)
    assert (letter.agent, letter.reason) == ("gate", "RuntimeError: boom")
    assert letter.topic.endswith("recommendations") and letter.key == "shop/Deployment/api"
    assert Recommendation.model_validate_json(letter.value) == recs[0]


def test_gate_holds_inside_the_cooldown_of_the_last_applied_change() -> None:
    rt = with_autopilot(runtime(now=NOW))
    (rec,) = asyncio.run(recommend_for(rt, spec("api")))
    asyncio.run(
        ledger.record(
            rt,
            key(spec("api")),
            Execution(
                cycle="c0",
                workload_ids=["shop/Deployment/api"],
                decision_ids=["dec-earlier"],
                outcome="pushed",
                executed_at=NOW - 3600,
            )
            .model_dump_json()
            .encode(),
        )
    )
    last = rt.tables.last_action.get("shop/Deployment/api")
    assert last is not None and (last.decision_id, last.cycle) == ("dec-earlier", "c0")
    decision = asyncio.run(gate.handle(rt, key(spec("api")), rec.model_dump_json().encode()))
    assert decision is not None and (decision.action, decision.guardrail) == (
        Action.HOLD,
        "cooldown",
    )


def test_gate_parks_a_recommendation_for_an_unknown_workload_and_keeps_going() -> None:
    history = FakeHistory()
    history.fail(2, DependencyUnavailable("MongoDB down"))  # the gate never waits on MongoDB
    rt = with_autopilot(runtime(Services(history=history), now=NOW))
    (rec,) = asyncio.run(recommend_for(rt, spec("api")))
    ghost = rec.model_copy(update={"workload_id": "shop/Deployment/ghost", "name": "ghost"})
    assert asyncio.run(gate.handle(rt, b"x", ghost.model_dump_json().encode())) is None
    assert asyncio.run(gate.handle(rt, b"x", b"{not json")) is None
    reasons = [d.reason for d in dead_letters(rt)]
    assert reasons[0] == "unknown workload: no spec recorded"
    assert reasons[1].startswith("Recommendation")
    decision = asyncio.run(gate.handle(rt, key(spec("api")), rec.model_dump_json().encode()))
    assert decision is not None and history.saved == []  # decided although MongoDB was down


# --- executor and reporter: the held-workloads path into the report -------------------------------


async def decisions_for(rt: Runtime, *specs: WorkloadSpec) -> list[bytes]:
    await recommend_for(rt, *specs)  # the gate decides in the aggregator's pass
    return [v for _, v in rt.topics.decisions.sent if v is not None]  # type: ignore[attr-defined]


def test_a_workload_held_by_the_git_writer_reaches_the_report_with_its_reason() -> None:
    why = "a human changed bot-owned kubefinops/deployment-web.yaml concurrently"
    git, reports = FakeGit(held={"shop/Deployment/web": why}), FakeReports()
    rt = with_autopilot(runtime(Services(git=git, reports=reports), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api"), spec("web")))
    execution = asyncio.run(executor.handle_batch(rt, raws))
    assert execution is not None and execution.outcome == "pushed"
    assert execution.held == {"shop/Deployment/web": why}  # data, not text in the detail
    assert execution.workload_ids == ["shop/Deployment/api"]
    assert execution.id == f"exec-{execution.cycle}"  # built in one place
    # one execution record per applied workload (the ledger's input), one cycle record
    assert [v["workload_ids"] for v in sent(rt, "executions")] == [["shop/Deployment/api"]]
    ((cycle_key, cycle_raw),) = rt.topics.cycles.sent  # type: ignore[attr-defined]
    assert cycle_key == execution.cycle.encode()

    keys = asyncio.run(reporter.handle(rt, cycle_key, cycle_raw))
    assert keys is not None and len(keys) == 4
    report = reports.report()
    assert [c["workload"] for c in report["changed"]] == ["shop/Deployment/api"]
    (held,) = report["not_applied"]
    assert (held["workload"], held["action"], held["reason"]) == (
        "shop/Deployment/web",
        "held",
        why,
    )
    audit = json.loads(next(v for k, v in reports.objects.items() if k.endswith("audit.json")))
    assert audit["held"] == {"shop/Deployment/web": why}


def test_executor_without_a_git_remote_holds_each_workload_and_says_why() -> None:
    reports = FakeReports()
    rt = with_autopilot(runtime(Services(reports=reports), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api")))
    execution = asyncio.run(executor.handle_batch(rt, raws))
    assert execution is not None and execution.outcome == "held"
    assert execution.held == {"shop/Deployment/api": executor.NO_REMOTE}
    asyncio.run(reporter.handle(rt, None, rt.topics.cycles.sent[0][1]))  # type: ignore[attr-defined]
    assert reports.report()["not_applied"][0]["reason"] == executor.NO_REMOTE


def test_executor_retries_a_git_outage_then_applies_once() -> None:
    git = FakeGit()
    git.fail(2, DependencyUnavailable("git remote unreachable"))
    rt = with_autopilot(runtime(Services(git=git), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api")))
    before = CYCLE_FAILURES.labels("executor", "git")._value.get()
    execution = asyncio.run(executor.handle_batch(rt, raws))
    assert execution is not None and execution.outcome == "pushed"
    assert git.calls == 3 and len(git.cycles) == 1  # two failures, one apply
    assert CYCLE_FAILURES.labels("executor", "git")._value.get() == before + 2


def test_executor_records_a_refused_cycle_as_failed_and_a_replay_is_the_same_cycle() -> None:
    git = FakeGit()
    git.fail(1, PermanentError("rendered overlay is invalid"))
    rt = with_autopilot(runtime(Services(git=git), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api")))
    failed = asyncio.run(executor.handle_batch(rt, raws))
    assert failed is not None and failed.outcome == "failed"
    assert failed.detail == "rendered overlay is invalid"
    replay = asyncio.run(executor.handle_batch(rt, list(reversed(raws))))
    assert replay is not None and replay.cycle == failed.cycle  # same decisions, same cycle id


def test_executor_parks_a_bad_decision_and_applies_the_rest() -> None:
    git = FakeGit()
    rt = with_autopilot(runtime(Services(git=git), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api")))
    execution = asyncio.run(executor.handle_batch(rt, [b"{}", *raws]))
    assert execution is not None and execution.workload_ids == ["shop/Deployment/api"]
    assert [d.agent for d in dead_letters(rt)] == ["executor"]


def test_reporter_waits_out_an_s3_outage_and_parks_a_refused_report() -> None:
    reports = FakeReports()
    reports.fail(2, DependencyUnavailable("S3 down"))
    rt = with_autopilot(runtime(Services(git=FakeGit(), reports=reports), now=NOW))
    raws = asyncio.run(decisions_for(rt, spec("api")))
    asyncio.run(executor.handle_batch(rt, raws))
    ((k, raw),) = rt.topics.cycles.sent  # type: ignore[attr-defined]
    keys = asyncio.run(reporter.handle(rt, k, raw))
    assert keys is not None and reports.calls == 3 and reports.report()["totals"]["changed"] == 1

    reports.fail(1, PermanentError("AccessDenied"))
    assert asyncio.run(reporter.handle(rt, k, raw)) is None
    (letter,) = dead_letters(rt)
    assert letter.reason == "report rejected: AccessDenied" and letter.agent == "reporter"
    summary = CycleSummary.model_validate_json(letter.value)  # the record, kept to replay
    assert summary.cycle == json.loads(raw)["cycle"]


# --- collector ----------------------------------------------------------------------------------


def test_the_collector_asks_day_long_chunks_in_namespace_shards_within_the_point_budget() -> None:
    """A fleet whose whole answer would be over the point budget: a day per chunk, asked in
    namespace shards (each within the budget) whose records together are every workload's,
    each sent once, the watermark a day at a time; a small fleet is one query, as before."""
    specs = [spec(name, namespace=ns) for ns in ("a", "b", "c") for name in ("api", "web")]
    batches = [b for s in specs for b in usage(s, hours=50)]
    source = FakeUsage(batches, specs)
    rt = runtime(
        Services(usage=source), now=NOW, history_days=2, prometheus_max_points_per_query=3_000
    )
    source.series = {"a": 2, "b": 2, "c": 2}  # 6 x 1,440 points is over 3,000; 2 x 1,440 not
    asyncio.run(collector.run_cycle(rt, NOW))
    days = {(s, e) for s, e in source.chunks}
    assert all(e - s <= 86_400 for s, e in days) and any(e - s == 86_400 for s, e in days)
    assert source.shards[:3] == ['namespace=~"a"', 'namespace=~"b"', 'namespace!~"a|b"']
    assert len(source.shards) == 3 * len(days)
    records = [v for v in metrics_sent(rt) if v.get("type") == "chunk"]
    # bundled per partition: fewer Kafka records than workload records, each member at home
    assert len(sent(rt, "metrics")) < len(metrics_sent(rt))
    for k, value in rt.topics.metrics.sent:  # type: ignore[attr-defined]
        doc = json.loads(value)
        for m in doc["records"] if doc["type"] == "bundle" else [doc]:
            s = m.get("spec", m)
            wid = f"{s['namespace']}/{s['kind']}/{s.get('workload', s.get('name'))}"
            n = rt.settings.topic_partitions
            assert partition_of(wid.encode(), n) == partition_of(k, n)
    keys = [(r["namespace"], r["workload"], r["start"]) for r in records]
    assert len(keys) == len(set(keys))  # no record twice
    assert {(ns, w) for ns, w, _ in keys} == {(s.namespace, s.name) for s in specs}
    assert rt.tables.watermarks["usage"] == max(e for _, e in days)
    # the specs asked in the same shards: each workload's marker once, the manifest counts all
    assert source.spec_shards == source.shards[:3]
    markers = [v["spec"]["namespace"] + "/" + v["spec"]["name"] for v in metrics_sent(rt)
               if v.get("type") == "cycle-end"]  # fmt: skip
    assert sorted(markers) == sorted(f"{s.namespace}/{s.name}" for s in specs)
    (manifest,) = sent(rt, "apply_control")
    assert manifest["workloads"] == len(specs) == 6

    small = FakeUsage(batches, specs)
    rt = runtime(Services(usage=small), now=NOW, history_days=2)  # the default budget: 3 M
    asyncio.run(collector.run_cycle(rt, NOW))
    assert set(small.shards) == {""} and len(small.shards) == len(small.chunks)


def test_prometheus_lost_between_spec_shards_sends_no_manifest_and_loses_nothing() -> None:
    """Specs are asked shard by shard: Prometheus gone after the first shard's specs skips the
    cycle (logged), the first shard's markers are out (their decisions are applied without a
    manifest, after apply_batch_seconds), no manifest claims workloads that never came, and
    the next cycle sends every workload's marker again under a new cycle id."""
    specs = [spec(name, namespace=ns) for ns in ("a", "b", "c") for name in ("api", "web")]
    batches = [b for s in specs for b in usage(s, hours=50)]

    class SpecsFail(FakeUsage):
        fail_at: int | None = 1

        async def collect_specs(self, at: float, matchers: str = "") -> list[WorkloadSpec]:
            if self.fail_at is not None and len(self.spec_shards) == self.fail_at:
                self.fail_at = None
                raise DependencyUnavailable("Prometheus went away")
            return await super().collect_specs(at, matchers)

    source = SpecsFail(batches, specs)
    rt = runtime(
        Services(usage=source), now=NOW, history_days=2, prometheus_max_points_per_query=3_000
    )
    source.series = {"a": 2, "b": 2, "c": 2}
    assert asyncio.run(collector.on_tick(rt)) == 0  # skipped, not raised
    first = [v["spec"]["namespace"] for v in metrics_sent(rt) if v.get("type") == "cycle-end"]
    assert first == ["a", "a"] and not sent(rt, "apply_control")
    watermark = rt.tables.watermarks["usage"]

    asyncio.run(collector.run_cycle(rt, NOW + 3600))
    markers = [v for v in metrics_sent(rt) if v.get("type") == "cycle-end"]
    again = sorted(v["spec"]["namespace"] + "/" + v["spec"]["name"] for v in markers[2:])
    assert again == sorted(f"{s.namespace}/{s.name}" for s in specs)
    assert markers[2]["cycle"] != markers[0]["cycle"]
    (manifest,) = sent(rt, "apply_control")
    assert manifest["workloads"] == 6 and manifest["cycle"] == markers[2]["cycle"]
    assert rt.tables.watermarks["usage"] >= watermark


def test_an_answer_over_the_point_budget_is_asked_again_in_halves() -> None:
    """The count says 2 series, the answers hold 6 (workloads scaled up since, pods gone): the
    day-long answer is refused and its halves asked, then theirs, until each fits the budget;
    the samples sent are those of unsplit answers, each once, and the watermark moves a whole
    day at a time."""
    specs = [spec(name) for name in ("api", "web", "db", "cache", "queue", "auth")]
    batches = [b for s in specs for b in usage(s, hours=50)]

    def samples_sent(rt: Runtime) -> list[tuple[str, float, float]]:
        out = []
        for r in metrics_sent(rt):
            if r.get("type") != "chunk":
                continue
            for res in r["containers"].values():
                for row in res["cpu"]:
                    out += [
                        (r["workload"], r["t0"] + i * r["step"], v)
                        for i, v in enumerate(row)
                        if v is not None
                    ]
        return out

    whole = FakeUsage(batches, specs)
    control = runtime(Services(usage=whole), now=NOW, history_days=2)  # 3 M: nothing refused
    asyncio.run(collector.run_cycle(control, NOW))
    assert not whole.refused

    source = FakeUsage(batches, specs)
    rt = runtime(
        Services(usage=source), now=NOW, history_days=2, prometheus_max_points_per_query=3_000
    )
    source.series = {"shop": 2}  # 2 x 1,440 fits 3,000: a day per chunk, one query
    asyncio.run(collector.run_cycle(rt, NOW))
    spans = {e - s for s, e, _ in source.refused}
    assert {86_400, 43_200} <= spans  # 6 x 720 is still over 3,000: split again
    refused = {(s, e) for s, e, _ in source.refused}
    assert all(e - s < 43_200 for s, e in source.chunks if (s, e) not in refused)
    got = samples_sent(rt)
    assert len(got) == len(set(got))  # no sample twice
    assert sorted(got) == sorted(samples_sent(control))  # and none missing
    assert rt.tables.watermarks["usage"] == control.tables.watermarks["usage"]

    # a budget not even 15 minutes of the shard fit: the cycle is skipped, nothing sent for it
    tiny = FakeUsage(batches, specs)
    rt = runtime(Services(usage=tiny), now=NOW, history_days=2, prometheus_max_points_per_query=50)
    assert asyncio.run(collector.on_tick(rt)) == 0  # logged, not raised
    assert min(e - s for s, e, _ in tiny.refused) < 1_800
    # the watermark stops before the first chunk with samples (chunks before it were empty)
    first = min(b.end for b in batches if b.end > tiny.chunks[0][0])
    assert (rt.tables.watermarks.get("usage") or 0) < first
    assert not samples_sent(rt)


def test_collector_moves_the_watermark_only_past_published_chunks() -> None:
    s = spec("api")
    source = FakeUsage(usage(s, hours=30), [s])
    rt = runtime(Services(usage=source), now=NOW, history_days=1, prometheus_chunk_seconds=6 * 3600)
    source.fail_after(2, DependencyUnavailable("Prometheus went away"))
    assert asyncio.run(collector.on_tick(rt)) == 0  # the cycle is skipped, logged, not raised
    assert len(source.chunks) == 2
    assert rt.tables.watermarks["usage"] == source.chunks[-1][1]  # the last published chunk
    published = len(metrics_sent(rt))
    first, last = source.chunks[0][0], source.chunks[-1][1]
    assert published == sum(1 for b in source.batches if first < b.end <= last) > 0

    sent_before = published
    asyncio.run(collector.run_cycle(rt, NOW))  # resumes after the watermark: nothing twice
    assert source.chunks[2][0] == source.chunks[1][1]
    markers = [v for v in metrics_sent(rt) if v.get("type") == "cycle-end"]
    assert [m["spec"]["name"] for m in markers] == ["api"]
    batches_now = [v for v in metrics_sent(rt) if v.get("type") != "cycle-end"]
    ends = [b["end"] for b in batches_now]
    assert len(ends) == len(set(ends)) >= sent_before  # no chunk sent twice
    assert [v["name"] for v in sent(rt, "workloads")] == ["api"]
    # the manifest: how many decisions make this collection cycle (one commit for all of them)
    (manifest,) = sent(rt, "apply_control")
    assert manifest["type"] == "cycle-manifest" and manifest["workloads"] == 1
    assert manifest["cycle"] == markers[0]["cycle"]


# --- policies -----------------------------------------------------------------------------------


def test_policy_sync_and_reconcile_keep_the_table_equal_to_the_store() -> None:
    store = FakePolicies(AUTOPILOT)
    rt = runtime(Services(policies=store), now=NOW)
    rt.tables.policies["stale"] = validate_policy({"id": "stale"})
    store.fail(1, DependencyUnavailable("MongoDB down"))
    assert asyncio.run(policies.reconcile_until_done(rt)) == 2  # retried, then published both
    for k, v in rt.topics.policies.sent:  # type: ignore[attr-defined]
        asyncio.run(policies.sync(rt, k, v))
    assert [p.id for p in policies.current_policies(rt)] == ["shop-autopilot"]
    asyncio.run(policies.sync(rt, b"bad", b'{"id": "bad", "mode": "yolo"}'))
    assert dead_letters(rt)[0].reason.startswith("invalid policy")
    assert rt.tables.policies.get("bad") is None


# --- the one backoff ----------------------------------------------------------------------------


def test_retry_forever_retries_only_retryable_errors_of_a_coroutine() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError("not yet")
        return "done"

    seen: list[float] = []
    got = asyncio.run(
        retry_forever(flaky, what="t", first=0.001, on_retry=lambda e, d: seen.append(d))
    )
    assert (got, len(calls), len(seen)) == ("done", 3, 2)
    assert seen[1] >= seen[0]  # exponential

    async def refused() -> Any:
        raise PermanentError("no")

    with pytest.raises(PermanentError):
        asyncio.run(retry_forever(lambda: refused(), what="t", first=0.001))


def test_ledger_archives_executions_through_the_outbox_even_while_mongodb_is_down() -> None:
    history = FakeHistory()
    history.fail(1, DependencyUnavailable("mongodb down"))
    rt = runtime(Services(history=history), now=NOW)
    execution = Execution(
        cycle="c1",
        workload_ids=["shop/Deployment/api"],
        decision_ids=["dec-1"],
        outcome="pushed",
        executed_at=NOW,
    )
    done = asyncio.run(
        ledger.record(rt, b"shop/Deployment/api", execution.model_dump_json().encode())
    )
    assert done == execution
    assert history.calls == 0  # the ledger never waits on MongoDB
    outbox = rt.topics.history.sent  # type: ignore[attr-defined]
    assert [json.loads(v)["kind"] for _, v in outbox] == ["executions"]
    assert history.saved == []
    asyncio.run(history_agent.write_batch(rt, outbox))  # fails once, retried, then stored
    assert [(kind, rec["workload_ids"]) for kind, rec in history.saved] == [
        ("executions", ["shop/Deployment/api"])
    ]
