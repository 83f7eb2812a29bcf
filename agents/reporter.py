"""Reporter: one report + audit snapshot per executed cycle, written to S3 (MinIO).

Consumes the one-partition ``kubefinops.cycles`` topic.  The topic is the durable queue: while S3
is down this agent retries with capped backoff and does not acknowledge the record, so cycles go
on (other agents are not blocked) and every report arrives once S3 returns.  Keys are
deterministic, so a redelivered cycle overwrites the same objects instead of duplicating them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import ValidationError

from agents.runtime import Runtime, park, parse_or_park
from engine.core.model import CycleSummary
from engine.core.verification import Verification
from engine.errors import KubeFinOpsError, PermanentError, RetryableError
from engine.metrics import CYCLE_FAILURES, RECORDS_PROCESSED, REPORTS_PENDING, REPORTS_WRITTEN

log = logging.getLogger("kubefinops.reporter")
AGENT = "reporter"


async def deliver(rt: Runtime, summary: CycleSummary) -> list[str]:
    writer = rt.service("reports")
    if writer is None:
        return []
    delay = 1.0
    verified = await recent_verifications(rt, summary)
    REPORTS_PENDING.inc()
    try:
        while True:
            try:
                keys: list[str] = await writer.write_cycle(
                    summary, generated_at=time.time(), verifications=verified
                )
                return keys  # the writer counts the objects it wrote
            except RetryableError as exc:
                REPORTS_WRITTEN.labels("retry").inc()
                CYCLE_FAILURES.labels(AGENT, "s3").inc()
                log.warning(
                    "report for cycle %s delayed (%s); retrying in %.0fs", summary.cycle, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 120.0)
    finally:
        REPORTS_PENDING.dec()


async def recent_verifications(rt: Runtime, summary: CycleSummary) -> list[Verification]:
    """Outcomes of earlier changes recorded in the cycle interval before this one (MongoDB
    history; best effort: a report is not held back for them)."""
    store = rt.service("records")
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


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.cycles, name="kubefinops.agents.reporter")
    async def reporter(stream: Any) -> None:
        async for event in stream.events():
            summary = await parse_or_park(
                rt,
                CycleSummary,
                event.value,
                key=event.key,
                agent=AGENT,
                topic=rt.settings.topic("cycles"),
            )
            if summary is None:
                continue
            try:
                keys = await deliver(rt, summary)
            except PermanentError as exc:
                REPORTS_WRITTEN.labels("failed").inc()
                await park(
                    rt,
                    topic=rt.settings.topic("cycles"),
                    key=event.key,
                    raw=event.value,
                    reason=f"report rejected: {exc}",
                    agent=AGENT,
                )
                continue
            log.info("cycle %s reported: %s", summary.cycle, ", ".join(keys) or "(no S3)")
            RECORDS_PROCESSED.labels(AGENT).inc()
