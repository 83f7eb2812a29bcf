"""Verified apply, the Prometheus half: read what the cluster's telemetry says about a change.

:class:`ClusterTelemetry` asks the queries :mod:`engine.core.rollout` writes — one instant
selector for the rollout (pods, their values, OOMs, controller status), then the regressions
over the window since the push or since the change went live, and once, the same measures over
the window before the push (the baseline that keeps an old problem from being blamed on this
change).  :func:`check` is one step of a watch: telemetry in, :func:`engine.core.verification.
advance` out.  A per-policy SLO expression Prometheus rejects is logged and skipped, never a
reason to stop watching.
"""

from __future__ import annotations

import asyncio
import logging

from engine.adapters.prometheus import PrometheusClient
from engine.core.collect import Series
from engine.core.rollout import (
    BASELINE_MAX_WINDOW,
    Rollout,
    Signals,
    baseline_of,
    by_container,
    evidence,
    live_verdict,
    max_value,
    parse_rollout,
    restarts_by_pod,
    restarts_expr,
    rollout_expr,
    slo_expr,
    throttling_expr,
    unavailable_expr,
)
from engine.core.verification import (
    Phase,
    Verification,
    advance,
    revert_failed,
    reverted,
)
from engine.errors import PermanentError
from engine.services import GitWriter, Telemetry

log = logging.getLogger("kubefinops.verification")


class ClusterTelemetry:
    """:class:`Telemetry` from Prometheus (kube-state-metrics + cAdvisor).

    Identical queries within one tick are asked once: the rollout selector is the same for every
    watch of a namespace and kind, the restarts query for every watch of a namespace pushed in
    the same cycle — after a cycle of thousands of changes, one tick asked the same
    whole-namespace selector once per watch.  The shared answers are kept for the tick's time
    (``at``) only: the first rollout asked for a new tick drops them."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self._tick: float | None = None
        self._answers: dict[tuple[str, float], asyncio.Future[list[Series]]] = {}

    async def _query(self, expr: str, at: float) -> list[Series]:
        key = (expr, at)
        shared = self._answers.get(key)
        if shared is None:
            shared = self._answers[key] = asyncio.ensure_future(self.client.query(expr, at))
        # shield: one caller cancelled (a tick's task torn down) does not cancel the others'
        return await asyncio.shield(shared)

    async def rollout(self, v: Verification, at: float) -> Rollout:
        if at != self._tick:
            self._tick, self._answers = at, {}
        return parse_rollout(await self._query(rollout_expr(v), at), v)

    async def signals(self, v: Verification, at: float) -> Signals:
        """Crash signals since the push; once live, throttling/readiness/SLOs since then."""
        restarts = await self._query(restarts_expr(v, at - v.applied_at), at)
        if v.phase is not Phase.LIVE or v.live_at is None:
            return Signals(restarts=restarts_by_pod(restarts))
        live = await self._live_signals(v, at, at - v.live_at)
        return Signals(
            restarts=restarts_by_pod(restarts),
            throttling=live.throttling,
            unavailable=live.unavailable,
            slos=live.slos,
        )

    async def baseline(self, v: Verification) -> dict[str, float]:
        window = min(v.params.window, BASELINE_MAX_WINDOW)
        return baseline_of(await self._live_signals(v, v.applied_at, window))

    async def _live_signals(self, v: Verification, at: float, window: float) -> Signals:
        unavailable = unavailable_expr(v, window, v.params.readiness_grace)
        throttling, ready, *slos = await asyncio.gather(
            self._query(throttling_expr(v, window), at),
            self._optional(unavailable, at),
            *(self._optional(slo_expr(slo.expr, v), at, slo.name) for slo in v.params.slos),
        )
        slo_values = {
            slo.name: value
            for slo, series in zip(v.params.slos, slos, strict=True)
            if (value := max_value(series)) is not None
        }
        return Signals(
            throttling=by_container(throttling), unavailable=max_value(ready), slos=slo_values
        )

    async def _optional(self, expr: str | None, at: float, name: str = "") -> list[Series]:
        if expr is None:
            return []
        try:
            return await self._query(expr, at)
        except PermanentError as exc:  # a policy's SLO expression Prometheus refuses
            log.warning("verification query %s skipped: %s", name or expr[:80], exc)
            return []


async def check(
    telemetry: Telemetry, v: Verification, now: float, *, autopilot: bool
) -> Verification:
    """One check of a watch: rollout, baseline (once, after it went live), regressions."""
    if not v.watching:
        return v
    rollout = await telemetry.rollout(v, now)
    if v.phase is Phase.LIVE and v.baseline is None:
        v = v.model_copy(update={"baseline": await telemetry.baseline(v)})
    found = evidence(v, rollout, await telemetry.signals(v, now), now)
    return advance(v, now, live=live_verdict(v, rollout), evidence=found, autopilot=autopilot)


async def settle(v: Verification, reverter: GitWriter | None, now: float) -> Verification:
    """Make the revert a regressed change is due, through Git.  A retryable failure (remote
    down) propagates and the revert stays due; a permanent one ends as ``regressed`` with why."""
    if not v.revert_pending:
        return v
    if reverter is None:
        return revert_failed(v, now, "no Git remote configured (KUBEFINOPS_GIT_REMOTE_URL)")
    try:
        result = await reverter.revert(v)
    except PermanentError as exc:
        return revert_failed(v, now, str(exc))
    if result.outcome in ("pushed", "committed") or (result.outcome == "noop" and result.sha):
        detail = f"reverted by {result.sha or '?'}"[:60] + (
            f"; {result.detail}" if result.detail else ""
        )
        return reverted(v, result.sha, now, detail)
    return revert_failed(v, now, result.detail)
