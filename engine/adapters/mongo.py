"""MongoDB (PyMongo's native async API): policies with versions, recommendation/decision history.

Motor is deprecated in favour of :class:`pymongo.AsyncMongoClient`, which this uses.  Sessions
are ``async with client.start_session()`` (not awaited).  No multi-document transactions: the
Bitnami chart runs a standalone ``mongod`` where they are unavailable, so ordering is kept by a
unique ``(policy_id, version)`` index on the history instead (two concurrent writers of the same
version: one gets :class:`PolicyConflict`), and a writer that finds another's version recorded
but not yet stored gets it too, so the stored versions have no gap (``_next_version``).

Collections (database ``settings.mongodb_database``):

* ``policies`` — current document per policy, ``_id == id`` (unique ``id`` index); soft-deleted
  policies keep their row with ``deleted: true`` so versions continue if re-created.
* ``policy_history`` — every version ever written, with ``op`` (put/delete), ``by`` and ``at``.
* ``recommendations`` / ``decisions`` / ``executions`` — records keyed by their ``id``
  (re-delivery overwrites, never duplicates), indexed on ``(workload_id, at)``, expired by a TTL
  index on ``stored_at`` after ``settings.history_retention_days``.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from engine.core.model import history_key
from engine.errors import (
    AuthenticationFailed,
    DependencyUnavailable,
    InvalidPolicy,
    PermanentError,
)
from engine.settings import Settings

Doc = dict[str, Any]
Validator = Callable[[Doc], Any]
RECORD_KINDS = ("recommendations", "decisions", "executions", "verifications")
_TIME_FIELD = {
    "recommendations": "generated_at",
    "decisions": "decided_at",
    "executions": "executed_at",
    "verifications": "updated_at",  # one document per change: its latest state
}
_META = ("version", "updated_by", "updated_at")


class PolicyConflict(PermanentError):
    """Another writer stored the same policy version first; re-read and try again."""


@contextmanager
def mongo_errors(what: str) -> Iterator[None]:
    """Map driver errors to the project's tree; messages name the operation, never the URI."""
    try:
        yield
    except (DuplicateKeyError, PermanentError):
        raise
    except ConnectionFailure as exc:
        raise DependencyUnavailable(
            f"MongoDB unavailable during {what}: {type(exc).__name__}"
        ) from None
    except OperationFailure as exc:
        if exc.code in (13, 18):  # Unauthorized, AuthenticationFailed
            raise AuthenticationFailed(f"MongoDB refused {what} (code {exc.code})") from None
        raise DependencyUnavailable(f"MongoDB failed {what} (code {exc.code})") from None
    except PyMongoError as exc:
        raise DependencyUnavailable(f"MongoDB failed {what}: {type(exc).__name__}") from None


def mongo_client(settings: Settings, *, timeout_ms: int = 5000) -> AsyncMongoClient[Doc]:
    """A client that fails fast (``timeout_ms``) when the server is away.

    Creating it does not connect (PyMongo connects lazily), so a worker starts while MongoDB is
    down and the first operation raises :class:`DependencyUnavailable` instead.
    """
    return AsyncMongoClient(
        settings.mongodb_uri.get_secret_value(),
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
        appname=settings.app_id,
    )


def connect(settings: Settings, *, timeout_ms: int = 5000) -> AsyncDatabase[Doc]:
    """The project database (``settings.mongodb_database``); ``db.client`` owns the pool."""
    return mongo_client(settings, timeout_ms=timeout_ms)[settings.mongodb_database]


# a history entry newer than the policy row, younger than this, is a write between its two
# steps (PolicyStore._next_version); a write takes milliseconds, so this only delays the first
# write after a crash mid-write (or a MongoDB outage between the steps) by at most this long.
# Its age is read from the entry's ``claimed_at``: the wall clock of the writer (``time.time``,
# not the store's injectable clock, which dates the versions), internal, never returned. Writers
# on hosts whose clocks differ by more than this would misjudge each other's entries; NTP keeps
# that to milliseconds.
IN_FLIGHT_SECONDS = 30.0
_INTERNAL = ("_id", "claimed_at")


def _strip(doc: Doc | None) -> Doc | None:
    return None if doc is None else {k: v for k, v in doc.items() if k not in _INTERNAL}


class PolicyStore:
    """Versioned policy documents; every write is validated first, then recorded in history."""

    def __init__(
        self, db: AsyncDatabase[Doc], validate: Validator, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = db.client
        self.policies = db["policies"]
        self.history_coll = db["policy_history"]
        self.validate = validate
        self.clock = clock
        self._indexed = False  # writes create the indexes first (idempotent), once per process

    async def ensure_indexes(self) -> None:
        with mongo_errors("policy index creation"):
            await self.policies.create_index([("id", ASCENDING)], unique=True, name="id_unique")
            await self.history_coll.create_index(
                [("policy_id", ASCENDING), ("version", ASCENDING)],
                unique=True,
                name="policy_version_unique",
            )
        self._indexed = True

    async def _next_version(self, policy_id: str, session: Any) -> tuple[Doc | None, int]:
        """The current row and the version a write takes: one past both the row and the history.

        A history entry newer than the row is either a concurrent write between its two steps
        (recorded, row not yet replaced) or a write that crashed there.  Building on an
        in-flight one let both writers record a version and the older one then lose the row
        (its entry taken back): the stored versions had a gap ([1, 2, 4]).  So an entry younger
        than :data:`IN_FLIGHT_SECONDS` is a write in progress — 409, retry — and an older one is
        an orphan of a crash, which the next write builds on (one version skipped, the orphan
        kept in the history as written)."""
        current = await self.policies.find_one({"_id": policy_id}, session=session)
        last = await self.history_coll.find_one(
            {"policy_id": policy_id}, sort=[("version", DESCENDING)], session=session
        )
        stored = int(current["version"]) if current else 0
        recorded = int(last["version"]) if last else 0
        if last is not None and recorded > stored:
            claimed = last.get("claimed_at")
            age = time.time() - claimed if isinstance(claimed, int | float) else math.inf
            if age < IN_FLIGHT_SECONDS:
                raise PolicyConflict(
                    f"policy {policy_id!r} version {recorded} is being written concurrently; "
                    "re-read and retry"
                )
        return current, max(stored, recorded) + 1

    async def put(self, doc: Doc, by: str) -> Doc:
        """Validate and store a new version; returns the stored document (with its metadata)."""
        if not isinstance(doc, dict):
            raise InvalidPolicy("policy", "must be a JSON object")
        policy_id = doc.get("id")
        if not isinstance(policy_id, str) or not policy_id:
            raise InvalidPolicy("id", "required, a non-empty string")
        if not self._indexed:
            await self.ensure_indexes()
        with mongo_errors("policy write"):
            async with self.client.start_session(causal_consistency=True) as session:
                _, version = await self._next_version(policy_id, session)
                now = self.clock()
                stored = {k: v for k, v in doc.items() if k not in (*_META, "_id")}
                stored.update(version=version, updated_by=by, updated_at=now)
                self.validate(stored)  # raises InvalidPolicy before anything is written
                await self._record(policy_id, version, "put", stored, by, now, session)
                await self._replace_or_unrecord(policy_id, version, stored, False, session)
                return stored

    async def delete(self, policy_id: str, by: str) -> bool:
        """Soft delete: the row is marked deleted and the deletion recorded; False if absent."""
        if not self._indexed:
            await self.ensure_indexes()
        with mongo_errors("policy delete"):
            async with self.client.start_session(causal_consistency=True) as session:
                current, version = await self._next_version(policy_id, session)
                if current is None or current.get("deleted"):
                    return False
                now = self.clock()
                doc = {**current["doc"], "version": version, "updated_by": by, "updated_at": now}
                await self._record(policy_id, version, "delete", doc, by, now, session)
                await self._replace_or_unrecord(policy_id, version, doc, True, session)
                return True

    async def _record(
        self, policy_id: str, version: int, op: str, doc: Doc, by: str, now: float, session: Any
    ) -> None:
        try:
            await self.history_coll.insert_one(
                {
                    "policy_id": policy_id,
                    "version": version,
                    "op": op,
                    "doc": doc,
                    "by": by,
                    "at": datetime.fromtimestamp(now, UTC),
                    "claimed_at": time.time(),
                },
                session=session,
            )
        except DuplicateKeyError:
            raise PolicyConflict(
                f"policy {policy_id!r} version {version} was written "
                "concurrently; re-read and retry"
            ) from None

    async def _replace_or_unrecord(
        self, policy_id: str, version: int, doc: Doc, deleted: bool, session: Any
    ) -> None:
        """The row, or — when a concurrent writer's newer version got there first (409) — the
        history entry just recorded taken back: the history lists only versions that were
        stored.  Two concurrent PUTs could record both and answer one of them 409
        (tests/integration/test_hostile.py, 20 concurrent PUTs: 7 versions for 6 answers 200)."""
        try:
            await self._replace(policy_id, version, doc, deleted, session)
        except PolicyConflict:
            await self.history_coll.delete_one(
                {"policy_id": policy_id, "version": version}, session=session
            )
            raise

    async def _replace(
        self, policy_id: str, version: int, doc: Doc, deleted: bool, session: Any
    ) -> None:
        try:
            await self.policies.replace_one(
                {"_id": policy_id, "version": {"$lt": version}},
                {
                    "id": policy_id,
                    "version": version,
                    "deleted": deleted,
                    "doc": doc,
                    "updated_at": datetime.fromtimestamp(float(doc["updated_at"]), UTC),
                },
                upsert=True,
                session=session,
            )
        except DuplicateKeyError:
            raise PolicyConflict(f"policy {policy_id!r} has a newer version") from None

    async def get(self, policy_id: str) -> Doc | None:
        with mongo_errors("policy read"):
            row = await self.policies.find_one({"_id": policy_id, "deleted": False})
        return None if row is None else dict(row["doc"])

    async def list(self) -> builtins.list[Doc]:
        with mongo_errors("policy list"):
            rows = await self.policies.find({"deleted": False}).sort("_id", ASCENDING).to_list()
        return [dict(r["doc"]) for r in rows]

    async def history(self, policy_id: str) -> builtins.list[Doc]:
        """Every version, oldest first: ``{version, op, doc, by, at}``."""
        with mongo_errors("policy history"):
            rows = (
                await self.history_coll.find({"policy_id": policy_id})
                .sort("version", ASCENDING)
                .to_list()
            )
        return [r for r in (_strip(r) for r in rows) if r is not None]


class RecordStore:
    """Recommendations, decisions, executions and verifications, idempotent by ``id``, expired
    by TTL."""

    def __init__(
        self, db: AsyncDatabase[Doc], *, retention_days: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.retention_seconds = retention_days * 86400
        self.clock = clock
        self._indexed = False

    async def ensure_indexes(self) -> None:
        with mongo_errors("record index creation"):
            for kind in RECORD_KINDS:
                coll = self.db[kind]
                await coll.create_index(
                    [("workload_id", ASCENDING), ("at", DESCENDING)], name="workload_time"
                )
                try:
                    await coll.create_index(
                        [("stored_at", ASCENDING)],
                        name="ttl",
                        expireAfterSeconds=self.retention_seconds,
                    )
                except OperationFailure as exc:
                    if exc.code not in (85, 86):  # IndexOptionsConflict / IndexKeySpecsConflict
                        raise
                    # history_retention_days changed since the index was made: update it
                    await self.db.command(
                        "collMod",
                        kind,
                        index={"name": "ttl", "expireAfterSeconds": self.retention_seconds},
                    )
            await self.db["decisions"].create_index(
                [("action", ASCENDING), ("workload_id", ASCENDING), ("at", DESCENDING)],
                name="action_workload_time",
            )
        self._indexed = True

    def _row(self, kind: str, record: BaseModel | Doc, key: str | None = None) -> Doc:
        if kind not in RECORD_KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        doc = record.model_dump(mode="json") if isinstance(record, BaseModel) else dict(record)
        if not doc.get("id"):
            raise PermanentError(f"{kind} record has no id")
        at = float(doc.get(_TIME_FIELD[kind]) or self.clock())
        return {
            **doc,
            "_id": key or history_key(kind, doc),
            "at": at,
            "stored_at": datetime.fromtimestamp(self.clock(), UTC),
        }

    async def save(self, kind: str, record: BaseModel | Doc, *, key: str | None = None) -> None:
        """Upsert by ``id`` (or ``key``): a re-delivered record replaces itself instead of
        duplicating."""
        row = self._row(kind, record, key)
        if not self._indexed:
            await self.ensure_indexes()
        with mongo_errors(f"{kind} write"):
            await self.db[kind].replace_one({"_id": row["_id"]}, row, upsert=True)

    async def save_many(self, kind: str, records: list[BaseModel | Doc]) -> int:
        """:meth:`save` for many records in one round trip (an unordered bulk of upserts):
        a cycle of 10,000 decisions is a few bulk writes, not 10,000 awaits in a row."""
        rows = [self._row(kind, r) for r in records]
        if not rows:
            return 0
        if not self._indexed:
            await self.ensure_indexes()
        with mongo_errors(f"{kind} bulk write"):
            result = await self.db[kind].bulk_write(
                [ReplaceOne({"_id": row["_id"]}, row, upsert=True) for row in rows],
                ordered=False,
            )
        return int(result.upserted_count + result.matched_count)

    async def save_recommendation(self, record: BaseModel | Doc) -> None:
        await self.save("recommendations", record)

    async def save_decision(self, record: BaseModel | Doc) -> None:
        await self.save("decisions", record)

    async def save_execution(self, record: BaseModel | Doc) -> None:
        """One record per workload of a cycle, each kept (:func:`history_key`)."""
        await self.save("executions", record)

    async def save_verification(self, record: BaseModel | Doc) -> None:
        await self.save("verifications", record)

    async def verifications_between(self, start: float, end: float, limit: int = 500) -> list[Doc]:
        """Verification outcomes recorded in ``(start, end]`` (their latest state), oldest first."""
        with mongo_errors("verifications read"):
            rows = (
                await self.db["verifications"]
                .find({"at": {"$gt": start, "$lte": end}})
                .sort("at", ASCENDING)
                .limit(limit)
                .to_list()
            )
        return [r for r in (_strip(r) for r in rows) if r is not None]

    async def recent(self, kind: str, workload_id: str, limit: int = 20) -> list[Doc]:
        with mongo_errors(f"{kind} read"):
            rows = (
                await self.db[kind]
                .find({"workload_id": workload_id})
                .sort("at", DESCENDING)
                .limit(limit)
                .to_list()
            )
        return [r for r in (_strip(r) for r in rows) if r is not None]


def cursor_query(before: float | None, before_id: str | None) -> Doc:
    """The filter of a page after the cursor ``(before, before_id)``, newest first by time then
    id (the demo's in-memory history reads the same shape)."""
    if before is None:
        return {}
    if before_id is None:
        return {"at": {"$lt": before}}
    return {"$or": [{"at": {"$lt": before}}, {"at": before, "id": {"$lt": before_id}}]}


def _clean(doc: Doc | None) -> Doc | None:
    """A stored record as the API shows it: no ``_id``, no ``stored_at`` (a TTL datetime)."""
    return None if doc is None else {k: v for k, v in doc.items() if k not in ("_id", "stored_at")}


class HistoryReader:
    """Read side of :class:`RecordStore` for the stats API: the fleet's global record.

    Every answer comes from MongoDB, so any worker gives the same one (docs/api.md).
    """

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.db = db

    async def latest(self, kind: str, match: Doc | None = None) -> builtins.list[Doc]:
        """The newest record of ``kind`` per workload (optionally among ``match``)."""
        pipeline: builtins.list[Doc] = [
            {"$match": match or {}},
            {"$sort": {"at": -1}},
            {"$group": {"_id": "$workload_id", "doc": {"$first": "$$ROOT"}}},
        ]
        with mongo_errors(f"{kind} latest"):
            cursor = await self.db[kind].aggregate(pipeline)
            rows = await cursor.to_list()
        docs = [_clean(row["doc"]) for row in rows]
        return sorted((d for d in docs if d is not None), key=lambda d: str(d["workload_id"]))

    async def page(
        self,
        kind: str,
        match: Doc,
        *,
        limit: int,
        before: float | None = None,
        before_id: str | None = None,
    ) -> builtins.list[Doc]:
        """Newest first (time, then id), at most ``limit``, after the cursor: strictly older
        than ``before``, or as old with an id below ``before_id`` when that is given."""
        query = {**match, **cursor_query(before, before_id)}
        order = [("at", DESCENDING), ("id", DESCENDING)]
        with mongo_errors(f"{kind} page"):
            rows = await self.db[kind].find(query).sort(order).limit(limit).to_list()
        return [r for r in (_clean(r) for r in rows) if r is not None]

    async def cycles(self, limit: int) -> builtins.list[Doc]:
        """The newest ``limit`` executed cycles, one row each (the executor records one
        execution per workload): outcome, time, commit, workload and decision ids."""
        pipeline: builtins.list[Doc] = [
            {"$sort": {"at": -1}},
            {
                "$group": {
                    "_id": "$cycle",
                    "at": {"$max": "$at"},
                    "executed_at": {"$max": "$executed_at"},
                    "outcome": {"$first": "$outcome"},
                    "commit_sha": {"$first": "$commit_sha"},
                    "workload_ids": {"$push": "$workload_ids"},
                    "decision_ids": {"$push": "$decision_ids"},
                }
            },
            {"$sort": {"at": -1}},
            {"$limit": limit},
        ]
        with mongo_errors("executions by cycle"):
            cursor = await self.db["executions"].aggregate(pipeline)
            rows = await cursor.to_list()
        return [
            {
                "cycle": row["_id"],
                "executed_at": row.get("executed_at"),
                "outcome": row.get("outcome"),
                "commit_sha": row.get("commit_sha"),
                "workload_ids": [w for ids in row.get("workload_ids", []) for w in ids or []],
                "decision_ids": [d for ids in row.get("decision_ids", []) for d in ids or []],
            }
            for row in rows
        ]

    async def group_count(self, kind: str, field: str) -> builtins.list[Doc]:
        """``[{"_id": value, "n": count}]`` of ``field`` over every record of ``kind``."""
        pipeline: builtins.list[Doc] = [{"$group": {"_id": f"${field}", "n": {"$sum": 1}}}]
        with mongo_errors(f"{kind} counts"):
            cursor = await self.db[kind].aggregate(pipeline)
            return list(await cursor.to_list())

    async def find(
        self, kind: str, match: Doc, *, projection: Doc | None = None
    ) -> builtins.list[Doc]:
        with mongo_errors(f"{kind} read"):
            rows = await self.db[kind].find(match, projection).to_list()
        return [r for r in (_clean(r) for r in rows) if r is not None]
