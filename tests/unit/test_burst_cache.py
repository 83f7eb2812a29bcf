"""The default decoded-state cache holds a 1,000-workload worker (issue 11, burst latency).

LRU under a cycle that reads more keys than it holds hits nothing: each key is evicted just
before its next read.  With 16 MiB a 1,000-workload worker (2,000 containers, 14 days) held
1,947 of them, so every chunk of every cycle decoded its container's state again and every
summary merged the closed days again (docs/benchmarks.md, "Burst").
"""

from __future__ import annotations

import numpy as np

from engine.core.usage import ContainerUsage
from engine.settings import Settings
from tables.state import DEFAULT_USAGE_CACHE_BYTES

T0 = 1_750_032_000.0
DAY = 86_400


def _sizes(days: int, seed: int) -> tuple[int, int]:
    """Estimated bytes of a container's state after ``days`` of 5-minute samples (ending 18 h
    into a day), decoded from its table value: just decoded, and after its summaries."""
    rng = np.random.default_rng(seed)
    cu = ContainerUsage()
    for start in range(0, days * DAY + 18 * 3600, 6 * 3600):  # the collector's 6-hour chunks
        ts = T0 + start + 300.0 * np.arange(1, 73)
        cpu = np.round(rng.lognormal(np.log(0.2), 0.6, ts.size), 5)  # as bench/common.py
        mem = np.round(rng.uniform(2e8, 6e8, ts.size))
        cu.ingest_arrays(T0 + start, ts[-1], {"cpu": (ts, cpu), "memory": (ts, mem)})
    decoded = ContainerUsage.from_dict(cu.to_dict())
    before = decoded.nbytes()
    for resource in ("cpu", "memory"):
        decoded.summary(resource)
    return before, decoded.nbytes()


def test_a_1000_workload_worker_fits_the_default_decoded_state_cache() -> None:
    assert Settings.model_fields["usage_cache_bytes"].default == DEFAULT_USAGE_CACHE_BYTES
    largest = max(max(_sizes(14, seed)) for seed in range(4))
    # (~9.8 KiB at most when written: ~19.6 MB for 2,000 containers, over the 16 MiB it was)
    assert 2_000 * largest <= DEFAULT_USAGE_CACHE_BYTES
