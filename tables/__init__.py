"""Table declarations: the durable state of the autopilot, each backed by a compacted changelog.

Keys and values use the JSON codec so that a value written at run time and the same value
recovered from the changelog after a restart are equal (the ``raw`` codec would hand back bytes
for str keys after recovery).  Values are JSON dicts; the agents see them as models through
:mod:`tables.state` (:class:`~tables.state.TypedTable`), so the changelog is readable with kcat.

======================  ============  =========================================  ==========
table                   key           value                                      partitions
======================  ============  =========================================  ==========
usage                   container id  ``ContainerUsage``: windowed sketches       N
workloads               workload id   ``WorkloadSpec``                           N
last-action             workload id   ``LastAction`` (cooldown, idempotency)     N
watermarks              query name    collector watermark (Unix s)               1
verifications           workload id   ``Verification``: watch of its last change  1
policies (global)       policy id     ``Policy``, on every worker                1
pending-cycles          cycle id      the executor's waiting cycle: expected...  1
pending-decisions       cycle|wid     a decision waiting for its cycle           1
======================  ============  =========================================  ==========

The N-partition tables are written from streams of N-partition topics keyed by workload id,
so they are co-partitioned with ``kubefinops.metrics`` and ``kubefinops.recommendations``.
"""

from __future__ import annotations

from typing import Any

import faust

from engine.settings import Settings
from tables.state import Tables
from tables.store import raw_access, store_options, store_url


def _json() -> faust.Schema[Any, Any]:
    return faust.Schema(key_serializer="json", value_serializer="json")


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
    # the configured store (tables/store.py: memory, or RocksDB with bounded caches) for every
    # partitioned table; the global policies table stays in memory (a few small values).  The
    # executor's pending rows were tried in memory under RocksDB (``len()`` of a RocksDB table
    # iterates every key and overwritten version in its memtable: ~5 % of a burst in py-spy), but
    # a restart then replays their whole changelog: 22 s instead of ~5 s at 10,000 workloads.
    store: dict[str, Any] = {"store": store_url(settings), "options": store_options(settings)}
    return Tables.over(
        usage=app.Table(
            "usage",
            partitions=n,
            help="Windowed usage sketches per container",
            schema=_json(),
            extra_topic_configs=USAGE_CHANGELOG_CONFIG,
            **store,
        ),
        workloads=app.Table(
            "workloads", partitions=n, help="Latest spec per workload", schema=_json(), **store
        ),
        last_action=app.Table(
            "last-action",
            partitions=n,
            help="Last applied change per workload",
            schema=_json(),
            **store,
        ),
        watermarks=app.Table(
            "watermarks", partitions=1, help="Collector watermarks", schema=_json(), **store
        ),
        verifications=app.Table(
            "verifications",
            partitions=1,  # written by the one-partition verifier (docs/verification.md)
            help="Watch of the last pushed change per workload",
            schema=_json(),
            **store,
        ),
        policies=app.GlobalTable(
            "policies",
            partitions=1,
            help="Policies by id",
            schema=_json(),
            # Faust gives a global table's changelog partition to every worker as active (and, on
            # the workers that do not write it, as standby too); an active partition's records are
            # buffered up to ``recovery_buffer_size`` and flushed only when a recovery ends, so with
            # the default (1000) a policy written after start sat in the other workers' buffers
            # until the next rebalance.  1: applied as it arrives (Faust's GlobalTable docstring).
            recovery_buffer_size=1,
        ),
        usage_cache_bytes=settings.usage_cache_bytes,
        raw_access=raw_access(settings),
        # written by the executor's stream of the one-partition decisions topic
        pending_cycles=app.Table(
            "pending-cycles",
            partitions=1,
            help="Cycles waiting to be applied",
            schema=_json(),
            **store,
        ),
        pending_decisions=app.Table(
            "pending-decisions",
            partitions=1,
            help="Decisions waiting for their cycle",
            schema=_json(),
            **store,
        ),
    )
