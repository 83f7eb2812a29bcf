"""The stats API's answers: MongoDB history and Kafka's committed offsets, shaped by
:mod:`engine.core.stats`.

Fleet answers use only global sources — MongoDB (every recommendation, decision and execution
the gate and executor recorded) and Kafka (the consumer group's committed offsets, the dead-letter
topic) — so one worker of many answers exactly what any other would: the "global view" of
docs/api.md.  Per-workload usage (spec, percentiles per day) is the one thing held in a
partitioned table; the web layer routes that to the owning worker.

Kafka figures are cached for a few seconds: a dashboard refreshing every few seconds must not
open an admin connection and re-read the dead-letter topic on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from engine.core import stats as shape
from engine.core.records import reason_class
from engine.errors import KubeFinOpsError
from engine.settings import Settings

Doc = dict[str, Any]
MAX_PAGE = 500
KAFKA_CACHE_SECONDS = 5.0


def workload_match(namespace: str | None = None, workload: str | None = None) -> Doc:
    """A MongoDB filter on the records' ``namespace`` and ``name`` (``workload``)."""
    match: Doc = {}
    if namespace:
        match["namespace"] = namespace
    if workload:
        match["name"] = workload
    return match


class HistoryQueries(Protocol):
    """The read side of the history (MongoDB: ``engine.adapters.mongo.HistoryReader``; the
    demo's in-memory store)."""

    async def latest(self, kind: str, match: Doc | None = None) -> list[Doc]: ...

    async def page(
        self,
        kind: str,
        match: Doc,
        *,
        limit: int,
        before: float | None = None,
        before_id: str | None = None,
    ) -> list[Doc]:
        """Newest first (by time, then id), at most ``limit``, after the cursor: older than
        ``before``, or as old with an id below ``before_id`` when that is given."""
        ...

    async def group_count(self, kind: str, field: str) -> list[Doc]: ...

    async def find(self, kind: str, match: Doc, *, projection: Doc | None = None) -> list[Doc]: ...

    async def cycles(self, limit: int) -> list[Doc]: ...


class StatsService:
    def __init__(
        self,
        settings: Settings,
        history: HistoryQueries,
        *,
        clock: Callable[[], float] = time.time,
        lag: bool = True,
    ) -> None:
        """``lag=False``: no consumer-group lag (the demo's embedded broker cannot answer
        OffsetFetch for another group)."""
        self.settings = settings
        self.lag = lag
        self.history = history
        self.clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = asyncio.Lock()

    async def _cached(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        async with self._lock:
            hit = self._cache.get(key)
            if hit is not None and self.clock() - hit[0] < KAFKA_CACHE_SECONDS:
                return hit[1]
            value = await make()
            self._cache[key] = (self.clock(), value)
            return value

    async def pipeline(self) -> Doc:
        """Lag per agent (the consumer group's committed offsets) and dead letters by reason."""

        async def make() -> Doc:
            from engine.topics import describe_topics, read_dead_letters

            try:
                infos = await describe_topics(self.settings) if self.lag else []
                letters, broken = await read_dead_letters(self.settings)
            except KubeFinOpsError as exc:
                return {"error": str(exc), "lag": {}, "dead_letters": {}}
            lag: dict[str, Doc] = {}
            for info in infos:  # an agent may consume several topics: their lags add up
                if info.consumer:
                    row = lag.setdefault(info.consumer, {"topics": [], "lag": None})
                    row["topics"].append(info.name)
                    if info.lag is not None:
                        row["lag"] = (row["lag"] or 0) + info.lag
            reasons: dict[str, int] = {}
            for item in letters:
                cls = reason_class(item.letter.reason)
                reasons[cls] = reasons.get(cls, 0) + 1
            if broken:
                reasons["not a dead letter"] = len(broken)
            return {
                "lag": dict(sorted(lag.items())),
                "dead_letters": {
                    "total": len(letters) + len(broken),
                    "by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                },
            }

        result: Doc = await self._cached("pipeline", make)
        return result

    async def stats(self, *, cycles: int = 10) -> Doc:
        results: list[Any] = list(
            await asyncio.gather(
                self.history.latest("recommendations"),
                self.history.latest("decisions"),
                self.history.find(
                    "decisions", {"action": "apply"}, projection={"id": 1, "savings": 1}
                ),
                self.history.find(
                    "executions", {}, projection={"decision_ids": 1, "outcome": 1, "id": 1}
                ),
                self.history.group_count("decisions", "action"),
                self.history.group_count("decisions", "guardrail"),
                self.pipeline(),
                self.history.group_count("verifications", "phase"),
                self.history.group_count("verifications", "cause"),
            )
        )
        recs, decisions, applied, executions, by_action, by_guardrail, pipeline = results[:7]
        by_phase, by_cause = results[7:]
        recent = await self.history.cycles(cycles)
        started = await self._cycle_starts(recent)
        doc = shape.fleet(recs, {d["workload_id"]: d for d in decisions}, applied, executions)
        doc.update(
            {
                "generated_at": self.clock(),
                "decisions": {
                    "total": sum(int(r["n"]) for r in by_action),
                    "by_action": shape.counts(by_action),
                    "by_guardrail": shape.counts(by_guardrail),
                },
                "cycles": [
                    {
                        **c,
                        "commit_url": shape.commit_url(
                            self.settings.git_remote_url, c["commit_sha"]
                        ),
                    }
                    for c in shape.cycles(recent, started)
                ],
                "verifications": shape.verification_counts(by_phase, by_cause),
                "top_opportunities": shape.top_opportunities(recs),
                "risks": shape.risks(recs, self.clock()),
                "pipeline": pipeline,
            }
        )
        return doc

    async def _cycle_starts(self, cycles: list[Doc]) -> dict[str, float]:
        """Per apply cycle, when the collection behind its decisions started (the decisions'
        ``collection_cycle`` id is that start time)."""
        cycle_of = {d: str(c["cycle"]) for c in cycles for d in c.get("decision_ids", [])}
        if not cycle_of:
            return {}
        rows = await self.history.find(
            "decisions",
            {"id": {"$in": sorted(cycle_of)}},
            projection={"id": 1, "collection_cycle": 1},
        )
        out: dict[str, float] = {}
        for row in rows:
            started = shape.collection_start(str(row.get("collection_cycle") or ""))
            cycle = cycle_of.get(str(row.get("id")))
            if started is not None and cycle is not None:
                out[cycle] = min(started, out.get(cycle, started))
        return out

    async def recommendations(
        self, namespace: str | None = None, workload: str | None = None
    ) -> Doc:
        recs = await self.history.latest("recommendations", workload_match(namespace, workload))
        return {"count": len(recs), "items": recs}

    async def decisions(
        self,
        namespace: str | None = None,
        workload: str | None = None,
        *,
        action: str | None = None,
        limit: int = 50,
        before: float | None = None,
        before_id: str | None = None,
    ) -> Doc:
        """A page of decisions, newest first.  The cursor is the last item's time *and* id
        (``next_before``, ``next_before_id``): decisions decided at the same instant are neither
        skipped nor repeated across pages (with the time alone, a page ending inside such a group
        lost the rest of it)."""
        match = workload_match(namespace, workload)
        if action:
            match["action"] = action
        limit = max(1, min(limit, MAX_PAGE))
        items = await self.history.page(
            "decisions", match, limit=limit, before=before, before_id=before_id
        )
        more = len(items) == limit and bool(items)
        return {
            "count": len(items),
            "items": items,
            "next_before": float(items[-1]["at"]) if more else None,
            "next_before_id": str(items[-1].get("id", "")) if more else None,
        }

    async def workload_history(self, workload_id: str, *, limit: int = 20) -> Doc:
        """Latest recommendation, recent decisions and the executions that carried them."""
        match = {"workload_id": workload_id}
        recs, decisions, executions = await asyncio.gather(
            self.history.page("recommendations", match, limit=1),
            self.history.page("decisions", match, limit=limit),
            self.history.find("executions", {"workload_ids": workload_id}),
        )
        by_decision = {d: e for e in executions for d in e.get("decision_ids", [])}
        timeline = []
        for d in decisions:
            e = by_decision.get(d["id"])
            sha = e.get("commit_sha") if e else None
            timeline.append(
                {
                    "id": d["id"],
                    "decided_at": d.get("decided_at"),
                    "action": d.get("action"),
                    "guardrail": d.get("guardrail"),
                    "reason": d.get("reason"),
                    "mode": d.get("mode"),
                    "monthly_delta": (d.get("savings") or {}).get("monthly_delta"),
                    "cycle": d.get("cycle"),
                    "execution": e.get("outcome") if e else None,
                    "commit_sha": sha,
                    "commit_url": shape.commit_url(self.settings.git_remote_url, sha),
                }
            )
        applied = [t for t in timeline if t["action"] == "apply"]
        return {
            "recommendation": recs[0] if recs else None,
            "decisions": timeline,
            "last_action": applied[0] if applied else None,
        }
