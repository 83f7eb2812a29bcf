"""The floor benchmark's stand-ins keep the shape the real records and the bench's reader have:
a marker is told from a chunk the way the floor worker tells them, and the records it sends
are what ``bench_scale.decisions_of`` reads (workload id, cycle) at the size it claims."""

from __future__ import annotations

import json

import numpy as np

import bench.bench_floor as floor
import bench.bench_scale as bs


def test_the_floor_tells_markers_from_chunks_as_the_collector_writes_them() -> None:
    bs.STEP[0] = 300
    msgs = bs.burst_messages([("ns0", "svc-0")], 0, 2700, "c-1", np.random.default_rng(1))
    (_, chunk), (_, marker) = msgs
    assert floor.is_marker(marker) and not floor.is_marker(chunk)
    found = floor.CYCLE.search(marker)
    assert found is not None and found.group(1) == b"c-1"


def test_the_stand_in_records_carry_what_the_reader_reads_at_their_size() -> None:
    bs.STEP[0] = 300
    (_, marker), *_ = bs.markers([("ns0", "svc-0")], "c-1", 1.0)
    rec = floor.recommendation_of(b"ns0/Deployment/svc-0", marker)
    decision = floor.decision_of(rec)
    for value, size in ((rec, floor.REC_BYTES), (decision, floor.DECISION_BYTES)):
        doc = json.loads(value)
        assert (doc["workload_id"], doc["collection_cycle"]) == ("ns0/Deployment/svc-0", "c-1")
        assert len(value) == size


def test_records_written_per_workload_counts_only_what_grew() -> None:
    before = {"p.metrics": 10, "p-usage-changelog": 5, "p.policies": 3}
    after = {"p.metrics": 2010, "p-usage-changelog": 2005, "p.policies": 3, "p.new": 500}
    out = bs.records_written(before, after, 1000)
    assert out.startswith("4.50 (")
    assert "metrics 2.00" in out and "usage-changelog 2.00" in out and "new 0.50" in out
    assert "policies" not in out
