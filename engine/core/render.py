"""Render a list of :class:`Recommendation` as table, JSON, YAML or CSV text (pure).

The data shaping lives in :func:`rows` (one :class:`Row` per container, in workload order) and
:func:`totals`; the four renderers only format it:

* ``table`` — fixed-width text like KRR: workload, container, current and recommended cpu/memory
  requests, confidence and the monthly delta, then a footer with total savings and increases.
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

from ruamel.yaml import YAML

from engine.core.cost import DEFAULT_PRICES, Prices, savings
from engine.core.estimators import fmt_cpu, fmt_memory
from engine.core.model import Confidence, Recommendation

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
    "target_cpu_request",
    "target_memory_request",
)
TABLE_HEADERS = (
    "WORKLOAD",
    "CONTAINER",
    "CPU REQ",
    "CPU REC",
    "MEM REQ",
    "MEM REC",
    "CONFIDENCE",
    "MONTHLY DELTA",
)


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
    target_cpu: float | None = None  # the estimate, when the step (recommended_*) falls short
    target_memory: float | None = None

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
    target_monthly_savings: float | None = None  # when some step falls short of its target

    @property
    def monthly_delta(self) -> float:
        return self.recommended_monthly - self.current_monthly


def ordered(recs: Sequence[Recommendation]) -> list[Recommendation]:
    return sorted(recs, key=lambda r: (r.namespace, r.kind, r.name))


def rows(recs: Sequence[Recommendation], prices: Prices = DEFAULT_PRICES) -> list[Row]:
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
                    target_cpu=c.target.cpu_request if c.target else None,
                    target_memory=c.target.memory_request if c.target else None,
                )
            )
    return out


def totals(recs: Sequence[Recommendation], prices: Prices = DEFAULT_PRICES) -> Totals:
    containers = [c for r in recs for c in r.containers]
    return Totals(
        currency=recs[0].savings.currency if recs else prices.currency,
        monthly_savings=sum(r.savings.monthly_savings for r in recs),
        monthly_increase=sum(r.savings.monthly_increase for r in recs),
        current_monthly=sum(r.savings.current_monthly for r in recs),
        recommended_monthly=sum(r.savings.recommended_monthly for r in recs),
        workloads=len(recs),
        containers=len(containers),
        without_data=sum(1 for c in containers if c.confidence is Confidence.NONE),
        target_monthly_savings=(
            sum((r.target_savings or r.savings).monthly_savings for r in recs)
            if any(r.target_savings is not None for r in recs)
            else None
        ),
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


def _step(step: str, target: str | None) -> str:
    """The next step, and the target it steps toward when they differ."""
    return step if target is None or target == step else f"{step} (target {target})"


def table_cells(row: Row) -> tuple[str, ...]:
    return (
        row.workload_ref,
        row.container,
        _cpu(row.current_cpu),
        _step(_cpu(row.recommended_cpu), None if row.target_cpu is None else _cpu(row.target_cpu)),
        _mem(row.current_memory),
        _step(
            _mem(row.recommended_memory),
            None if row.target_memory is None else _mem(row.target_memory),
        ),
        row.confidence.value,
        money(row.monthly_delta, row.currency),
    )


def footer_lines(t: Totals) -> list[str]:
    return [
        f"{t.workloads} workloads, {t.containers} containers"
        + (f" ({t.without_data} without enough data)" if t.without_data else ""),
        f"Total monthly savings:   {money(t.monthly_savings, t.currency).lstrip('+')}"
        + (
            f" (next step; at target: {money(t.target_monthly_savings, t.currency).lstrip('+')})"
            if t.target_monthly_savings is not None
            else ""
        ),
        f"Total monthly increases: {money(t.monthly_increase, t.currency).lstrip('+')}",
        f"Net monthly change:      {money(t.monthly_delta, t.currency)}"
        f" ({money(t.current_monthly, t.currency).lstrip('+')} -> "
        f"{money(t.recommended_monthly, t.currency).lstrip('+')})",
    ]


def render_table(
    recs: Sequence[Recommendation],
    prices: Prices = DEFAULT_PRICES,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The table, the totals, then ``notes`` (workload id -> lines) for listed workloads."""
    cells = [table_cells(r) for r in rows(recs, prices)]
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
    out.extend(footer_lines(totals(recs, prices)))
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
                _num(r.target_cpu),
                _num(r.target_memory),
            )
        )
    return buf.getvalue()


def render(
    recs: Sequence[Recommendation],
    output: str,
    prices: Prices = DEFAULT_PRICES,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Dispatch on ``output`` (one of :data:`FORMATS`); ``ValueError`` for anything else.

    ``notes`` only show in the table: json/yaml carry them in the containers' reasons.
    """
    if output == "table":
        return render_table(recs, prices, notes)
    if output == "json":
        return render_json(recs)
    if output == "yaml":
        return render_yaml(recs)
    if output == "csv":
        return render_csv(recs, prices)
    raise ValueError(f"unknown output format {output!r}: expected one of {', '.join(FORMATS)}")
