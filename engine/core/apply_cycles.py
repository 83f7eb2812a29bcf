"""Which decisions make one apply cycle (pure): decisions are grouped by the collection cycle
they belong to (``Decision.collection_cycle``), not by when they happen to arrive.

The collector knows how many workloads a cycle has and says so with a :class:`CycleManifest` on
the decisions topic; a cycle is complete when it has a decision for that many workloads.  Until
then nothing is applied, whatever the arrival spread (a MongoDB outage slowing the gate, a
rebalance, a slow partition).  Two fallbacks keep a cycle from waiting for ever:

* no manifest (records produced by hand, the demo): the cycle is ready once no decision of it
  arrived for ``quiet`` seconds;
* a manifest whose count is never reached (a workload's recommendation was dead-lettered): the
  cycle is ready ``timeout`` seconds after its first decision, with what it has.

The state is plain data so the executor can keep it in a changelog-backed table: a decision that
was consumed is never lost by a crash before its cycle is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from engine.core.model import Decision, RecordId, Wire

DEFAULT_QUIET_SECONDS = 10.0
DEFAULT_TIMEOUT_SECONDS = 900.0


class CycleManifest(Wire):
    """On ``kubefinops.decisions`` after the collector published a cycle's markers."""

    type: Literal["cycle-manifest"] = "cycle-manifest"
    cycle: RecordId
    workloads: int = Field(ge=0, le=10_000_000)
    at: float = Field(ge=0)


@dataclass
class PendingCycle:
    cycle: str
    expected: int | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    decisions: dict[str, Decision] = field(default_factory=dict)  # workload id -> last decision
    # workloads with a stored decision: the executor keeps each decision as its own table row and
    # decodes the rows only when the cycle is applied, so readiness counts rows, not objects
    stored: int = 0

    @property
    def size(self) -> int:
        """Distinct workloads with a decision in this cycle."""
        return max(self.stored, len(self.decisions))

    def add(self, decision: Decision, now: float) -> None:
        self.decisions[decision.workload_id] = decision
        self.first_seen = now if self.first_seen is None else min(self.first_seen, now)
        self.last_seen = now if self.last_seen is None else max(self.last_seen, now)

    def expect(self, manifest: CycleManifest, now: float) -> None:
        self.expected = manifest.workloads
        if self.first_seen is None:
            self.first_seen = now

    def ready(self, now: float, *, quiet: float, timeout: float) -> str | None:
        """Why the cycle is ready to apply now (``complete``/``quiet``/``timeout``), or None."""
        if self.expected is not None:
            if self.size >= self.expected:
                return "complete"
            if self.first_seen is not None and now - self.first_seen >= timeout:
                return "timeout"
            return None
        if self.last_seen is not None and now - self.last_seen >= quiet:
            return "quiet"
        return None

    # --- table codec: the cycle's facts; each decision is its own table row (a cycle of 10,000
    # workloads must not become one 10 MB value)
    def meta(self) -> dict[str, Any]:
        return {
            "cycle": self.cycle,
            "expected": self.expected,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "stored": self.size,
        }

    @classmethod
    def from_meta(cls, data: dict[str, Any], decisions: list[Decision]) -> PendingCycle:
        pending = cls(
            cycle=str(data["cycle"]),
            expected=data.get("expected"),
            first_seen=data.get("first_seen"),
            last_seen=data.get("last_seen"),
            stored=int(data.get("stored") or 0),
        )
        for d in decisions:
            pending.decisions[d.workload_id] = d
        return pending


ADHOC = "adhoc"


def cycle_key(decision: Decision) -> str:
    """The pending-cycle key of a decision: its collection cycle; decisions without one (records
    produced by hand) share one key and are applied together after a quiet period."""
    return decision.collection_cycle or ADHOC


def is_control(raw: bytes | None) -> str | None:
    """``cycle-manifest`` or ``apply-tick`` for those records of the decisions topic, else None
    (a decision, valid or not, which the executor parses as one)."""
    if not raw or len(raw) > 4096:
        return None
    for kind in ("cycle-manifest", "apply-tick"):
        if f'"type":"{kind}"'.encode() in raw.replace(b" ", b""):
            return kind
    return None


def ready_cycles(
    pending: dict[str, PendingCycle], now: float, *, quiet: float, timeout: float
) -> list[tuple[str, str]]:
    """``(cycle, why)`` of every pending cycle ready to apply, oldest first."""
    out = []
    for key, p in sorted(pending.items(), key=lambda kv: kv[1].first_seen or 0.0):
        why = p.ready(now, quiet=quiet, timeout=timeout)
        if why is not None:
            out.append((key, why))
    return out
