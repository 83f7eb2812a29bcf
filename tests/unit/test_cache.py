"""The decoded-state cache: LRU by bytes, checked against the stored value, bounded."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np

from engine.core.model import MetricsBatch
from engine.core.usage import ContainerUsage
from tables.cache import ByteLRU
from tables.state import UsageTable

T0 = 1_750_032_000.0


def _state(days: int, seed: int) -> ContainerUsage:
    rng = np.random.default_rng(seed)
    cu = ContainerUsage()
    n = days * 1440
    ts = T0 + 60.0 * np.arange(1, n + 1)
    cpu, mem = rng.lognormal(-2, 0.8, n), rng.uniform(1e8, 4e8, n)
    for i in range(0, n, 720):
        sl = slice(i, i + 720)
        tl = ts[sl].tolist()
        cu.ingest(
            MetricsBatch(
                namespace="ns", kind="Deployment", workload=f"w{seed}", container="app",
                start=float(ts[i] - 60), end=float(ts[sl][-1]),
                samples={
                    "cpu": list(zip(tl, cpu[sl].tolist(), strict=True)),
                    "memory": list(zip(tl, mem[sl].tolist(), strict=True)),
                },
            )
        )  # fmt: skip
    return cu


def test_lru_evicts_least_recently_used_beyond_the_byte_bound() -> None:
    lru: ByteLRU[str] = ByteLRU(100)
    stored = {k: object() for k in "abcd"}
    for k in "abc":
        lru.put(k, stored[k], k.upper(), 40)  # c evicts a (120 > 100)
    assert lru.get("a", stored["a"]) is None and lru.bytes == 80
    assert lru.get("b", stored["b"]) == "B"  # b is now the most recent
    lru.put("d", stored["d"], "D", 40)  # evicts c, the least recently used
    assert lru.get("c", stored["c"]) is None
    assert lru.get("b", stored["b"]) == "B" and lru.get("d", stored["d"]) == "D"
    assert lru.bytes == 80 <= lru.max_bytes and lru.evictions == 2
    lru.put("huge", object(), "H", 101)  # larger than the bound: not kept, evicts nothing
    assert len(lru) == 2 and lru.bytes == 80


def test_an_entry_is_valid_only_for_the_stored_value_it_was_decoded_from() -> None:
    lru: ByteLRU[int] = ByteLRU(1000)
    first, reread, changed = {"v": 1}, {"v": 1}, {"v": 2}
    lru.put("k", first, 1, 10)
    assert lru.get("k", first) == 1
    # an equal value read back as a new object (the RocksDB store decodes on every read)
    assert lru.get("k", reread) == 1 and lru.hits == 2
    assert lru.get("k", changed) is None and lru.misses == 1  # replaced: decode again


def test_usage_cache_respects_its_bound_over_many_containers() -> None:
    states = [_state(3, seed) for seed in range(6)]
    stored = [cu.to_dict() for cu in states]
    one = ContainerUsage.from_dict(stored[0]).nbytes()
    table = UsageTable({f"c{i}": doc for i, doc in enumerate(stored)}, int(2.5 * one))
    for _ in range(3):
        for i in range(len(stored)):
            got = table.get(f"c{i}")
            assert got == states[i]  # evicted entries decode again, correctly
            assert table.cache.bytes <= table.cache.max_bytes
    assert len(table.cache) <= 3 and table.cache.evictions > 0
    # a hit returns the very object, without decoding
    again = table.get("c5")
    assert table.get("c5") is again
    # a value gone from the table is absent and forgets the key
    table.pop("c5")
    assert table.get("c5") is None and table.cache.get("c5", stored[5]) is None


def test_the_size_estimate_tracks_the_real_decoded_size() -> None:
    """Also: a decoded 14-day state stays small (closed days held packed, one merged sketch)."""
    doc = json.loads(json.dumps(_state(14, 1).to_dict()))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoded = [ContainerUsage.from_dict(doc) for _ in range(20)]
        for cu in decoded:  # what a cached state holds once the recommender summarized it
            cu.summary("cpu"), cu.summary("memory")
        real = (tracemalloc.get_traced_memory()[0] - before) / len(decoded)
    finally:
        tracemalloc.stop()
    estimate = decoded[0].nbytes()
    assert 0.5 * real <= estimate <= 2.0 * real, (estimate, real)
    assert real < 16 * 1024  # it was ~54 KiB with every daily sketch decoded


def test_the_per_workload_model_caches_are_bounded_whatever_the_fleet() -> None:
    from engine.core.model import ContainerSpec, ResourcePair, WorkloadSpec
    from tables.state import MODEL_CACHE_ENTRIES, Tables

    tables = Tables.in_memory()
    n = MODEL_CACHE_ENTRIES + 500
    for i in range(n):
        spec = WorkloadSpec(
            namespace="ns",
            kind="Deployment",
            name=f"w{i}",
            containers=[ContainerSpec(name="app", requests=ResourcePair(cpu=0.5, memory=2**29))],
        )
        tables.workloads[spec.workload_id] = spec
    assert len(tables.workloads.cache) == MODEL_CACHE_ENTRIES
    assert tables.workloads.cache.evictions == 500
    # an evicted spec is decoded again from the table, equal to what was written
    first = tables.workloads.get("ns/Deployment/w0")
    assert first is not None and first.name == "w0" and first.containers[0].name == "app"
    last = tables.workloads.get(f"ns/Deployment/w{n - 1}")
    assert last is not None and tables.workloads.get(f"ns/Deployment/w{n - 1}") is last  # a hit
