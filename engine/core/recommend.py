"""Compose the estimators per container and the cost model into one :class:`Recommendation`.

The id is a content hash of the workload, the governing policy (id, version, estimator knobs),
the current requests/limits and the targets, so re-running on the same inputs - or on fresher
samples that do not move any target - yields the same id: the decide/act stages use it for
idempotency ("already applied").  ``now`` only stamps ``generated_at``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from engine.core.cost import DEFAULT_PRICES, Prices, savings, target_savings
from engine.core.estimators import EstimatorParams, estimate_container
from engine.core.model import (
    Confidence,
    ContainerRecommendation,
    Recommendation,
    UsageSummary,
    WorkloadSpec,
)
from engine.core.policy import Policy


def content_id(prefix: str, payload: object) -> str:
    """A stable short id: ``prefix-`` + 24 hex digits of SHA-256 over canonical JSON."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"{prefix}-{hashlib.sha256(raw.encode()).hexdigest()[:24]}"


def _cost_notes(rec: ContainerRecommendation, replicas: int) -> list[str]:
    if rec.confidence is Confidence.NONE:
        return []
    notes = []
    if rec.current.requests.cpu is None:
        notes.append("no current cpu request: current cpu cost counted as 0")
    if rec.current.requests.memory is None:
        notes.append("no current memory request: current memory cost counted as 0")
    if replicas == 0:
        notes.append("0 replicas: no cost now or after, targets apply when scaled up")
    return notes


def recommend_container(
    spec: WorkloadSpec,
    name: str,
    usage: Mapping[str, Mapping[str, UsageSummary]],
    policy: Policy,
    *,
    now: float,
) -> ContainerRecommendation:
    current = next(c for c in spec.containers if c.name == name)
    if not policy.selectors.selects_container(name):
        return ContainerRecommendation(
            name=name,
            current=current,
            reasons=[f"container not selected by policy {policy.id}: left unchanged"],
        )
    rec = estimate_container(current, dict(usage.get(name, {})), policy.estimator, now=now)
    notes = _cost_notes(rec, spec.replicas)
    return rec.model_copy(update={"reasons": [*rec.reasons, *notes]}) if notes else rec


# id(params) -> (params, its JSON dump): the params are held, so an id is never reused while
# its entry lives; by identity, not equality (0.0 == -0.0, but they dump differently)
_ESTIMATOR_DOCS: dict[int, tuple[EstimatorParams, dict[str, Any]]] = {}


def _estimator_doc(params: EstimatorParams) -> dict[str, Any]:
    """The estimator knobs as JSON, dumped once per policy object (policies are decoded once per
    stored value) instead of once per workload; callers only serialize the dict."""
    found = _ESTIMATOR_DOCS.get(id(params))
    if found is None or found[0] is not params:
        if len(_ESTIMATOR_DOCS) >= 256:
            _ESTIMATOR_DOCS.clear()
        found = _ESTIMATOR_DOCS[id(params)] = (params, params.model_dump(mode="json"))
    return found[1]


def recommendation_id(
    spec: WorkloadSpec, policy: Policy, containers: list[ContainerRecommendation]
) -> str:
    payload = {
        "workload": spec.workload_id,
        "policy": [policy.id, policy.version, _estimator_doc(policy.estimator)],
        "containers": [
            [
                c.name,
                c.current.requests.model_dump(),
                c.current.limits.model_dump(),
                c.cpu_request,
                c.cpu_limit,
                c.memory_request,
                c.memory_limit,
                c.confidence.value,
            ]
            for c in containers
        ],
    }
    return content_id("rec", payload)


def recommend(
    spec: WorkloadSpec,
    usage: Mapping[str, Mapping[str, UsageSummary]],
    policy: Policy,
    *,
    now: float,
    prices: Prices = DEFAULT_PRICES,
    collection_cycle: str = "",
) -> Recommendation:
    """Targets, confidence, reasons and savings for every container of ``spec``.

    ``usage`` maps container name -> resource (``"cpu"``/``"memory"``) -> history summary;
    containers without usage get ``Confidence.NONE`` and no targets.  ``prices`` defaults to
    OpenCost's.  ``collection_cycle``: the collector's cycle that made it (the worker's).
    """
    containers = [
        recommend_container(spec, c.name, usage, policy, now=now) for c in spec.containers
    ]
    return Recommendation(
        id=recommendation_id(spec, policy, containers),
        workload_id=spec.workload_id,
        namespace=spec.namespace,
        kind=spec.kind,
        name=spec.name,
        replicas=spec.replicas,
        containers=containers,
        savings=savings(containers, spec.replicas, prices),
        target_savings=target_savings(containers, spec.replicas, prices),
        generated_at=now,
        collection_cycle=collection_cycle,  # not in the id: the same targets every cycle
    )
