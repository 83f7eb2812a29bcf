"""The estimator and gate settings before issue 9's backtest-tuned defaults.

Tests that check the arithmetic of one estimator step (P95 + 15% headroom, memory peak + 15%,
the x2 max step, VPA's x1.2 OOM bump...) pin these explicitly, so they keep checking the step
itself whatever the defaults are; the defaults are checked in test_policy and test_calm_gate.
"""

from __future__ import annotations

from typing import Any

from engine.core.estimators import EstimatorParams

CLASSIC: dict[str, Any] = {
    "memory_limit_equals_request": True,
    "cpu_percentile_mode": "fixed",
    "cpu_headroom": 0.15,
    "memory_buffer": 0.15,
    "max_step": 2.0,
    "memory_growth_horizon": 0.0,
    "oom_bump_factor": 1.2,
}
CLASSIC_GUARDRAILS: dict[str, Any] = {"min_decrease": 0.10, "min_memory_increase": None}


def classic(**overrides: Any) -> EstimatorParams:
    return EstimatorParams(**{**CLASSIC, **overrides})


def classic_policy_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the classic estimator and gate settings under its own overrides."""
    return {
        **doc,
        "estimator": {**CLASSIC, **doc.get("estimator", {})},
        "guardrails": {**CLASSIC_GUARDRAILS, **doc.get("guardrails", {})},
    }
