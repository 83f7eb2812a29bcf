"""Policies: MongoDB is the system of record; the compacted ``kubefinops.policies`` topic carries
every change; a global table gives every worker all policies.

* The REST API (``agents.web``) validates, stores in MongoDB, then publishes to the topic.
* The ``policy-sync`` agent (:func:`sync`) copies the topic into the global table (a write inside
  a stream, so the table's changelog — and thus every worker — gets it).  A tombstone deletes.
* On start, :func:`reconcile` republishes MongoDB's current policies and tombstones ids that the
  table has but MongoDB does not, so a publish lost between the two heals itself.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import Runtime, park
from engine.backoff import retry_forever
from engine.core.model import WorkloadSpec
from engine.core.policy import Policy, parse_policy_record, validate_policy
from engine.core.policy import policy_for as choose_policy
from engine.errors import InvalidPolicy, KubeFinOpsError

log = logging.getLogger("kubefinops.policies")
AGENT = "policy-sync"


def current_policies(rt: Runtime) -> list[Policy]:
    """All valid policies from the global table (each decoded once per stored value)."""
    return [policy for _, policy in rt.tables.policies.items()]


def policy_for(rt: Runtime, spec: WorkloadSpec) -> Policy:
    return choose_policy(current_policies(rt), spec)


async def publish(rt: Runtime, policy_id: str, document: dict[str, Any] | None) -> None:
    """Publish a policy (or a tombstone when ``document`` is None) to the compacted topic."""
    value = None if document is None else validate_policy(document).model_dump_json().encode()
    await rt.topics.policies.send(key=policy_id.encode(), value=value)


async def sync(rt: Runtime, key: bytes | None, raw: bytes | None) -> Policy | None:
    """One ``kubefinops.policies`` record -> the global table (a tombstone deletes)."""
    pid = (key or b"").decode("utf-8", errors="replace")
    topic = rt.settings.topic("policies")
    if not pid:
        reason = "policy record without a key"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return None
    if not raw:
        rt.tables.policies.pop(pid)
        return None
    try:
        policy = parse_policy_record(raw)
    except InvalidPolicy as exc:
        reason = f"invalid policy: {exc}"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return None
    rt.tables.policies[pid] = policy
    return policy


async def reconcile(rt: Runtime) -> int:
    """MongoDB -> topic. Returns how many records were published."""
    store = rt.services.policies
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
    stale = [pid for pid in rt.tables.policies.keys() if pid not in ids]
    for pid in stale:
        await publish(rt, pid, None)
    log.info("reconciled %d policies from MongoDB (%d tombstoned)", len(ids), len(stale))
    return len(ids) + len(stale)


async def reconcile_until_done(rt: Runtime) -> int:
    """:func:`reconcile`, retried with backoff while MongoDB is unreachable."""
    return await retry_forever(
        lambda: reconcile(rt),
        what="policy reconcile deferred",
        first=2.0,
        retry_on=(KubeFinOpsError,),
    )
