"""Render a list of :class:`Recommendation` as table, JSON, YAML or CSV text (pure).

The data shaping lives in :func:`rows` (one :class:`Row` per container, in workload order) and
:func:`totals`; the four renderers only format it:

* ``table`` — fixed-width text like KRR: per container the CPU and memory requests *and* limits
  as ``current -> target`` (with ``(step X)`` where the max-step guardrail caps the next change),
  confidence, the monthly delta and a short reason (``? why`` where there is no
  recommendation); then totals that leave out changes the gate would hold (an HPA's resource,
  an excluded workload), and the notes.
* ``json`` / ``yaml`` — the full Recommendation objects (``model_dump(mode="json")``), as a list.
* ``csv`` — one row per container with the stable columns of :data:`CSV_COLUMNS`; amounts are
  plain numbers (cores, bytes, currency units), an empty cell means "none".

Nothing here prints: callers decide where the text goes (stdout must stay parseable).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML

from engine.core.cost import DEFAULT_PRICES, Prices, savings
from engine.core.model import Confidence, ContainerRecommendation, Recommendation, Savings
from engine.core.quantity import fmt_cpu, fmt_memory

FORMATS = ("table", "json", "yaml", "csv")
CSV_COLUMNS = (
    "namespace",
    "kind",
    "workload",
    "container",
    "replicas",
    "confidence",
    "current_cpu_request",
    "recommended_cpu_request",
    "current_memory_request",
    "recommended_memory_request",
    "recommended_cpu_limit",
    "recommended_memory_limit",
    "monthly_delta",
    "currency",
    "recommendation_id",
)
TABLE_HEADERS = (
    "WORKLOAD",
    "CONTAINER",
    "CPU REQUEST",
    "CPU LIMIT",
    "MEM REQUEST",
    "MEM LIMIT",
    "CONFIDENCE",
    "MONTHLY DELTA",
    "REASON",
)
HELD_NOTE = "not in totals"


@dataclass(frozen=True)
class Row:
    namespace: str
    kind: str
    workload: str
    container: str
    replicas: int
    confidence: Confidence
    current_cpu: float | None
    recommended_cpu: float | None
    current_memory: float | None
    recommended_memory: float | None
    cpu_limit: float | None
    memory_limit: float | None
    monthly_delta: float  # recommended - current for this container, all replicas
    currency: str
    recommendation_id: str
    current_cpu_limit: float | None = None
    current_memory_limit: float | None = None
    # the estimate each value steps toward, where the max-step guardrail caps the step
    targets: tuple[float | None, float | None, float | None, float | None] = (
        None,
        None,
        None,
        None,
    )
    reason: str = ""

    @property
    def workload_ref(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.workload}"


@dataclass(frozen=True)
class Totals:
    currency: str
    monthly_savings: float
    monthly_increase: float
    current_monthly: float
    recommended_monthly: float
    workloads: int
    containers: int
    without_data: int  # containers with confidence "none"
    held: int = 0  # workloads whose change (or part of it) the gate would not make

    @property
    def monthly_delta(self) -> float:
        return self.recommended_monthly - self.current_monthly


def ordered(recs: Sequence[Recommendation]) -> list[Recommendation]:
    return sorted(recs, key=lambda r: (r.namespace, r.kind, r.name))


Quad = tuple[float | None, float | None, float | None, float | None]


def _targets(c: ContainerRecommendation) -> Quad:
    """The estimate behind each step (cpu req, cpu lim, mem req, mem lim), None where equal."""
    target = getattr(c, "target", None)  # set by the estimators when a step falls short
    if target is None:
        return (None, None, None, None)
    steps = (c.cpu_request, c.cpu_limit, c.memory_request, c.memory_limit)
    names = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    out = []
    for step, name in zip(steps, names, strict=True):
        value = getattr(target, name, None)
        out.append(value if value is not None and step is not None and value != step else None)
    return (out[0], out[1], out[2], out[3])


def _clip(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def short_reason(c: ContainerRecommendation, notes: Sequence[str] = ()) -> str:
    """One short reason for the table: ``?`` and why where there is no recommendation, the
    gate's note (HPA, exclusion) where the change would not be made, else the step's cap or
    the estimator's first reason."""
    if c.confidence is Confidence.NONE:
        return "? " + _clip(c.reasons[0] if c.reasons else "not enough data")
    if notes:
        return _clip(notes[0])
    capped = [r for r in c.reasons if r.startswith("max step")]
    return _clip((capped or c.reasons or [""])[0])


def rows(
    recs: Sequence[Recommendation],
    prices: Prices = DEFAULT_PRICES,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> list[Row]:
    """One row per container; the per-container delta uses the same cost model as the totals."""
    out: list[Row] = []
    for rec in ordered(recs):
        for c in rec.containers:
            delta = savings([c], rec.replicas, prices).monthly_delta
            out.append(
                Row(
                    namespace=rec.namespace,
                    kind=rec.kind,
                    workload=rec.name,
                    container=c.name,
                    replicas=rec.replicas,
                    confidence=c.confidence,
                    current_cpu=c.current.requests.cpu,
                    recommended_cpu=c.cpu_request,
                    current_memory=c.current.requests.memory,
                    recommended_memory=c.memory_request,
                    cpu_limit=c.cpu_limit,
                    memory_limit=c.memory_limit,
                    monthly_delta=delta,
                    currency=rec.savings.currency,
                    recommendation_id=rec.id,
                    current_cpu_limit=c.current.limits.cpu,
                    current_memory_limit=c.current.limits.memory,
                    targets=_targets(c),
                    reason=short_reason(c, (notes or {}).get(rec.workload_id, ())),
                )
            )
    return out


def counted(rec: Recommendation, held: frozenset[str], prices: Prices) -> Savings:
    """The savings the autopilot would make: ``held`` resources (an HPA's, or all of an
    excluded workload's) keep their current values."""
    if not held:
        return rec.savings
    kept = [
        c.model_copy(
            update={
                **({"cpu_request": None, "cpu_limit": None} if "cpu" in held else {}),
                **({"memory_request": None, "memory_limit": None} if "memory" in held else {}),
            }
        )
        for c in rec.containers
    ]
    return savings(kept, rec.replicas, prices)


def totals(
    recs: Sequence[Recommendation],
    prices: Prices = DEFAULT_PRICES,
    held: Mapping[str, frozenset[str]] | None = None,
) -> Totals:
    """Fleet totals; changes ``held`` per workload id (HPA, exclusion) are not counted."""
    containers = [c for r in recs for c in r.containers]
    held = held or {}
    money_of = [counted(r, held.get(r.workload_id, frozenset()), prices) for r in recs]
    return Totals(
        currency=recs[0].savings.currency if recs else prices.currency,
        monthly_savings=sum(s.monthly_savings for s in money_of),
        monthly_increase=sum(s.monthly_increase for s in money_of),
        current_monthly=sum(s.current_monthly for s in money_of),
        recommended_monthly=sum(s.recommended_monthly for s in money_of),
        workloads=len(recs),
        containers=len(containers),
        without_data=sum(1 for c in containers if c.confidence is Confidence.NONE),
        held=sum(1 for r in recs if held.get(r.workload_id)),
    )


# --- formatting ----------------------------------------------------------------------------------


def money(value: float, currency: str = "USD") -> str:
    """``-12.34 USD`` / ``+0.50 USD``; rounds to cents, never prints ``-0.00``."""
    cents = round(value * 100)
    sign = "+" if cents > 0 else "-" if cents < 0 else ""
    return f"{sign}{abs(cents) / 100:,.2f} {currency}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else fmt_cpu(value)


def _mem(value: float | None) -> str:
    return "-" if value is None else fmt_memory(value)


def _change(current: float | None, step: float | None, target: float | None, fmt: Any) -> str:
    """``cur -> new`` (``(step X)`` where the max step caps it); just ``cur`` if unchanged."""
    cur = "unset" if current is None else fmt(current)
    if step is None or (current is not None and fmt(step) == cur):
        return cur
    text = f"{cur} -> {fmt(target if target is not None else step)}"
    return f"{text} (step {fmt(step)})" if target is not None else text


def table_cells(row: Row) -> tuple[str, ...]:
    no_data = row.confidence is Confidence.NONE
    t_cpu, t_cpu_lim, t_mem, t_mem_lim = row.targets

    def cell(current: float | None, step: float | None, target: float | None, fmt: Any) -> str:
        if no_data:
            return f"{'unset' if current is None else fmt(current)} -> ?"
        return _change(current, step, target, fmt)

    return (
        row.workload_ref,
        row.container,
        cell(row.current_cpu, row.recommended_cpu, t_cpu, fmt_cpu),
        cell(row.current_cpu_limit, row.cpu_limit, t_cpu_lim, fmt_cpu),
        cell(row.current_memory, row.recommended_memory, t_mem, fmt_memory),
        cell(row.current_memory_limit, row.memory_limit, t_mem_lim, fmt_memory),
        row.confidence.value,
        money(row.monthly_delta, row.currency),
        row.reason,
    )


def footer_lines(t: Totals) -> list[str]:
    held = f"; {t.held} held by the gate, {HELD_NOTE}" if t.held else ""
    return [
        f"{t.workloads} workloads, {t.containers} containers"
        + (f" ({t.without_data} without enough data)" if t.without_data else "")
        + held,
        f"Total monthly savings:   {money(t.monthly_savings, t.currency).lstrip('+')}",
        f"Total monthly increases: {money(t.monthly_increase, t.currency).lstrip('+')}",
        f"Net monthly change:      {money(t.monthly_delta, t.currency)}"
        f" ({money(t.current_monthly, t.currency).lstrip('+')} -> "
        f"{money(t.recommended_monthly, t.currency).lstrip('+')})",
    ]


def render_table(
    recs: Sequence[Recommendation],
    prices: Prices = DEFAULT_PRICES,
    notes: Mapping[str, Sequence[str]] | None = None,
    held: Mapping[str, frozenset[str]] | None = None,
) -> str:
    """The table, the totals (without ``held`` changes), then ``notes`` (workload id -> lines)
    for listed workloads."""
    cells = [table_cells(r) for r in rows(recs, prices, notes)]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(TABLE_HEADERS)]
    numeric = {2, 3, 4, 5, 7}

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if i in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(TABLE_HEADERS), "  ".join("-" * w for w in widths)]
    out.extend(line(c) for c in cells)
    if not cells:
        out.append("(no workloads found)")
    out.append("")
    out.extend(footer_lines(totals(recs, prices, held)))
    listed = {r.workload_id for r in recs}
    noted = [(wid, n) for wid, ns in sorted((notes or {}).items()) if wid in listed for n in ns]
    if noted:
        out.extend(["", "Notes:"])
        out.extend(f"  {wid}: {n}" for wid, n in noted)
    return "\n".join(out) + "\n"


def documents(recs: Sequence[Recommendation]) -> list[dict[str, object]]:
    return [r.model_dump(mode="json") for r in ordered(recs)]


def render_json(recs: Sequence[Recommendation]) -> str:
    return json.dumps(documents(recs), indent=2, sort_keys=False) + "\n"


def render_yaml(recs: Sequence[Recommendation]) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(documents(recs), buf)
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def render_csv(recs: Sequence[Recommendation], prices: Prices = DEFAULT_PRICES) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows(recs, prices):
        writer.writerow(
            (
                r.namespace,
                r.kind,
                r.workload,
                r.container,
                r.replicas,
                r.confidence.value,
                _num(r.current_cpu),
                _num(r.recommended_cpu),
                _num(r.current_memory),
                _num(r.recommended_memory),
                _num(r.cpu_limit),
                _num(r.memory_limit),
                f"{r.monthly_delta:.6f}",
                r.currency,
                r.recommendation_id,
            )
        )
    return buf.getvalue()


def render(
    recs: Sequence[Recommendation],
    output: str,
    prices: Prices = DEFAULT_PRICES,
    notes: Mapping[str, Sequence[str]] | None = None,
    held: Mapping[str, frozenset[str]] | None = None,
) -> str:
    """Dispatch on ``output`` (one of :data:`FORMATS`); ``ValueError`` for anything else.

    ``notes`` only show in the table: json/yaml carry them in the containers' reasons.
    """
    if output == "table":
        return render_table(recs, prices, notes, held)
    if output == "json":
        return render_json(recs)
    if output == "yaml":
        return render_yaml(recs)
    if output == "csv":
        return render_csv(recs, prices)
    raise ValueError(f"unknown output format {output!r}: expected one of {', '.join(FORMATS)}")
