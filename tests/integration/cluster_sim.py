"""A simulated workload whose kube-state-metrics series go live into a real Prometheus.

:class:`SimDeployment` writes, through the remote-write receiver, the series kube-state-metrics
exports for one Deployment: pod -> ReplicaSet -> Deployment owners, pod readiness, each
container's requests/limits, restarts and last termination, and the controller's status.  A
rollout creates a new ReplicaSet with new pods and ends the old pods' series with staleness
markers, as Prometheus does when a scraped pod disappears.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.harness.remote_write import STALE, RemoteWriter

MIB = 1024 * 1024
Values = dict[tuple[str, str], float]  # (section, resource) -> cores or bytes


@dataclass
class _Pod:
    values: Values
    ready: bool = True
    restarts: int = 0
    oom_at: float | None = None


@dataclass
class SimDeployment:
    writer: RemoteWriter
    namespace: str = "smarthealth"
    name: str = "patient-api"
    container: str = "app"
    replicas: int = 2
    pods: dict[str, _Pod] = field(default_factory=dict)
    rs: str = ""
    _written: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def start(self, values: Values) -> None:
        self._new_replicaset(values)
        self.publish()

    def _new_replicaset(self, values: Values) -> None:
        self.rs = f"{self.name}-{secrets.token_hex(4)}"
        for _ in range(self.replicas):
            self.pods[f"{self.rs}-{secrets.token_hex(3)}"] = _Pod(dict(values))

    def rollout(self, values: Values) -> None:
        """A new ReplicaSet with ``values``; the old pods are gone (their series end)."""
        old = list(self.pods)
        for pod in old:
            del self.pods[pod]
        self._new_replicaset(values)
        self.publish(gone=old)

    def oom(self, index: int = 0, at: float | None = None) -> str:
        pod = sorted(self.pods)[index]
        self.pods[pod].oom_at = at or time.time()
        self.pods[pod].restarts += 1
        self.publish()
        return pod

    def _base(self, name: str, **labels: str) -> dict[str, str]:
        return {
            "__name__": name,
            "namespace": self.namespace,
            "job": "kube-state-metrics",
            **labels,
        }

    def publish(self, gone: Sequence[str] = ()) -> None:
        samples: list[tuple[dict[str, str], float]] = []
        for pod in gone:
            samples.extend((labels, STALE) for labels in self._written.pop(pod, []))
        ready = sum(1 for p in self.pods.values() if p.ready)
        samples += [
            (
                self._base(
                    "kube_replicaset_owner",
                    replicaset=self.rs,
                    owner_kind="Deployment",
                    owner_name=self.name,
                    owner_is_controller="true",
                ),
                1,
            ),
            (self._base("kube_deployment_spec_replicas", deployment=self.name), self.replicas),
            (
                self._base("kube_deployment_status_replicas_updated", deployment=self.name),
                len(self.pods),
            ),
            (self._base("kube_deployment_status_replicas_available", deployment=self.name), ready),
        ]
        for name, p in sorted(self.pods.items()):
            c = {"pod": name, "container": self.container}
            mine = [
                (
                    self._base(
                        "kube_pod_owner",
                        pod=name,
                        owner_kind="ReplicaSet",
                        owner_name=name.rsplit("-", 1)[0],
                        owner_is_controller="true",
                    ),
                    1.0,
                ),
                (self._base("kube_pod_status_ready", pod=name, condition="true"), float(p.ready)),
                (
                    self._base("kube_pod_status_ready", pod=name, condition="false"),
                    float(not p.ready),
                ),
                (self._base("kube_pod_container_status_restarts_total", **c), float(p.restarts)),
            ]
            for (section, resource), value in sorted(p.values.items()):
                unit = "core" if resource == "cpu" else "byte"
                labels = self._base(
                    f"kube_pod_container_resource_{section}", resource=resource, unit=unit, **c
                )
                mine.append((labels, value))
            if p.oom_at is not None:
                reason = self._base(
                    "kube_pod_container_status_last_terminated_reason", reason="OOMKilled", **c
                )
                stamp = self._base("kube_pod_container_status_last_terminated_timestamp", **c)
                mine += [(reason, 1.0), (stamp, p.oom_at)]
            self._written[name] = [labels for labels, _ in mine]
            samples += mine
        self.writer.write(samples)
