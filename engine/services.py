"""The seams between the agents and the outside world: one Protocol per service an agent uses.

The real adapters (:mod:`engine.adapters`) implement them structurally; unit tests pass in-memory
fakes (``tests/fakes.py``).  :class:`Services` is what the bootstrap (:mod:`engine.worker`) builds
from settings and what every agent handler receives; a service that is not configured is
``None`` and the handler says what it skipped.  Every client opened for a service is closed by
:meth:`Services.aclose` when the worker stops.

===============  ===========================================  =====================================
Protocol         used by                                      real adapter
===============  ===========================================  =====================================
UsageSource      collector (a cycle: usage chunks, specs)     ``prometheus.Collector``
PolicySource     policy reconcile, the policy API             ``mongo.PolicyStore``
HistoryStore     gate, ledger, verifier, reporter (history)   ``mongo.RecordStore``
GitWriter        executor (one commit per apply cycle),       ``gitops.GitOpsWriter``
                 verifier (one revert per regressed change)
ReportSink       reporter (one report per apply cycle)        ``reports.ReportWriter``
Telemetry        verifier (rollout and regression signals)    ``verification.ClusterTelemetry``
StatsReader      the stats API and web UI (agents/stats_web)  ``engine.stats.StatsService``
===============  ===========================================  =====================================
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from engine.core.model import (
    CycleSummary,
    Decision,
    Execution,
    MetricsBatch,
    MetricsChunk,
    WorkloadSpec,
)
from engine.core.rollout import Rollout, Signals
from engine.core.verification import Verification

log = logging.getLogger("kubefinops.services")

PolicyDoc = dict[str, Any]  # a stored policy document: the Policy fields + version metadata


class UsageSource(Protocol):
    async def collect_chunk(self, start: float, end: float) -> list[MetricsBatch]:
        """One batch per container for the time range ``(start, end]`` (in-process users)."""

    async def collect_records(
        self, start: float, end: float, matchers: str = "", max_points: int | None = None
    ) -> list[MetricsChunk]:
        """One columnar record per workload for ``(start, end]``: what the collector sends
        (``matchers``: only the namespaces of one shard, ``engine.core.collect.QueryPlan``;
        ``max_points``: raise ``AnswerTooLarge`` for an answer well over that many points)."""

    async def collect_specs(self, at: float, matchers: str = "") -> list[WorkloadSpec]:
        """Every workload's current spec (``matchers``: only the namespaces of one shard)."""

    async def series_by_namespace(self, at: float) -> dict[str, int]:
        """Series the range queries answer, per namespace: sizes the chunks and the shards."""


class PolicySource(Protocol):
    """The system of record for policies (raises ``InvalidPolicy`` / ``DependencyUnavailable``)."""

    async def get(self, policy_id: str) -> PolicyDoc | None: ...

    async def list(self) -> list[PolicyDoc]: ...

    async def put(self, doc: PolicyDoc, by: str) -> PolicyDoc: ...

    async def delete(self, policy_id: str, by: str) -> bool: ...


class HistoryStore(Protocol):
    async def save(self, kind: str, record: BaseModel | dict[str, Any]) -> None:
        """Upsert one record by its id; ``DependencyUnavailable`` while MongoDB is away."""

    async def save_many(self, kind: str, records: list[BaseModel | dict[str, Any]]) -> int:
        """:meth:`save` for many records in one round trip."""

    async def save_execution(self, record: BaseModel) -> None: ...

    async def save_verification(self, record: BaseModel) -> None: ...

    async def verifications_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """Verification outcomes recorded in ``(start, end]``, oldest first."""


class RevertOutcome(Protocol):
    outcome: str  # pushed | committed | noop | failed
    sha: str | None
    detail: str


class GitWriter(Protocol):
    async def apply_cycle(self, cycle_id: str, decisions: Sequence[Decision]) -> Execution:
        """Commit (and push) one apply cycle; raises ``RetryableError`` / ``PermanentError``."""

    async def revert(self, v: Verification) -> RevertOutcome:
        """One revert commit of a regressed change (never twice); raises like ``apply_cycle``."""


class Telemetry(Protocol):
    """What the cluster's telemetry says about a pushed change (docs/verification.md)."""

    async def rollout(self, v: Verification, at: float) -> Rollout: ...

    async def signals(self, v: Verification, at: float) -> Signals: ...

    async def baseline(self, v: Verification) -> dict[str, float]: ...


class ReportSink(Protocol):
    async def write_cycle(
        self,
        summary: CycleSummary,
        generated_at: float,
        verifications: Sequence[Verification] = (),
    ) -> list[str]:
        """Write the cycle's report; returns where it is.  Raises ``RetryableError`` while the
        store is down and ``PermanentError`` when it refuses the report."""


class StatsReader(Protocol):
    """The fleet's global record for the stats API (MongoDB + Kafka; docs/api.md)."""

    async def stats(self) -> dict[str, Any]: ...

    async def recommendations(
        self, namespace: str | None = None, workload: str | None = None
    ) -> dict[str, Any]: ...

    async def decisions(
        self,
        namespace: str | None = None,
        workload: str | None = None,
        *,
        action: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> dict[str, Any]: ...

    async def workload_history(self, workload_id: str) -> dict[str, Any]: ...


Closer = Callable[[], Awaitable[Any]]


@dataclass
class Services:
    """What the agents talk to besides Kafka.  ``None`` = not configured."""

    usage: UsageSource | None = None
    policies: PolicySource | None = None
    history: HistoryStore | None = None
    git: GitWriter | None = None
    reports: ReportSink | None = None
    telemetry: Telemetry | None = None
    stats: StatsReader | None = None
    closers: list[Closer] = field(default_factory=list)

    def on_close(self, closer: Closer) -> None:
        """Register a client to close when the worker stops (last opened, first closed)."""
        self.closers.append(closer)

    async def aclose(self) -> None:
        while self.closers:
            closer = self.closers.pop()
            try:
                await closer()
            except Exception as exc:  # closing must go on for the other clients
                log.warning("closing a client failed: %s", exc)

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.aclose()
