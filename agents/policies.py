"""Policies: MongoDB is the system of record; the compacted ``kubefinops.policies`` topic carries
every change; a global table gives every worker all policies.

* The REST API (``agents.web``) validates, stores in MongoDB, then publishes to the topic.
* The ``policy-sync`` agent copies the topic into the global table (a write inside a stream, so
  the table's changelog — and thus every worker — gets it).  A tombstone (empty value) deletes.
* On start, :func:`reconcile` republishes MongoDB's current policies and tombstones ids that the
  table has but MongoDB does not, so a publish lost between the two heals itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agents.runtime import Runtime, park
from engine.core.model import WorkloadSpec
from engine.core.policy import Policy, parse_policy_record, validate_policy
from engine.core.policy import policy_for as choose_policy
from engine.errors import InvalidPolicy, KubeFinOpsError

log = logging.getLogger("kubefinops.policies")
AGENT = "policy-sync"

_parsed: dict[tuple[str, int, str], Policy] = {}


def current_policies(rt: Runtime) -> list[Policy]:
    """All valid policies from the global table (parsed once per id and version)."""
    out: list[Policy] = []
    for pid, doc in list(rt.tables.policies.items()):
        if not isinstance(doc, dict):
            continue
        cache_key = (str(pid), int(doc.get("version", 0)), str(doc.get("updated_at", "")))
        policy = _parsed.get(cache_key)
        if policy is None:
            try:
                policy = validate_policy(doc)
            except InvalidPolicy as exc:  # stored before a schema change: ignore, say so
                log.warning("ignoring invalid policy %s: %s", pid, exc)
                continue
            _parsed[cache_key] = policy
        out.append(policy)
    return out


def policy_for(rt: Runtime, spec: WorkloadSpec) -> Policy:
    return choose_policy(current_policies(rt), spec)


async def publish(rt: Runtime, policy_id: str, document: dict[str, Any] | None) -> None:
    """Publish a policy (or a tombstone when ``document`` is None) to the compacted topic."""
    value = None if document is None else validate_policy(document).model_dump_json().encode()
    await rt.topics.policies.send(key=policy_id.encode(), value=value)


async def reconcile(rt: Runtime) -> int:
    """MongoDB -> topic. Returns how many records were published."""
    store = rt.service("policies")
    if store is None:
        return 0
    docs = await store.list()
    ids = set()
    for doc in docs:
        pid = str(doc.get("id", ""))
        ids.add(pid)
        try:
            await publish(rt, pid, doc)
        except InvalidPolicy as exc:  # stored before today's bounds: skip it, say why, go on
            log.warning("reconcile skipped policy %r: %s", pid[:100], exc)
    stale = [pid for pid in list(rt.tables.policies.keys()) if pid not in ids]
    for pid in stale:
        await publish(rt, str(pid), None)
    log.info("reconciled %d policies from MongoDB (%d tombstoned)", len(ids), len(stale))
    return len(ids) + len(stale)


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.policies, name="kubefinops.agents.policy_sync")
    async def sync(stream: Any) -> None:
        async for event in stream.events():
            pid = (event.key or b"").decode("utf-8", errors="replace")
            if not pid:
                await park(
                    rt,
                    topic=rt.settings.topic("policies"),
                    key=event.key,
                    raw=event.value,
                    reason="policy record without a key",
                    agent=AGENT,
                )
                continue
            if not event.value:
                rt.tables.policies.pop(pid, None)
                continue
            try:
                policy = parse_policy_record(event.value)
            except InvalidPolicy as exc:
                await park(
                    rt,
                    topic=rt.settings.topic("policies"),
                    key=event.key,
                    raw=event.value,
                    reason=f"invalid policy: {exc}",
                    agent=AGENT,
                )
                continue
            rt.tables.policies[pid] = policy.model_dump(mode="json")

    @rt.app.task
    async def reconcile_on_start() -> None:
        # Let table recovery finish first; retry while MongoDB is unreachable.
        delay = 2.0
        await asyncio.sleep(5.0)
        while True:
            try:
                await reconcile(rt)
                return
            except KubeFinOpsError as exc:
                log.warning("policy reconcile deferred (%s); retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
