"""Reporter: one report + audit snapshot per executed cycle, written to S3 (MinIO).

Consumes the one-partition ``kubefinops.cycles`` topic.  The topic is the durable queue: while S3
is down this agent retries with capped backoff and does not acknowledge the record, so cycles go
on (other agents are not blocked) and every report arrives once S3 returns.  Keys are
deterministic, so a redelivered cycle overwrites the same objects instead of duplicating them.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from agents.runtime import Runtime, park, parse_or_park
from engine.backoff import retry_forever
from engine.core.model import CycleSummary
from engine.core.verification import Verification
from engine.errors import KubeFinOpsError, PermanentError
from engine.metrics import CYCLE_FAILURES, RECORDS_PROCESSED, REPORTS_PENDING, REPORTS_WRITTEN

log = logging.getLogger("kubefinops.reporter")
AGENT = "reporter"


async def deliver(rt: Runtime, summary: CycleSummary) -> list[str]:
    """Write the cycle's report, retrying while the store is unavailable."""
    sink = rt.services.reports
    if sink is None:
        return []

    def count_retry(exc: BaseException, delay: float) -> None:
        REPORTS_WRITTEN.labels("retry").inc()
        CYCLE_FAILURES.labels(AGENT, "s3").inc()

    verified = await recent_verifications(rt, summary)
    REPORTS_PENDING.inc()
    try:
        return await retry_forever(
            lambda: sink.write_cycle(summary, generated_at=rt.clock(), verifications=verified),
            what=f"report for cycle {summary.cycle} delayed",
            first=rt.retry_first_seconds,
            cap=120.0,
            on_retry=count_retry,
        )  # the writer counts the objects it wrote
    finally:
        REPORTS_PENDING.dec()


async def recent_verifications(rt: Runtime, summary: CycleSummary) -> list[Verification]:
    """Outcomes of earlier changes recorded in the cycle interval before this one (MongoDB
    history; best effort: a report is not held back for them)."""
    store = rt.services.history
    if store is None or not rt.settings.verification_enabled:
        return []
    end = summary.execution.executed_at
    try:
        docs = await store.verifications_between(end - rt.settings.collect_interval_seconds, end)
    except KubeFinOpsError as exc:
        log.warning("report of cycle %s without verification outcomes: %s", summary.cycle, exc)
        return []
    out = []
    for doc in docs:
        try:
            out.append(Verification.model_validate(doc))
        except ValidationError:
            continue
    return out


async def handle(rt: Runtime, key: bytes | None, raw: bytes | None) -> list[str] | None:
    """One ``kubefinops.cycles`` record -> its report (keys), or a dead letter if refused."""
    topic = rt.settings.topic("cycles")
    summary = await parse_or_park(rt, CycleSummary, raw, key=key, agent=AGENT, topic=topic)
    if summary is None:
        return None
    try:
        keys = await deliver(rt, summary)
    except PermanentError as exc:
        REPORTS_WRITTEN.labels("failed").inc()
        reason = f"report rejected: {exc}"
        await park(rt, topic=topic, key=key, raw=raw, reason=reason, agent=AGENT)
        return None
    log.info("cycle %s reported: %s", summary.cycle, ", ".join(keys) or "(no S3)")
    RECORDS_PROCESSED.labels(AGENT).inc()
    return keys
