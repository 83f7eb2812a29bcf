"""Consumer lag: end offset minus committed offset of every assigned partition, every 10 s.

Exported as ``kubefinops_consumer_lag_messages{topic,partition}`` (the dashboard's "Consumer lag
by topic" panel). Partitions revoked in a rebalance are removed so they do not freeze at a stale
value on this worker while another worker owns them.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from engine.metrics import CONSUMER_LAG

log = logging.getLogger("kubefinops.lag")
LAG_INTERVAL_SECONDS = 10.0


async def measure(app: faust.App, exported: set[tuple[str, str]]) -> None:
    consumer: Any = app.consumer
    assigned = consumer.assignment()
    if app.rebalancing or not assigned:
        return
    ends = await consumer.highwaters(*assigned)
    committed = getattr(consumer, "_committed_offset", {})
    now: set[tuple[str, str]] = set()
    for tp in assigned:
        end = ends.get(tp)
        if end is None:
            continue
        done = committed.get(tp)
        if done is None:
            done = await consumer.position(tp)
        labels = (tp.topic, str(tp.partition))
        CONSUMER_LAG.labels(*labels).set(max(0, end - (done or 0)))
        now.add(labels)
    for labels in exported - now:
        CONSUMER_LAG.remove(*labels)
    exported.clear()
    exported.update(now)


def register(app: faust.App) -> None:
    exported: set[tuple[str, str]] = set()

    @app.timer(interval=LAG_INTERVAL_SECONDS)
    async def consumer_lag() -> None:
        try:
            await measure(app, exported)
        except Exception as exc:  # a metric must never stop the worker
            log.debug("consumer lag not measured: %s", exc)
