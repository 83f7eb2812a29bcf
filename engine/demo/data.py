"""Sample data for ``kubefinops demo``: the SmartHealth estate and a few days of usage.

The estate is the repository's ``smarthealth-gitops`` folder.  A wheel ships a copy of it as
package data (``engine/demo/smarthealth-gitops``, copied by ``setup.py`` at build time); a source
checkout uses the folder itself.  :func:`gitops_dir` says which one this install has.

Workloads come from the real manifests in ``smarthealth-gitops/base`` (names, containers, current
requests, replicas, HPA); usage is generated with a fixed seed around realistic shapes — diurnal
web traffic, a bursty queue worker, a JVM whose heap sits near its limit (and was OOMKilled once),
an idle sidecar — so the recommendations are worth reading.  Batches follow the collector's
contract: one batch per container per chunk, holding every pod's samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.model import ContainerSpec, HpaSpec, MetricsBatch, ResourcePair, WorkloadSpec
from engine.core.patches import parse_yaml_all
from engine.core.quantity import parse_quantity

NAMESPACE = "smarthealth"
ESTATE = "smarthealth-gitops"
MiB = 1024.0 * 1024.0

# (cpu usage as a fraction of the request, memory as a fraction of the request, shape)
PROFILES: dict[str, tuple[float, float, str]] = {
    "patient-api": (0.22, 0.35, "diurnal"),
    "appointments": (0.15, 0.30, "diurnal"),
    "billing": (0.08, 0.25, "flat"),
    "notifications-worker": (0.30, 0.40, "bursty"),
    "records-service": (0.20, 0.93, "jvm"),
    "frontend": (0.05, 0.20, "diurnal"),
    "patients-db": (0.35, 0.70, "flat"),
}


def gitops_dir() -> Path | None:
    """The SmartHealth GitOps folder: the wheel's package data, else the source checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / ESTATE, here.parents[1] / ESTATE):
        if (candidate / "base").is_dir():
            return candidate
    return None


def _resources(container: dict[str, Any]) -> tuple[ResourcePair, ResourcePair]:
    res = container.get("resources") or {}

    def pair(section: dict[str, Any] | None) -> ResourcePair:
        section = section or {}
        cpu = section.get("cpu")
        mem = section.get("memory")
        return ResourcePair(
            cpu=parse_quantity(cpu) if cpu is not None else None,
            memory=parse_quantity(mem) if mem is not None else None,
        )

    return pair(res.get("requests")), pair(res.get("limits"))


def load_estate(gitops_dir: Path, now: float) -> list[WorkloadSpec]:
    """Workload specs from the base manifests (Deployments, StatefulSets and HPAs)."""
    docs: list[dict[str, Any]] = []
    for path in sorted((gitops_dir / "base").rglob("*.yaml")):
        docs.extend(d for d in parse_yaml_all(path.read_text()) if isinstance(d, dict))
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d
        for d in docs
        if d.get("kind") == "HorizontalPodAutoscaler"
    }
    specs: list[WorkloadSpec] = []
    for doc in docs:
        if doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        labels = dict(doc["spec"]["template"]["metadata"].get("labels") or {})
        containers = []
        for c in pod.get("containers", []):
            requests, limits = _resources(c)
            env = " ".join(str(e.get("value", "")) for e in c.get("env") or [])
            is_jvm = "MaxRAMPercentage" in env or labels.get("runtime") == "jvm"
            oom = is_jvm and c["name"] == pod["containers"][0]["name"]
            containers.append(
                ContainerSpec(
                    name=c["name"],
                    requests=requests,
                    limits=limits,
                    is_jvm=is_jvm,
                    last_oom_at=now - 2 * 86400 if oom else None,
                    oom_limit_bytes=limits.memory if oom else None,
                    restarts=1 if oom else 0,
                )
            )
        hpa = hpas.get(name)
        hpa_spec = None
        if hpa is not None:
            metrics = [
                m.get("resource", {}).get("name", "other") for m in hpa["spec"].get("metrics", [])
            ]
            hpa_spec = HpaSpec(
                name=hpa["metadata"]["name"],
                min_replicas=hpa["spec"].get("minReplicas", 1),
                max_replicas=hpa["spec"]["maxReplicas"],
                metrics=metrics,
            )
        specs.append(
            WorkloadSpec(
                namespace=NAMESPACE,
                kind=doc["kind"],
                name=name,
                replicas=int(doc["spec"].get("replicas", 1)),
                containers=containers,
                hpa=hpa_spec,
                labels=labels,
                observed_at=now,
            )
        )
    return specs


def _shape(kind: str, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hour = (ts % 86400) / 3600.0
    if kind == "diurnal":
        base = 0.55 + 0.45 * np.sin((hour - 8) / 24 * 2 * math.pi)
    elif kind == "bursty":
        base = 0.3 + (rng.random(ts.size) < 0.03) * rng.uniform(1.5, 3.0, ts.size)
    elif kind == "jvm":
        base = 0.97 + 0.03 * np.sin(ts / 5400.0)
    else:
        base = np.full(ts.size, 0.8)
    return np.clip(base * rng.lognormal(0.0, 0.15, ts.size), 0.0, None)


def usage_batches(
    specs: list[WorkloadSpec],
    *,
    start: float,
    end: float,
    step: float = 60.0,
    chunk: float = 6 * 3600.0,
    seed: int = 7,
) -> Iterator[MetricsBatch]:
    """Batches for every container, chunk by chunk, for the time range ``(start, end]``."""
    rng = np.random.default_rng(seed)
    t0 = start
    while t0 < end:
        t1 = min(end, t0 + chunk)
        ts = np.arange(math.floor(t0 / step) * step + step, t1 + 1e-9, step)
        for spec in specs:
            cpu_frac, mem_frac, kind = PROFILES.get(spec.name, (0.2, 0.4, "flat"))
            for i, c in enumerate(spec.containers):
                sidecar = i > 0
                cpu_req = c.requests.cpu or 0.1
                mem_req = c.requests.memory or 256 * MiB
                cpu_s: list[tuple[float, float]] = []
                mem_s: list[tuple[float, float]] = []
                for _pod in range(max(1, spec.replicas)):
                    shape = _shape("flat" if sidecar else kind, ts, rng)
                    cpu = cpu_req * (0.04 if sidecar else cpu_frac) * shape
                    mem = (
                        mem_req
                        * (0.3 if sidecar else mem_frac)
                        * (0.9 + 0.1 * np.minimum(shape, 1.5))
                    )
                    cpu_s.extend(zip(ts.tolist(), np.round(cpu, 6).tolist(), strict=True))
                    mem_s.extend(zip(ts.tolist(), np.round(mem).tolist(), strict=True))
                yield MetricsBatch(
                    namespace=spec.namespace,
                    kind=spec.kind,
                    workload=spec.name,
                    container=c.name,
                    start=t0,
                    end=t1,
                    samples={"cpu": cpu_s, "memory": mem_s},
                    source="demo",
                )
        t0 = t1
