"""Verified apply in the closed-loop backtest (pure): the worker's watch, revert and penalty,
simulated as a cycle hook, so its benefit is measured on recorded usage.

:class:`VerifiedApply` watches every change a strategy applied.  An OOMKill of a container whose
memory the change lowered, within ``window`` after it (the backtest knows an OOM at the next
cycle: the first sample above the limit in force), is a regression: the fields the change set go
back to the values in force before it — never below what the loop itself raised them to in the
meantime — and the workload gets a penalty (the gate drops decreases until ``penalty_until``),
as :mod:`engine.core.verification` does in the worker.  The OOM that triggered it still counts:
in a cluster the revert lands minutes after the first kill, and the backtest's resolution is one
cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.core.backtest import Outcome, Values, WorkloadState, apply_values
from engine.core.model import ContainerSpec, WorkloadSpec

DAY = 86_400.0


@dataclass
class _Watch:
    applied_at: float
    before: WorkloadSpec
    changed: Mapping[str, Values]


def _lowered_memory(before: ContainerSpec, change: Values) -> bool:
    for new, old in (
        (change.memory_limit, before.limits.memory),
        (change.memory_request, before.requests.memory),
    ):
        if new is not None and (old is None or new < old):
            return True
    return False


def _restore(before: ContainerSpec, now: ContainerSpec, change: Values) -> Values:
    """The values before the change for the fields it set, not below what is in force now."""

    def back(set_to: float | None, old: float | None, current: float | None) -> float | None:
        if set_to is None or old is None:
            return None
        return max(old, current) if current is not None else old

    return Values(
        cpu_request=back(change.cpu_request, before.requests.cpu, now.requests.cpu),
        cpu_limit=back(change.cpu_limit, before.limits.cpu, now.limits.cpu),
        memory_request=back(change.memory_request, before.requests.memory, now.requests.memory),
        memory_limit=back(change.memory_limit, before.limits.memory, now.limits.memory),
    )


@dataclass
class VerifiedApply:
    """``Backtest(hooks=[VerifiedApply({"kubefinops-verified"})])``."""

    strategies: frozenset[str]
    window: float = DAY
    penalty: float = 7 * DAY
    reverts: dict[str, int] = field(default_factory=dict)  # strategy -> reverts made
    _watches: dict[tuple[str, str], _Watch] = field(default_factory=dict)
    _in_force: dict[tuple[str, str], WorkloadSpec] = field(default_factory=dict)

    def __call__(
        self,
        strategy: str,
        now: float,
        states: Mapping[str, WorkloadState],
        outcomes: Mapping[str, Outcome],
    ) -> None:
        if strategy not in self.strategies:
            return
        for wid, state in states.items():
            key = (strategy, wid)
            watch = self._watches.get(key)
            if watch is not None:
                if self._regressed(state, watch):
                    self._revert(strategy, state, watch, now)
                    del self._watches[key]
                elif now - watch.applied_at >= self.window:
                    del self._watches[key]  # healthy: the window passed without an OOM
            outcome = outcomes.get(wid)
            before = self._in_force.get(key)
            if outcome is not None and outcome.action == "apply" and outcome.containers and before:
                self._watches[key] = _Watch(now, before, dict(outcome.containers))
            self._in_force[key] = state.spec

    def _regressed(self, state: WorkloadState, watch: _Watch) -> bool:
        before = {c.name: c for c in watch.before.containers}
        for c in state.spec.containers:
            change = watch.changed.get(c.name)
            # state.ooms, not the spec: a rollout this cycle (the gate's own OOM fix) clears it
            oom_at = state.ooms.get(c.name)
            if change is None or c.name not in before or oom_at is None:
                continue
            after = oom_at - watch.applied_at
            if 0 < after <= self.window and _lowered_memory(before[c.name], change):
                return True
        return False

    def _revert(self, strategy: str, state: WorkloadState, watch: _Watch, now: float) -> None:
        before = {c.name: c for c in watch.before.containers}
        values = {
            c.name: _restore(before[c.name], c, watch.changed[c.name])
            for c in state.spec.containers
            if c.name in watch.changed and c.name in before
        }
        ooms = {c.name: (c.last_oom_at, c.oom_limit_bytes) for c in state.spec.containers}
        spec = apply_values(state.spec, values)
        # the kill stays on record for the gate's own OOM guardrail
        state.spec = spec.model_copy(
            update={
                "containers": [
                    c.model_copy(
                        update={"last_oom_at": ooms[c.name][0], "oom_limit_bytes": ooms[c.name][1]}
                    )
                    for c in spec.containers
                ]
            }
        )
        state.penalty_until = now + self.penalty
        self.reverts[strategy] = self.reverts.get(strategy, 0) + 1
