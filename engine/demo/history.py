"""The demo's history: recommendations, decisions, executions and verifications in memory.

The demo runs without MongoDB; this store takes the writes the gate, the ledger and the
verifier make and answers the stats API's queries (:class:`engine.stats.HistoryQueries`) the way
:class:`engine.adapters.mongo.HistoryReader` does, so the demo's web UI shows the real cycle.
Only the query shapes the stats API uses are understood: equality, array membership, ``$in``
and ``$lt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from engine.adapters.mongo import _TIME_FIELD, RECORD_KINDS, cursor_query
from engine.core.model import history_key

Doc = dict[str, Any]


def matches(doc: Doc, query: Doc) -> bool:
    for key, want in query.items():
        if key == "$or":
            if not any(matches(doc, alternative) for alternative in want):
                return False
            continue
        value = doc.get(key)
        if isinstance(want, dict):
            if "$in" in want and value not in want["$in"]:
                return False
            if "$lt" in want and not (value is not None and value < want["$lt"]):
                return False
        elif isinstance(value, list):
            if want not in value:
                return False
        elif value != want:
            return False
    return True


class MemoryHistory:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.rows: dict[str, dict[str, Doc]] = {kind: {} for kind in RECORD_KINDS}

    def _save(self, kind: str, record: BaseModel | Doc, key: str | None = None) -> None:
        doc = record.model_dump(mode="json") if isinstance(record, BaseModel) else dict(record)
        doc["at"] = float(doc.get(_TIME_FIELD[kind]) or self.clock())
        self.rows[kind][key or history_key(kind, doc)] = doc

    async def save(self, kind: str, record: BaseModel | Doc) -> None:
        self._save(kind, record)

    async def save_many(self, kind: str, records: list[BaseModel | Doc]) -> int:
        for record in records:
            self._save(kind, record)
        return len(records)

    async def save_recommendation(self, record: BaseModel) -> None:
        self._save("recommendations", record)

    async def save_decision(self, record: BaseModel) -> None:
        self._save("decisions", record)

    async def save_execution(self, record: BaseModel) -> None:
        self._save("executions", record)

    async def save_verification(self, record: BaseModel) -> None:
        self._save("verifications", record)

    async def verifications_between(self, start: float, end: float) -> list[Doc]:
        rows = self.rows["verifications"].values()
        return sorted((d for d in rows if start < d["at"] <= end), key=lambda d: d["at"])

    # --- the stats API's queries -----------------------------------------------------------
    def _newest_first(self, kind: str, match: Doc) -> list[Doc]:
        found = [d for d in self.rows[kind].values() if matches(d, match)]
        # as MongoDB's pages: time, then id, newest first
        return sorted(found, key=lambda d: (d["at"], str(d.get("id", ""))), reverse=True)

    async def latest(self, kind: str, match: Doc | None = None) -> list[Doc]:
        out: dict[str, Doc] = {}
        for doc in self._newest_first(kind, match or {}):
            out.setdefault(str(doc["workload_id"]), doc)
        return [out[k] for k in sorted(out)]

    async def page(
        self,
        kind: str,
        match: Doc,
        *,
        limit: int,
        before: float | None = None,
        before_id: str | None = None,
    ) -> list[Doc]:
        return self._newest_first(kind, {**match, **cursor_query(before, before_id)})[:limit]

    async def group_count(self, kind: str, field: str) -> list[Doc]:
        counts: dict[Any, int] = {}
        for doc in self.rows[kind].values():
            counts[doc.get(field)] = counts.get(doc.get(field), 0) + 1
        return [{"_id": k, "n": n} for k, n in counts.items()]

    async def find(self, kind: str, match: Doc, *, projection: Doc | None = None) -> list[Doc]:
        return self._newest_first(kind, match)

    async def cycles(self, limit: int) -> list[Doc]:
        grouped: dict[str, Doc] = {}
        for doc in self._newest_first("executions", {}):
            row = grouped.setdefault(
                str(doc["cycle"]),
                {
                    "cycle": doc["cycle"],
                    "executed_at": doc.get("executed_at"),
                    "outcome": doc.get("outcome"),
                    "commit_sha": doc.get("commit_sha"),
                    "workload_ids": [],
                    "decision_ids": [],
                },
            )
            row["workload_ids"] += doc.get("workload_ids", [])
            row["decision_ids"] += doc.get("decision_ids", [])
        return list(grouped.values())[:limit]
