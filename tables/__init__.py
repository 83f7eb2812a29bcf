"""Table declarations: the durable state of the autopilot, each backed by a compacted changelog.

Keys and values use the JSON codec so that a value written at run time and the same value
recovered from the changelog after a restart are equal (the ``raw`` codec would hand back bytes
for str keys after recovery).  Values are plain JSON dicts produced by the pure core's
``to_dict()`` methods — see :mod:`engine.core.usage` — so the changelog is readable with kcat.

======================  ============  =========================================  ==========
table                   key           value                                      partitions
======================  ============  =========================================  ==========
usage                   container id  windowed sketches per resource             N
workloads               workload id   latest WorkloadSpec                        N
last-action             workload id   last applied change (cooldown, idempotency)  N
watermarks              query name    collector watermark (Unix s)               1
policies (global)       policy id     policy document, on every worker           1
======================  ============  =========================================  ==========

The N-partition tables are written from streams of N-partition topics keyed by workload id,
so they are co-partitioned with ``kubefinops.metrics`` and ``kubefinops.recommendations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types.tables import GlobalTableT, TableT

from engine.settings import Settings


def _json() -> faust.Schema[Any, Any]:
    return faust.Schema(key_serializer="json", value_serializer="json")


@dataclass(frozen=True)
class Tables:
    usage: TableT[str, dict[str, Any]]
    workloads: TableT[str, dict[str, Any]]
    last_action: TableT[str, dict[str, Any]]
    watermarks: TableT[str, float]
    policies: GlobalTableT


# Every container's value is rewritten each hour: with Kafka's default 1 GiB / 7-day segments the
# changelog keeps every version until a segment rolls, and a restart replays all of them.  Hourly
# segments and an eager cleaner keep it near one value per container (set at topic creation).
USAGE_CHANGELOG_CONFIG = {
    "segment.ms": str(3600 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.2",
}


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    n = settings.topic_partitions
    return Tables(
        usage=app.Table(
            "usage",
            partitions=n,
            help="Windowed usage sketches per container",
            schema=_json(),
            extra_topic_configs=USAGE_CHANGELOG_CONFIG,
        ),
        workloads=app.Table(
            "workloads", partitions=n, help="Latest spec per workload", schema=_json()
        ),
        last_action=app.Table(
            "last-action", partitions=n, help="Last applied change per workload", schema=_json()
        ),
        watermarks=app.Table(
            "watermarks", partitions=1, help="Collector watermarks", schema=_json()
        ),
        policies=app.GlobalTable("policies", partitions=1, help="Policies by id", schema=_json()),
    )
