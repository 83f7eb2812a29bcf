"""Policy and record stores against a real MongoDB wire-protocol server (SecantusDB)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from engine.adapters.mongo import (
    IN_FLIGHT_SECONDS,
    HistoryReader,
    PolicyConflict,
    PolicyStore,
    RecordStore,
    connect,
    mongo_client,
)
from engine.core.model import Action, Decision, Mode
from engine.core.policy import validate_policy
from engine.errors import DependencyUnavailable, InvalidPolicy
from engine.settings import load_settings
from tests.harness.mongo import MongoInfo
from tests.harness.proc import free_port

pytestmark = pytest.mark.integration

Doc = dict[str, Any]


@pytest.fixture
async def client(mongo: MongoInfo) -> AsyncIterator[AsyncMongoClient[Doc]]:
    settings = load_settings(mongodb_uri=mongo.uri, kafka_username=None)
    c = mongo_client(settings)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def policies(client: AsyncMongoClient[Doc]) -> PolicyStore:
    clock = iter(range(1_000, 10_000, 10))
    store = PolicyStore(
        client[f"t_{uuid.uuid4().hex[:10]}"], validate_policy, clock=lambda: float(next(clock))
    )
    await store.ensure_indexes()
    return store


@pytest.fixture
async def records(client: AsyncMongoClient[Doc]) -> RecordStore:
    store = RecordStore(
        # stored now: a store time of 1970 is past the 90-day TTL, and the server's TTL sweep
        # (every 60 s) deleted records between a test's writes and its count (280 of 500 left)
        client[f"t_{uuid.uuid4().hex[:10]}"],
        retention_days=90,
        clock=time.time,
    )
    await store.ensure_indexes()
    return store


POLICY = {
    "id": "smarthealth-default",
    "name": "SmartHealth",
    "mode": "recommend",
    "selectors": {"namespaces": ["smarthealth"]},
}


async def test_policy_crud_and_versioning(policies: PolicyStore) -> None:
    v1 = await policies.put(POLICY, by="alice")
    assert (v1["version"], v1["updated_by"], v1["updated_at"]) == (1, "alice", 1000.0)
    assert await policies.get("smarthealth-default") == v1
    v2 = await policies.put({**POLICY, "mode": "autopilot", "version": 77}, by="bob")
    assert v2["version"] == 2 and v2["mode"] == "autopilot"  # the client cannot pick a version
    assert validate_policy(v2).version == 2  # what is stored validates again
    await policies.put({"id": "other", "priority": 3}, by="carol")
    assert [p["id"] for p in await policies.list()] == ["other", "smarthealth-default"]

    assert await policies.delete("smarthealth-default", by="dave") is True
    assert await policies.delete("smarthealth-default", by="dave") is False
    assert await policies.get("smarthealth-default") is None
    assert [p["id"] for p in await policies.list()] == ["other"]

    history = await policies.history("smarthealth-default")
    assert [(h["version"], h["op"], h["by"]) for h in history] == [
        (1, "put", "alice"),
        (2, "put", "bob"),
        (3, "delete", "dave"),
    ]
    assert history[0]["doc"]["mode"] == "recommend" and history[1]["doc"]["mode"] == "autopilot"
    assert all(h["at"].tzinfo is not None for h in history)

    v4 = await policies.put(POLICY, by="erin")  # re-created: versions continue
    assert v4["version"] == 4 and await policies.get("smarthealth-default") == v4


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({**POLICY, "guardrails": {"min_change": 5}}, "guardrails.min_change"),
        ({**POLICY, "mode": "yolo"}, "mode"),
        ({**POLICY, "colour": "red"}, "colour"),
        ({"name": "no id"}, "id"),
    ],
)
async def test_invalid_policy_is_rejected_naming_the_field_and_nothing_is_stored(
    policies: PolicyStore, doc: Doc, field: str
) -> None:
    with pytest.raises(InvalidPolicy) as info:
        await policies.put(doc, by="mallory")
    assert info.value.field == field
    assert await policies.policies.count_documents({}) == 0
    assert await policies.history_coll.count_documents({}) == 0


async def test_invalid_update_keeps_the_previous_version(policies: PolicyStore) -> None:
    v1 = await policies.put(POLICY, by="alice")
    with pytest.raises(InvalidPolicy):
        await policies.put({**POLICY, "guardrails": {"min_change": -1}}, by="bob")
    assert await policies.get(POLICY["id"]) == v1
    assert len(await policies.history(POLICY["id"])) == 1


async def test_concurrent_writers_never_share_a_version(policies: PolicyStore) -> None:
    results = await asyncio.gather(
        *(policies.put({**POLICY, "priority": i}, by=f"w{i}") for i in range(6)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, dict)]
    assert all(isinstance(r, dict | PolicyConflict) for r in results)
    versions = sorted(r["version"] for r in won)
    assert versions == list(range(1, len(won) + 1))
    current = await policies.get(POLICY["id"])
    assert current is not None and current["version"] == len(won)
    assert len(await policies.history(POLICY["id"])) == len(won)


async def test_a_write_interrupted_after_history_heals_on_next_put(policies: PolicyStore) -> None:
    await policies.put(POLICY, by="alice")
    await policies.history_coll.insert_one(  # a crash between the history and the current write
        {"policy_id": POLICY["id"], "version": 2, "op": "put", "doc": POLICY, "by": "x", "at": 0}
    )
    v3 = await policies.put(POLICY, by="bob")
    assert v3["version"] == 3


async def test_a_write_in_progress_is_a_conflict_until_it_is_an_orphan(
    policies: PolicyStore,
) -> None:
    """A history entry newer than the row, claimed moments ago, is another writer between its
    two steps: building on it gave that writer's version to a gap.  Old enough, it is a crash's
    orphan and the next write builds on it."""
    await policies.put(POLICY, by="alice")
    entry = {"policy_id": POLICY["id"], "version": 2, "op": "put", "doc": POLICY, "by": "x"}
    await policies.history_coll.insert_one({**entry, "at": 0, "claimed_at": time.time()})
    with pytest.raises(PolicyConflict, match="version 2 is being written concurrently"):
        await policies.put(POLICY, by="bob")
    assert (await policies.get(POLICY["id"]) or {})["version"] == 1
    await policies.history_coll.update_one(
        {"policy_id": POLICY["id"], "version": 2},
        {"$set": {"claimed_at": time.time() - IN_FLIGHT_SECONDS - 1}},
    )
    assert (await policies.put(POLICY, by="bob"))["version"] == 3
    history = await policies.history(POLICY["id"])
    assert [h["version"] for h in history] == [1, 2, 3]
    assert all("claimed_at" not in h for h in history)  # internal, never returned


async def test_unique_id_index_exists(policies: PolicyStore) -> None:
    info = await policies.policies.index_information()
    assert info["id_unique"]["unique"] is True and info["id_unique"]["key"] == [("id", 1)]


def _decision(i: int, action: Action, at: float, workload: str = "ns/Deployment/web") -> Decision:
    ns, kind, name = workload.split("/")
    return Decision(
        id=f"d{i}",
        recommendation_id=f"r{i}",
        workload_id=workload,
        namespace=ns,
        kind=kind,
        name=name,
        action=action,
        guardrail="min-change",
        reason="test",
        mode=Mode.AUTOPILOT,
        decided_at=at,
    )


async def test_records_ttl_index_and_time_index_exist(records: RecordStore) -> None:
    for kind in ("recommendations", "decisions", "executions"):
        info = await records.db[kind].index_information()
        assert info["ttl"]["expireAfterSeconds"] == 90 * 86400
        assert info["ttl"]["key"] == [("stored_at", 1)]
        assert info["workload_time"]["key"] == [("workload_id", 1), ("at", -1)]


async def test_records_upsert_by_id_and_read_newest_first(records: RecordStore) -> None:
    await records.save_decision(_decision(1, Action.APPLY, 100.0).model_dump(mode="json"))
    await records.save("decisions", _decision(2, Action.APPLY, 300.0))
    await records.save("decisions", _decision(3, Action.HOLD, 400.0))
    await records.save("decisions", _decision(4, Action.APPLY, 200.0, "ns/StatefulSet/db"))
    await records.save("decisions", _decision(2, Action.APPLY, 300.0))  # re-delivered
    assert await records.db["decisions"].count_documents({}) == 4
    assert await records.recent("decisions", "ns/Deployment/none") == []
    recent = await records.recent("decisions", "ns/Deployment/web")
    assert [r["id"] for r in recent] == ["d3", "d2", "d1"]


async def test_pages_by_time_and_id_lose_no_record_decided_at_the_same_instant(
    records: RecordStore,
) -> None:
    # five decisions at one instant between two others: pages of 2 must give all seven once
    times = [300.0, *[200.0] * 5, 100.0]
    await records.save_many(
        "decisions", [_decision(i, Action.HOLD, t) for i, t in enumerate(times)]
    )
    reader = HistoryReader(records.db)
    seen: list[str] = []
    before: float | None = None
    before_id: str | None = None
    for _ in range(10):
        page = await reader.page("decisions", {}, limit=2, before=before, before_id=before_id)
        seen += [d["id"] for d in page]
        if len(page) < 2:
            break
        before, before_id = page[-1]["at"], page[-1]["id"]
    assert seen == ["d0", "d5", "d4", "d3", "d2", "d1", "d6"]
    # the time alone (the cursor before): the rest of the group is skipped
    first = await reader.page("decisions", {}, limit=2)
    after = await reader.page("decisions", {}, limit=10, before=first[-1]["at"])
    assert [d["id"] for d in after] == ["d6"]


async def test_records_need_an_id_and_a_known_kind(records: RecordStore) -> None:
    with pytest.raises(ValueError, match="unknown"):
        await records.save("nonsense", {"id": "x"})
    with pytest.raises(Exception, match="no id"):
        await records.save("recommendations", {"workload_id": "a"})


async def test_unreachable_mongo_is_dependency_unavailable_without_secrets() -> None:
    settings = load_settings(
        mongodb_uri=f"mongodb://bot:s3cr3t@127.0.0.1:{free_port()}/", kafka_username=None
    )
    db = connect(settings, timeout_ms=300)
    client = db.client
    assert db.name == "kubefinops"
    try:
        store = PolicyStore(client["x"], validate_policy)
        with pytest.raises(DependencyUnavailable) as info:
            await store.get("anything")
        with pytest.raises(DependencyUnavailable):
            await store.put(POLICY, by="alice")
        with pytest.raises(DependencyUnavailable):
            await RecordStore(client["x"], retention_days=1).recent("decisions", "w")
    finally:
        await client.close()
    assert "s3cr3t" not in str(info.value) and "bot" not in str(info.value)


async def test_stores_create_their_indexes_on_first_write(client: AsyncMongoClient[Doc]) -> None:
    db = client[f"t_{uuid.uuid4().hex[:10]}"]
    await PolicyStore(db, validate_policy).put(POLICY, by="alice")
    await RecordStore(db, retention_days=7).save_decision(_decision(1, Action.APPLY, 1.0))
    assert (await db["policy_history"].index_information())["policy_version_unique"]["unique"]
    assert (await db["decisions"].index_information())["ttl"]["expireAfterSeconds"] == 7 * 86400


async def test_changed_retention_updates_the_ttl_index(client: AsyncMongoClient[Doc]) -> None:
    db = client[f"t_{uuid.uuid4().hex[:10]}"]
    await RecordStore(db, retention_days=90).ensure_indexes()
    await RecordStore(db, retention_days=30).ensure_indexes()
    for kind in ("recommendations", "decisions", "executions"):
        info = await db[kind].index_information()
        assert info["ttl"]["expireAfterSeconds"] == 30 * 86400


async def test_save_many_is_one_bulk_of_idempotent_upserts(records: RecordStore) -> None:
    batch = [_decision(i, Action.APPLY if i % 2 else Action.HOLD, 1000.0 + i) for i in range(500)]
    assert await records.save_many("decisions", list(batch)) == 500
    assert await records.save_many("decisions", list(batch[:100])) == 100  # re-delivered
    assert await records.db["decisions"].count_documents({}) == 500
    assert await records.save_many("decisions", []) == 0
    one = await records.db["decisions"].find_one({"_id": "d7"})
    assert one is not None and one["decided_at"] == 1007.0 and one["action"] == "apply"
