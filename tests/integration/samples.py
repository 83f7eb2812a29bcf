"""Records the worker tests send: workload specs and hourly usage with known values, as
per-container batches (the format before columnar chunks, still read) or as chunks."""

from __future__ import annotations

import math
import time

import numpy as np

from engine.core.collect import chunks_from_batches
from engine.core.model import ContainerSpec, CycleEnd, MetricsBatch, ResourcePair, WorkloadSpec

MiB = 2**20


def workload(
    name: str, replicas: int = 2, *, cpu: float = 0.6, memory: float = 512 * MiB
) -> WorkloadSpec:
    """One container ``app`` with ``cpu``/``memory`` requests (memory limit = request)."""
    return WorkloadSpec(
        namespace="shop",
        kind="Deployment",
        name=name,
        replicas=replicas,
        containers=[
            ContainerSpec(
                name="app",
                requests=ResourcePair(cpu=cpu, memory=memory),
                limits=ResourcePair(memory=memory),
            )
        ],
        observed_at=time.time(),
    )


def batches(
    spec: WorkloadSpec, rng: np.random.Generator, *, hours: int = 8, pods: int = 2
) -> tuple[list[MetricsBatch], np.ndarray, np.ndarray]:
    """Hourly chunks of minute samples; returns the batches and every cpu/memory value sent."""
    end = math.floor(time.time() / 60) * 60 - 120
    start = end - hours * 3600
    out, cpu_all, mem_all = [], [], []
    for h in range(hours):
        t0, t1 = start + h * 3600, start + (h + 1) * 3600
        ts = np.arange(t0 + 60, t1 + 1, 60, dtype=float)
        cpu_s, mem_s = [], []
        for _ in range(pods):
            cpu = rng.lognormal(mean=math.log(0.2), sigma=0.5, size=ts.size)
            mem = rng.uniform(300, 400, size=ts.size) * MiB
            cpu_all.append(cpu)
            mem_all.append(mem)
            cpu_s += list(zip(ts.tolist(), cpu.tolist(), strict=True))
            mem_s += list(zip(ts.tolist(), mem.tolist(), strict=True))
        out.append(
            MetricsBatch(
                namespace=spec.namespace,
                kind=spec.kind,
                workload=spec.name,
                container="app",
                start=t0,
                end=t1,
                samples={"cpu": cpu_s, "memory": mem_s},
            )
        )
    return out, np.concatenate(cpu_all), np.concatenate(mem_all)


def encode_chunks(items: list[MetricsBatch]) -> list[tuple[bytes, bytes]]:
    """The same samples as the collector sends them: one columnar record per workload/chunk."""
    return [(c.workload_id.encode(), c.encode()) for c in chunks_from_batches(items)]


def encode(items: list[MetricsBatch | CycleEnd]) -> list[tuple[bytes, bytes]]:
    out = []
    for item in items:
        wid = item.workload_id if isinstance(item, MetricsBatch) else item.spec.workload_id
        out.append((wid.encode(), item.model_dump_json().encode()))
    return out
