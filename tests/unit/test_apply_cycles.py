"""Apply cycles keyed by the collection cycle: complete, quiet and timeout, whatever the spread."""

from __future__ import annotations

import json

from engine.core.apply_cycles import CycleManifest, PendingCycle, cycle_key, ready_cycles
from engine.core.model import Decision

T0 = 1_800_000_000.0


def decision(wid: str, cycle: str = "c1", did: str | None = None) -> Decision:
    ns, kind, name = wid.split("/")
    return Decision.model_validate(
        {
            "id": did or f"dec-{name}",
            "recommendation_id": f"rec-{name}",
            "workload_id": wid,
            "namespace": ns,
            "kind": kind,
            "name": name,
            "action": "apply",
            "guardrail": "autopilot",
            "reason": "r",
            "mode": "autopilot",
            "decided_at": T0,
            "cycle": cycle,
        }
    )


def test_a_manifest_waits_for_every_workload_whatever_the_spread() -> None:
    p = PendingCycle("c1")
    p.expect(CycleManifest(cycle="c1", workloads=3, at=T0), T0)
    p.add(decision("ns/Deployment/a"), T0)
    p.add(decision("ns/Deployment/b"), T0 + 1)
    # 26 s later (a MongoDB outage used to split this cycle): still waiting for the third one
    assert p.ready(T0 + 27, quiet=3, timeout=900) is None
    p.add(decision("ns/Deployment/c"), T0 + 27)
    assert p.ready(T0 + 27, quiet=3, timeout=900) == "complete"


def test_a_redelivered_decision_counts_once() -> None:
    p = PendingCycle("c1", expected=2)
    p.add(decision("ns/Deployment/a"), T0)
    p.add(decision("ns/Deployment/a"), T0 + 1)
    assert p.ready(T0 + 2, quiet=3, timeout=900) is None and len(p.decisions) == 1


def test_fallbacks_quiet_without_manifest_and_timeout_with_one() -> None:
    p = PendingCycle("c1")
    p.add(decision("ns/Deployment/a"), T0)
    assert p.ready(T0 + 2, quiet=3, timeout=900) is None
    assert p.ready(T0 + 3, quiet=3, timeout=900) == "quiet"
    q = PendingCycle("c2", expected=5)
    q.add(decision("ns/Deployment/a", "c2"), T0)
    assert q.ready(T0 + 899, quiet=3, timeout=900) is None
    assert q.ready(T0 + 900, quiet=3, timeout=900) == "timeout"


def test_ready_cycles_oldest_first_and_the_meta_round_trips() -> None:
    a, b = PendingCycle("a"), PendingCycle("b")
    b.add(decision("ns/Deployment/x", "b"), T0)
    a.add(decision("ns/Deployment/y", "a"), T0 + 1)
    assert ready_cycles({"a": a, "b": b}, T0 + 10, quiet=3, timeout=900) == [
        ("b", "quiet"),
        ("a", "quiet"),
    ]
    meta = json.loads(json.dumps(a.meta()))
    again = PendingCycle.from_meta(meta, list(a.decisions.values()))
    assert again.meta() == a.meta() and again.decisions == a.decisions
    assert PendingCycle.from_meta(meta, []).size == 1  # the count survives without the rows
    assert cycle_key(decision("ns/Deployment/z", "")) == "adhoc"
    assert cycle_key(decision("ns/Deployment/z", "c9")) == "c9"
