"""In-memory fakes of the agents' seams (:mod:`engine.services`, the output topics), for unit
tests that drive an agent's handler without a broker.  Each fake records what it was given and can
be told to fail the way the real dependency does (retryable, then permanent)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.runtime import Runtime, Sinks
from engine.core.collect import chunks_from_batches
from engine.core.cost import Prices
from engine.core.model import (
    ContainerSpec,
    CycleSummary,
    DeadLetter,
    Decision,
    Execution,
    MetricsBatch,
    MetricsChunk,
    Recommendation,
    ResourcePair,
    UsageSummary,
    WorkloadSpec,
)
from engine.core.policy import DEFAULT_POLICY, Policy, validate_policy
from engine.core.quantity import parse_quantity
from engine.core.recommend import recommend
from engine.core.report import CycleReport, documents
from engine.core.rollout import PodState, Rollout, Signals
from engine.core.verification import Verification
from engine.errors import AnswerTooLarge
from engine.services import Services
from engine.settings import Settings, load_settings
from tables.state import Tables
from tests.unit.classic_params import CLASSIC_GUARDRAILS, classic


@dataclass
class RecordingTopic:
    """A topic that keeps every (key, value) sent; ``send`` returns an acknowledged future."""

    sent: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    async def send(self, *, key: bytes | None = None, value: bytes | None = None) -> Any:
        self.sent.append((key, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    def values(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.sent if v is not None]


def recording_sinks() -> Sinks:
    return Sinks(**{name: RecordingTopic() for name in Sinks.__dataclass_fields__})


class Failing:
    """``fail(times, exc)``: the next ``times`` calls raise ``exc`` (a retryable outage)."""

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.calls = 0

    def fail(self, times: int, exc: Exception) -> None:
        self.failures.extend([exc] * times)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


class FakeGit(Failing):
    """Applies every decision except the workloads told to be held (e.g. a human edited them)."""

    def __init__(self, held: dict[str, str] | None = None) -> None:
        super().__init__()
        self.held = dict(held or {})
        self.cycles: list[tuple[str, list[Decision]]] = []

    async def apply_cycle(self, cycle_id: str, decisions: Sequence[Decision]) -> Execution:
        self._maybe_fail()
        self.cycles.append((cycle_id, list(decisions)))
        applied = [d for d in decisions if d.workload_id not in self.held]
        return Execution(
            cycle=cycle_id,
            workload_ids=[d.workload_id for d in applied],
            decision_ids=[d.id for d in applied],
            outcome="pushed" if applied else "held",
            commit_sha="ab" * 20 if applied else None,
            branch="main",
            held={
                d.workload_id: self.held[d.workload_id]
                for d in decisions
                if d.workload_id in self.held
            },
            executed_at=1_800_000_000.0,
        )


@dataclass
class RevertResult:
    outcome: str = "pushed"
    sha: str | None = "f" * 40
    detail: str = ""


class FakeReverts(FakeGit):
    """A Git writer whose reverts are recorded (the verifier's seam)."""

    def __init__(self) -> None:
        super().__init__()
        self.reverts: list[str] = []

    async def revert(self, v: Verification) -> RevertResult:
        self._maybe_fail()
        self.reverts.append(v.id)
        return RevertResult()


class FakeTelemetry(Failing):
    """Cluster telemetry of one pod that runs the old or the new values, OOMKilled on demand;
    ``fail``: Prometheus unreachable for the next checks (``calls`` counts them)."""

    def __init__(self, *, live: bool = False, oom: bool = False) -> None:
        super().__init__()
        self.live = live
        self.oom = oom

    async def rollout(self, v: Verification, at: float) -> Rollout:
        self._maybe_fail()
        values = {
            (e.container, e.section, e.resource): parse_quantity(
                (e.new if self.live else e.old) or "0"
            )
            for e in v.expected
        }
        oom: dict[str, float | None] = {"app": v.applied_at + 5} if self.oom else {}
        pod = PodState("patient-api-abc-1", ready=True, values=values, oom_at=oom)
        return Rollout((pod,), desired=1, updated=1, ready=1)

    async def signals(self, v: Verification, at: float) -> Signals:
        return Signals()

    async def baseline(self, v: Verification) -> dict[str, float]:
        return {}


class FakeReports(Failing):
    """Renders each cycle's report like the S3 writer and keeps the objects by key."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}

    async def write_cycle(
        self,
        summary: CycleSummary,
        generated_at: float,
        verifications: Sequence[Verification] = (),
    ) -> list[str]:
        self._maybe_fail()
        docs = documents(CycleReport.from_summary(summary, generated_at, verifications))
        self.objects.update({d.key: d.body for d in docs})
        return [d.key for d in docs]

    def report(self) -> dict[str, Any]:
        (key,) = [k for k in self.objects if k.endswith("report.json")]
        loaded: dict[str, Any] = json.loads(self.objects[key])
        return loaded


class FakeHistory(Failing):
    """MongoDB's history: what the history writer stored, by kind (``decisions``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[tuple[str, Any]] = []

    async def save(self, kind: str, record: Any) -> None:
        self._maybe_fail()
        self.saved.append((kind, record))

    async def save_many(self, kind: str, records: list[Any]) -> int:
        self._maybe_fail()
        self.saved.extend((kind, r) for r in records)
        return len(records)

    async def save_verification(self, record: BaseModel) -> None:
        self._maybe_fail()
        self.saved.append(("verification", record))

    async def verifications_between(self, start: float, end: float) -> list[dict[str, Any]]:
        self._maybe_fail()
        docs = [
            r.model_dump(mode="json") if isinstance(r, BaseModel) else dict(r)
            for kind, r in self.saved
            if kind in ("verification", "verifications")  # direct, or through the outbox
        ]
        return [d for d in docs if start < float(d.get("updated_at", 0.0)) <= end]


class FakePolicies(Failing):
    """The policy system of record: validated documents by id, versioned like MongoDB's."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        super().__init__()
        self.docs: dict[str, dict[str, Any]] = {}
        for doc in docs:
            self.docs[doc["id"]] = {**validate_policy(doc).model_dump(mode="json"), "version": 1}

    async def get(self, policy_id: str) -> dict[str, Any] | None:
        self._maybe_fail()
        return self.docs.get(policy_id)

    async def list(self) -> list[dict[str, Any]]:
        self._maybe_fail()
        return list(self.docs.values())

    async def put(self, doc: dict[str, Any], by: str) -> dict[str, Any]:
        self._maybe_fail()
        version = int(self.docs.get(doc["id"], {}).get("version", 0)) + 1
        stored = {**validate_policy(doc).model_dump(mode="json"), "version": version}
        self.docs[doc["id"]] = stored
        return stored

    async def delete(self, policy_id: str, by: str) -> bool:
        self._maybe_fail()
        return self.docs.pop(policy_id, None) is not None


def _in_shard(namespace: str, matchers: str) -> bool:
    """Whether a ``namespace=~"a|b"`` / ``namespace!~"a|b"`` shard (or ``""``) selects it."""
    if not matchers:
        return True
    found = re.fullmatch(r'namespace(=~|!~)"([^"]*)"', matchers)
    assert found, matchers
    return (namespace in set(found.group(2).split("|"))) == (found.group(1) == "=~")


class FakeUsage(Failing):
    """Prometheus as the collector sees it: the batches of a chunk, the specs; ``fail_after(n,
    exc)`` lets ``n`` chunks through and then raises ``exc`` once (Prometheus went away)."""

    def __init__(self, batches: list[MetricsBatch], specs: list[WorkloadSpec]) -> None:
        super().__init__()
        self.batches, self.specs = batches, specs
        self.chunks: list[tuple[float, float]] = []
        self._fail_at: tuple[int, Exception] | None = None
        # what series_by_namespace says (None: the batches' containers per namespace)
        self.series: dict[str, int] | None = None
        self.shards: list[str] = []  # the matchers collect_records was asked with
        self.refused: list[tuple[float, float, str]] = []  # asks over max_points
        self.spec_shards: list[str] = []  # the matchers collect_specs was asked with

    def fail_after(self, chunks: int, exc: Exception) -> None:
        self._fail_at = (len(self.chunks) + chunks, exc)

    async def collect_chunk(self, start: float, end: float) -> list[MetricsBatch]:
        if self._fail_at is not None and len(self.chunks) == self._fail_at[0]:
            exc, self._fail_at = self._fail_at[1], None
            raise exc
        self._maybe_fail()
        self.chunks.append((start, end))
        return [b for b in self.batches if start < b.end <= end]

    async def collect_records(
        self, start: float, end: float, matchers: str = "", max_points: int | None = None
    ) -> list[MetricsChunk]:
        """The records of the chunk's batches, only the namespaces ``matchers`` selects (the
        ``namespace=~"a|b"`` / ``namespace!~"a|b"`` shards the collector asks for).  Over
        ``max_points`` samples of one resource (one range query's answer): AnswerTooLarge, as
        the adapter raises for an answer over its byte cap (``self.refused`` lists them)."""
        self.shards.append(matchers)
        batches = await self.collect_chunk(start, end)
        batches = [b for b in batches if _in_shard(b.namespace, matchers)]
        if max_points is not None:
            points: dict[str, int] = {}
            for b in batches:
                for resource, samples in b.samples.items():
                    points[resource] = points.get(resource, 0) + len(samples)
            if max(points.values(), default=0) > max_points:
                self.refused.append((start, end, matchers))
                raise AnswerTooLarge(f"{max(points.values())} points over {max_points}")
        return chunks_from_batches(batches)

    async def collect_specs(self, at: float, matchers: str = "") -> list[WorkloadSpec]:
        self.spec_shards.append(matchers)
        return [s for s in self.specs if _in_shard(s.namespace, matchers)]

    async def series_by_namespace(self, at: float) -> dict[str, int]:
        if self.series is not None:
            return dict(self.series)
        found: dict[str, set[str]] = {}
        for b in self.batches:
            found.setdefault(b.namespace, set()).add(b.container_id)
        return {ns: len(ids) for ns, ids in found.items()}


def settings(tmp: Path | None = None, **overrides: Any) -> Settings:
    return load_settings(
        kafka_security_protocol="PLAINTEXT",
        data_dir=tmp or Path("/nonexistent-kubefinops-test"),
        **overrides,
    )


def runtime(services: Services | None = None, *, now: float, **overrides: Any) -> Runtime:
    """A handler runtime over dict tables and recording topics; the clock stands at ``now``."""
    return Runtime(
        settings=settings(**overrides),
        topics=recording_sinks(),
        tables=Tables.in_memory(),
        services=services or Services(),
        clock=lambda: now,
        retry_first_seconds=0.001,
    )


def sent(rt: Runtime, topic: str) -> list[dict[str, Any]]:
    sink = getattr(rt.topics, topic)
    assert isinstance(sink, RecordingTopic)
    return sink.values()


def metrics_sent(rt: Runtime) -> list[dict[str, Any]]:
    """The records sent to ``kubefinops.metrics``, bundles opened into their members, in order
    (the collector bundles them per partition: engine/core/bundles.py)."""
    out: list[dict[str, Any]] = []
    for value in sent(rt, "metrics"):
        out += value["records"] if value.get("type") == "bundle" else [value]
    return out


def dead_letters(rt: Runtime) -> list[DeadLetter]:
    return [DeadLetter.model_validate(v) for v in sent(rt, "deadletter")]


# --- recommendations as the recommender builds them (test_recommend, test_render) ---------------
REC_NOW = 1_800_000_000.0
DAY = 86400.0
MIB = 1024.0 * 1024.0
# the classic chain's arithmetic (P95 + 15%, peak + 15%, x2 max step), whatever the defaults are
CLASSIC_POLICY = DEFAULT_POLICY.model_copy(
    update={
        "estimator": classic(),
        "guardrails": DEFAULT_POLICY.guardrails.model_copy(update=CLASSIC_GUARDRAILS),
    }
)


def flat_summary(
    value: float, count: int = 2000, span: float = 8 * DAY, now: float = REC_NOW
) -> UsageSummary:
    """Usage that sat at ``value`` for ``span`` up to ``now``."""
    return UsageSummary(
        p50=value,
        p90=value,
        p95=value,
        p99=value,
        max=value,
        mean=value,
        count=count,
        first_ts=now - span,
        last_ts=now,
    )


def workload_spec(
    containers: Mapping[str, tuple[float | None, float | None]],
    *,
    namespace: str = "smarthealth",
    name: str = "patient-api",
    replicas: int = 3,
) -> WorkloadSpec:
    """A Deployment; ``containers``: name -> (cpu request, memory request = memory limit)."""
    return WorkloadSpec(
        namespace=namespace,
        kind="Deployment",
        name=name,
        replicas=replicas,
        containers=[
            ContainerSpec(
                name=n, requests=ResourcePair(cpu=c, memory=m), limits=ResourcePair(memory=m)
            )
            for n, (c, m) in containers.items()
        ],
    )


def flat_usage(usage: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, UsageSummary]]:
    """``usage``: container -> (cpu, memory), each flat over the window."""
    return {n: {"cpu": flat_summary(c), "memory": flat_summary(m)} for n, (c, m) in usage.items()}


def recommendation(
    containers: Mapping[str, tuple[float | None, float | None]],
    usage: Mapping[str, tuple[float, float]],
    *,
    namespace: str = "smarthealth",
    name: str = "patient-api",
    replicas: int = 3,
    policy: Policy = CLASSIC_POLICY,
    prices: Prices | None = None,
) -> Recommendation:
    """:func:`recommend` over :func:`workload_spec` and :func:`flat_usage` at :data:`REC_NOW`."""
    spec = workload_spec(containers, namespace=namespace, name=name, replicas=replicas)
    return recommend(spec, flat_usage(usage), policy, now=REC_NOW, prices=prices)
