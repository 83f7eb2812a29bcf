"""The cycle report (pure): JSON for machines, Markdown and HTML for people, an audit snapshot.

One report per cycle says what changed and why, what it saves, what got more expensive (risks
removed at a price), and which workloads were held or skipped by which guardrail.  Everything is
derived from the report's own data (no clock, no randomness), so rendering twice gives the same
bytes.  Object keys are deterministic: ``reports/YYYY/MM/DD/<cycle>/report.json`` and siblings,
dated by the report's ``generated_at`` (UTC).
"""

from __future__ import annotations

import heapq
import html
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidatorFunctionWrapHandler, field_validator

from engine.core.decision_log import DecisionLog
from engine.core.model import Action, CycleSummary, Decision, Execution
from engine.core.patches import Change, visible_changes
from engine.core.quantity import fmt_cpu, fmt_memory, parse_quantity
from engine.core.verification import Verification


class CycleReport(BaseModel):
    """Everything one apply cycle did, as handed over by the executor to the report writer."""

    model_config = ConfigDict(frozen=True)

    cycle_id: str
    generated_at: float
    # a list, or a DecisionLog (the reporter's form for a cycle in parts: kept as JSON, decoded
    # one decision at a time while the documents are rendered; engine/core/decision_log.py)
    decisions: Sequence[Decision]
    execution: Execution | None = None
    policies: dict[str, int] = {}  # policy id -> version in force
    # outcomes of earlier changes recorded since the previous cycle (docs/verification.md)
    verifications: list[Verification] = []

    @field_validator("decisions", mode="wrap")
    @classmethod
    def _log_as_is(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Sequence[Decision]:
        if isinstance(value, DecisionLog):
            return value  # validated when it was built; validating again would decode it all
        out: Sequence[Decision] = handler(value)
        return out

    @property
    def held(self) -> dict[str, str]:
        """Workload id -> why the executor held it (e.g. a human edited the bot's file)."""
        return dict(self.execution.held) if self.execution is not None else {}

    @classmethod
    def from_summary(
        cls,
        summary: CycleSummary,
        generated_at: float = 0.0,
        verifications: Sequence[Verification] = (),
        decisions: DecisionLog | None = None,
    ) -> CycleReport:
        """The report of a cycle as the executor summarised it (``kubefinops.cycles``), with the
        verification outcomes of earlier changes recorded since the previous cycle.

        Dated by the execution time, so a re-delivered summary gives the same object keys.
        ``decisions``: the cycle's decisions when the summary comes without them (a cycle joined
        from its parts by :func:`engine.core.cycles.join_cycle_log`).
        """
        return cls(
            cycle_id=summary.cycle,
            generated_at=summary.execution.executed_at or generated_at,
            decisions=summary.decisions if decisions is None else decisions,
            execution=summary.execution,
            policies=summary.policies,
            verifications=list(verifications),
        )


@dataclass(frozen=True)
class ReportObject:
    key: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class StreamedObject:
    """A report object made in chunks while it is stored (the audit snapshot of a large cycle).

    ``chunks(n)`` renders it again on every call, in chunks of at least ``n`` bytes but the last.
    """

    key: str
    content_type: str
    chunks: Callable[[int], Iterator[bytes]]

    def whole(self) -> ReportObject:
        return ReportObject(self.key, b"".join(self.chunks(1 << 20)), self.content_type)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_cycle(cycle_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", cycle_id).strip("-.") or "cycle"


def report_prefix(report: CycleReport) -> str:
    day = datetime.fromtimestamp(report.generated_at, UTC).strftime("%Y/%m/%d")
    return f"reports/{day}/{safe_cycle(report.cycle_id)}"


def report_keys(report: CycleReport) -> dict[str, str]:
    prefix = report_prefix(report)
    names = ("report.json", "report.md", "report.html", "audit.json")
    return {name: f"{prefix}/{name}" for name in names}


def _is_increase(change: Change) -> bool:
    if change.old is None:
        return False
    return parse_quantity(change.new) > parse_quantity(change.old)


def labelled_reasons(decision: Decision) -> list[str]:
    """Reasons of every container, de-duplicated: one shared by all containers stands alone, one
    specific to a container is prefixed with its name (``envoy: cpu request = …``)."""
    containers = decision.containers
    shared = set.intersection(*(set(c.reasons) for c in containers)) if containers else set()
    specific = {f"{c.name}: {r}" for c in containers for r in c.reasons if r not in shared}
    if len(containers) == 1:
        return sorted(shared)
    return sorted(shared) + sorted(specific)


def step_targets(d: Decision) -> list[str]:
    """``app cpu request: step 500m, target 115m`` for every field a step falls short on."""
    out = []
    for c in d.containers:
        t = c.target
        if t is None:
            continue
        for label, step, target, fmt in (
            ("cpu request", c.cpu_request, t.cpu_request, fmt_cpu),
            ("cpu limit", c.cpu_limit, t.cpu_limit, fmt_cpu),
            ("memory request", c.memory_request, t.memory_request, fmt_memory),
            ("memory limit", c.memory_limit, t.memory_limit, fmt_memory),
        ):
            if step is not None and target is not None and step != target:
                out.append(f"{c.name} {label}: step {fmt(step)}, target {fmt(target)}")
    return out


def _ordered(decisions: Sequence[Decision]) -> Sequence[Decision]:
    """The report's order, by workload then decision id (a log is re-ordered undecoded)."""
    if isinstance(decisions, DecisionLog):
        return decisions.sorted_by(lambda r: (r.workload_id, r.id))
    return sorted(decisions, key=lambda d: (d.workload_id, d.id))


def summarize(report: CycleReport) -> dict[str, Any]:
    """The machine-readable report (also the model the Markdown and HTML views render)."""
    ex = report.execution
    applied_ids = set(ex.workload_ids) if ex is not None and ex.applied else set()
    changed: list[dict[str, Any]] = []
    not_applied: list[dict[str, Any]] = []
    increases: list[dict[str, Any]] = []
    savings = increase = delta = at_target = 0.0
    for d in _ordered(report.decisions):
        reasons = labelled_reasons(d)
        if d.action == Action.APPLY and d.workload_id in applied_ids:
            changes = visible_changes(d)
            entry = {
                "workload": d.workload_id,
                "decision": d.id,
                "reason": d.reason,
                "reasons": reasons,
                "changes": [c.describe() for c in changes],
                "targets": step_targets(d),  # where this step falls short of the target
                "monthly_delta": round(d.savings.monthly_delta, 2),
                "monthly_delta_at_target": round((d.target_savings or d.savings).monthly_delta, 2),
            }
            changed.append(entry)
            at_target += (d.target_savings or d.savings).monthly_savings
            savings += d.savings.monthly_savings
            increase += d.savings.monthly_increase
            delta += d.savings.monthly_delta
            ups = [c.describe() for c in changes if _is_increase(c)]
            if ups or d.savings.monthly_increase > 0:
                increases.append(
                    {
                        "workload": d.workload_id,
                        "changes": ups,
                        "reason": d.reason,
                        "monthly_increase": round(d.savings.monthly_increase, 2),
                    }
                )
            continue
        if d.action == Action.APPLY:
            why = report.held.get(d.workload_id) or (
                f"not applied: execution {ex.outcome}" + (f" ({ex.detail})" if ex.detail else "")
                if ex is not None
                else "not applied: no execution"
            )
            not_applied.append(
                {
                    "workload": d.workload_id,
                    "decision": d.id,
                    "action": "held",
                    "guardrail": "executor",
                    "reason": why,
                }
            )
        else:
            not_applied.append(
                {
                    "workload": d.workload_id,
                    "decision": d.id,
                    "action": d.action.value,
                    "guardrail": d.guardrail,
                    "reason": d.reason,
                }
            )
    return {
        "cycle": report.cycle_id,
        "generated_at": _iso(report.generated_at),
        "currency": next((d.savings.currency for d in report.decisions), "USD"),
        "totals": {
            "decisions": len(report.decisions),
            "changed": len(changed),
            "not_applied": len(not_applied),
            "monthly_savings": round(savings, 2),  # of the steps applied
            "monthly_savings_at_target": round(at_target, 2),  # once every step reaches its target
            "monthly_increase": round(increase, 2),
            "monthly_delta": round(delta, 2),
        },
        "execution": None
        if ex is None
        else {
            "outcome": ex.outcome,
            "commit_sha": ex.commit_sha,
            "branch": ex.branch,
            "detail": ex.detail,
        },
        "changed": changed,
        "increases": increases,
        "not_applied": not_applied,
        "verifications": [verification_row(v) for v in report.verifications],
    }


def verification_row(v: Verification) -> dict[str, Any]:
    return {
        "workload": v.workload_id,
        "verification": v.id,
        "outcome": v.phase.value,
        "cause": v.cause,
        "commit_sha": v.commit_sha,
        "revert_sha": v.revert_sha,
        "changes": v.changes(),
        "detail": v.detail,
        "evidence": [e.line() for e in v.evidence],
        "penalty_until": None if v.penalty_until is None else _iso(v.penalty_until),
    }


def _verification_rows(s: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["workload"],
            r["outcome"] + (f" ({r['cause']})" if r["cause"] else ""),
            r["changes"],
            "; ".join([r["detail"], *r["evidence"]]),
            (r["revert_sha"] or "")[:12],
        ]
        for r in s["verifications"]
    ]


_VERIFICATION_HEADERS = ["workload", "outcome", "change", "evidence", "revert commit"]


# Indented, keys sorted at every level, newline-terminated: what ``json.dumps(indent=2,
# sort_keys=True)`` wrote before, built in C.  The audit snapshot of a 10,000-decision cycle is
# ~43 MB of indented JSON: the stdlib's pure-Python indenting encoder held ~277 MiB at its peak
# building it (tracemalloc), the worker's largest transient allocation of the cycle; orjson
# writes the bytes directly.  Differences, all still JSON: non-ASCII as UTF-8 instead of
# ``\u`` escapes, exponents as ``1e-5`` instead of ``1e-05``, NaN/Infinity as ``null``.
_JSON_OPTIONS = (
    orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
)


def _json_bytes(doc: Any) -> bytes:
    return orjson.dumps(doc, default=str, option=_JSON_OPTIONS)


def render_json(report: CycleReport) -> str:
    return _json_bytes(summarize(report)).decode()


def audit_snapshot(report: CycleReport) -> str:
    return audit_bytes(report).decode()


def audit_bytes(report: CycleReport) -> bytes:
    """Everything needed to reconstruct why the cycle did what it did."""
    # Written into one growing buffer: ``BytesIO.getvalue()`` hands over its buffer without a
    # copy, so the document exists once at its peak (joining a list of pieces held both: +42 MiB
    # at 10,000 decisions, the worker's largest transient allocation of the cycle).
    out = io.BytesIO()
    for piece in _audit_pieces(report):
        out.write(piece)
    return out.getvalue()


def audit_chunks(report: CycleReport, size: int) -> Iterator[bytes]:
    """:func:`audit_bytes` in chunks of at least ``size`` bytes (the last one may be smaller, and
    is the only one when the whole is smaller), made as they are asked for: a writer that stores
    each chunk and lets it go holds one chunk of the document, not the document (~44 MiB at
    10,000 applied decisions)."""
    out = io.BytesIO()
    for piece in _audit_pieces(report):
        out.write(piece)
        if out.tell() >= size:
            yield out.getvalue()
            out = io.BytesIO()
    if out.tell():
        yield out.getvalue()


def _audit_pieces(report: CycleReport) -> Iterator[bytes]:
    decisions = _ordered(report.decisions)
    if isinstance(decisions, DecisionLog):  # from the refs, and the dicts from the JSON as is
        versions = {
            (r.policy_id, r.policy_version) for r in decisions.refs if r.policy_id is not None
        }
        docs: Iterable[dict[str, Any]] = decisions.json_docs()
    else:
        versions = {(d.policy_id, d.policy_version) for d in decisions if d.policy_id is not None}
        docs = (d.model_dump(mode="json") for d in decisions)
    policies = sorted(
        {f"{p}@{v}" for p, v in versions} | {f"{k}@{v}" for k, v in report.policies.items()}
    )
    ex = report.execution
    doc = {
        "cycle": report.cycle_id,
        "generated_at": _iso(report.generated_at),
        "policy_versions": policies,
        "decisions": _SPLICE if decisions else [],
        "held": dict(sorted(report.held.items())),
        "execution": None if ex is None else ex.model_dump(mode="json"),
        "commit_sha": None if ex is None else ex.commit_sha,
    }
    if not decisions:
        yield _json_bytes(doc)
        return
    # The decisions rendered one at a time and spliced into their place: the same bytes as
    # rendering ``[d.model_dump(mode="json") for d in decisions]`` in the document (items at
    # depth 1 of an object: four more spaces on every line), without ~7.7 KB of dicts per
    # decision alive at once — 77 MiB at 10,000 decisions, at the worker's peak of the cycle
    # (tests/unit/test_report.py).  The marker is found on its key's line: a raw newline is
    # structural in JSON (escaped inside strings), whatever the strings of the document hold.
    key = b'\n  "decisions": '
    head, sep, tail = _json_bytes(doc).partition(key + _json_bytes(_SPLICE)[:-1])
    assert sep, "splice marker not rendered"
    yield head + key + b"[\n"
    for i, one in enumerate(docs):
        yield (b",\n    " if i else b"    ") + _json_bytes(one)[:-1].replace(b"\n", b"\n    ")
    yield b"\n  ]" + tail


# stands for the decisions while the rest of the audit document is rendered (see audit_bytes)
_SPLICE = "\u0000kubefinops-audit-decisions\u0000"


def _md(text: object) -> str:
    """Escape a value for a Markdown table cell."""
    return re.sub(r"([\\`*_{}\[\]<>|])", r"\\\1", " ".join(str(text).split()))


def _money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def render_markdown(report: CycleReport, s: dict[str, Any] | None = None) -> str:
    """The report for people, as Markdown (``s``: :func:`summarize` of it, if already made)."""
    return "\n".join(_markdown_lines(report, s)) + "\n"


def _markdown_lines(report: CycleReport, s: dict[str, Any] | None = None) -> Iterator[str]:
    """The Markdown report's lines, one at a time (joined with newlines, one at the end)."""
    s = summarize(report) if s is None else s
    t, cur = s["totals"], s["currency"]
    ex = s["execution"] or {}
    yield from [
        f"# KubeFinOps cycle report {_md(s['cycle'])}",
        "",
        f"Generated {s['generated_at']} · {t['changed']} changed · {t['not_applied']} "
        f"held or skipped · commit `{ex.get('commit_sha') or 'none'}` "
        f"({_md(ex.get('outcome', 'no execution'))})",
        "",
        "## Savings",
        "",
        f"- Monthly savings: **{_money(t['monthly_savings'], cur)}** (this step)"
        + (
            f"; at target: {_money(t['monthly_savings_at_target'], cur)}"
            if t["monthly_savings_at_target"] != t["monthly_savings"]
            else ""
        ),
        f"- Monthly increase (risks removed): {_money(t['monthly_increase'], cur)}",
        f"- Net monthly delta: {_money(t['monthly_delta'], cur)}",
        "",
        "## What changed and why",
        "",
    ]
    if s["changed"]:
        yield from ["| workload | changes | why | monthly delta |", "|---|---|---|---|"]
        for c in s["changed"]:
            why = "; ".join([c["reason"], *c["reasons"]])
            yield (
                f"| {_md(c['workload'])} | {_md('; '.join([*c['changes'], *c['targets']]))} | "
                f"{_md(why)} | {_money(c['monthly_delta'], cur)} |"
            )
    else:
        yield "Nothing changed this cycle."
    yield from ["", "## Risks (increases)", ""]
    if s["increases"]:
        for r in s["increases"]:
            yield (
                f"- {_md(r['workload'])}: {_md('; '.join(r['changes']) or 'cost up')} "
                f"(+{_money(r['monthly_increase'], cur)}): {_md(r['reason'])}"
            )
    else:
        yield "No increases."
    yield from ["", "## Held and skipped", ""]
    if s["not_applied"]:
        yield from ["| workload | action | guardrail | reason |", "|---|---|---|---|"]
        for h in s["not_applied"]:
            yield (
                f"| {_md(h['workload'])} | {_md(h['action'])} | "
                f"{_md(h['guardrail'])} | {_md(h['reason'])} |"
            )
    else:
        yield "Nothing held or skipped."
    if s["verifications"]:
        yield from ["", "## Verified apply: earlier changes", ""]
        yield from ["| " + " | ".join(_VERIFICATION_HEADERS) + " |", "|---|---|---|---|---|"]
        yield from ("| " + " | ".join(_md(c) for c in row) + " |" for row in _verification_rows(s))


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: list[str], rows: Iterable[list[str]]) -> str:
    return "".join(_table_parts(headers, rows))


def _table_parts(headers: list[str], rows: Iterable[list[str]]) -> Iterator[str]:
    head = "".join(f"<th>{_h(x)}</th>" for x in headers)
    yield f"<table><thead><tr>{head}</tr></thead><tbody>"
    for row in rows:
        yield "<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>"
    yield "</tbody></table>"


MAX_CHARTED = 20  # changed workloads drawn (largest |monthly delta| first); the table lists all
_QUANTILES = ("p50", "p90", "p95", "p99", "max")


def chart_data(report: CycleReport) -> list[dict[str, Any]]:
    """Per applied workload and container, per resource: usage over the history (P50…max)
    against the old and the new request and limit — what the report's charts draw."""
    ex = report.execution
    applied = set(ex.workload_ids) if ex is not None and ex.applied else set()
    candidates: Iterable[Decision] = report.decisions
    if isinstance(candidates, DecisionLog):  # decode only the applied ones
        candidates = candidates.where(lambda r: r.action is Action.APPLY)
    chosen = heapq.nsmallest(  # the same as sorted()[:MAX_CHARTED], holding MAX_CHARTED at once
        MAX_CHARTED,
        (d for d in candidates if d.action == Action.APPLY and d.workload_id in applied),
        key=lambda d: (-abs(d.savings.monthly_delta), d.workload_id),
    )
    out = []
    for d in chosen:
        for c in d.containers:
            for res in ("cpu", "memory"):
                usage = c.usage.get(res) or {}
                if not usage.get("count"):
                    continue
                out.append(
                    {
                        "workload": d.workload_id,
                        "container": c.name,
                        "resource": res,
                        "usage": [usage.get(q) for q in _QUANTILES],
                        "old_request": getattr(c.current.requests, res),
                        "old_limit": getattr(c.current.limits, res),
                        "new_request": c.cpu_request if res == "cpu" else c.memory_request,
                        "new_limit": c.cpu_limit if res == "cpu" else c.memory_limit,
                    }
                )
    return out


_CHART_SCRIPT = r"""
(function () {
  const DATA = JSON.parse(document.getElementById('chart-data').textContent);
  const host = document.getElementById('charts');
  const Q = ['P50', 'P90', 'P95', 'P99', 'max'];
  function fmt(res, v) {
    if (v == null) return '-';
    if (res === 'cpu') return v < 1 ? Math.round(v * 1000) + 'm' : (+v.toFixed(3)) + '';
    const mi = v / 1048576;
    return mi >= 1024 ? (+(mi / 1024).toFixed(2)) + 'Gi' : Math.round(mi) + 'Mi';
  }
  DATA.forEach(function (c, i) {
    const div = document.createElement('div');
    div.className = 'chart';
    div.id = 'chart-' + i;
    host.appendChild(div);
    const flat = function (v) { return Q.map(function () { return v == null ? null : v; }); };
    const series = [
      ['usage', '#d64545', c.usage, null],
      ['old request', '#829ab1', flat(c.old_request), [6, 4]],
      ['new request', '#1a7f37', flat(c.new_request), null],
      ['old limit', '#829ab1', flat(c.old_limit), [2, 4]],
      ['new limit', '#1a7f37', flat(c.new_limit), [2, 4]],
    ];
    new uPlot({
      title: c.workload + ' / ' + c.container + ' — ' + c.resource, width: 520, height: 220,
      scales: {x: {time: false}},
      axes: [{values: function (u, vals) { return vals.map(function (v) { return Q[v] || ''; }); }},
             {size: 64, values: function (u, vals) {
               return vals.map(function (v) { return fmt(c.resource, v); });
             }}],
      series: [{label: 'usage over the history'}].concat(series.map(function (s) {
        return {label: s[0], stroke: s[1], width: 2, dash: s[3] || undefined,
                value: function (u, v) { return fmt(c.resource, v); }};
      })),
    }, [[0, 1, 2, 3, 4]].concat(series.map(function (s) { return s[2]; })), div);
    div.dataset.series = series.map(function (s) { return s[0]; }).join('|');
  });
})();
"""


def _charts_html(report: CycleReport) -> str:
    data = chart_data(report)
    if not data:
        return ""
    from engine.static import UPLOT_CSS, UPLOT_JS, asset

    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return (
        f"<h2>Usage vs old and new values ({len(data)} charts)</h2>\n"
        f"<style>{asset(UPLOT_CSS)}\n"
        ".chart { display: inline-block; margin: 0 1rem 1rem 0; }</style>\n"
        f'<div id="charts"></div>\n'
        f'<script type="application/json" id="chart-data">{payload}</script>\n'
        f"<script>{asset(UPLOT_JS)}</script>\n<script>{_CHART_SCRIPT}</script>\n"
    )


def render_html(report: CycleReport, s: dict[str, Any] | None = None) -> str:
    """The report for people, as HTML with charts (``s``: :func:`summarize` of it, if made)."""
    return "".join(_html_parts(report, s))


def _html_parts(report: CycleReport, s: dict[str, Any] | None = None) -> Iterator[str]:
    """The HTML report in pieces (a table row each), so that it can be encoded as it is made:
    joined whole, the tables of 10,000 changed workloads were ~33 MiB at once, more than twice
    the bytes they encode to (docs/benchmarks.md)."""
    s = summarize(report) if s is None else s
    t, cur = s["totals"], s["currency"]
    ex = s["execution"] or {}
    changed = _table_parts(
        ["workload", "changes", "why", "monthly delta"],
        (
            [
                c["workload"],
                "; ".join([*c["changes"], *c["targets"]]),
                "; ".join([c["reason"], *c["reasons"]]),
                _money(c["monthly_delta"], cur),
            ]
            for c in s["changed"]
        ),
    )
    risks = _table_parts(
        ["workload", "increases", "monthly increase", "why"],
        (
            [
                r["workload"],
                "; ".join(r["changes"]) or "cost up",
                _money(r["monthly_increase"], cur),
                r["reason"],
            ]
            for r in s["increases"]
        ),
    )
    held = _table_parts(
        ["workload", "action", "guardrail", "reason"],
        ([h["workload"], h["action"], h["guardrail"], h["reason"]] for h in s["not_applied"]),
    )
    verified = (
        f"<h2>Verified apply: earlier changes ({len(s['verifications'])})</h2>\n"
        f'<div id="verifications">{_table(_VERIFICATION_HEADERS, _verification_rows(s))}</div>\n'
        if s["verifications"]
        else ""
    )
    title = f"KubeFinOps cycle report {s['cycle']}"
    commit = _h(ex.get("commit_sha") or "none")
    saved = _h(_money(t["monthly_savings"], cur))
    yield f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_h(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1f2933; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #cbd2d9; padding: 0.3rem 0.6rem; text-align: left; }}
th {{ background: #f0f4f8; }}
.savings {{ font-size: 1.3rem; }}
</style>
</head>
<body>
<h1 id="title">{_h(title)}</h1>
<p>Generated {_h(s["generated_at"])} · commit <code id="commit">{commit}</code>
({_h(ex.get("outcome", "no execution"))})</p>
<h2>Savings</h2>
<p class="savings">Monthly savings: <strong id="monthly-savings">{saved}</strong></p>
<p>Monthly increase (risks removed): {_h(_money(t["monthly_increase"], cur))} ·
net monthly delta: {_h(_money(t["monthly_delta"], cur))}</p>
<h2>What changed and why ({t["changed"]})</h2>
<div id="changed">"""
    yield from changed
    yield '</div>\n<h2>Risks (increases)</h2>\n<div id="increases">'
    yield from risks
    yield f'</div>\n<h2>Held and skipped ({t["not_applied"]})</h2>\n<div id="held">'
    yield from held
    yield f"</div>\n{verified}{_charts_html(report)}</body>\n</html>\n"


def render_html_bytes(report: CycleReport, s: dict[str, Any] | None = None) -> bytes:
    """:func:`render_html` encoded as UTF-8, one piece at a time (the same bytes)."""
    return _encoded(_html_parts(report, s))


def render_markdown_bytes(report: CycleReport, s: dict[str, Any] | None = None) -> bytes:
    """:func:`render_markdown` encoded as UTF-8, one line at a time (the same bytes)."""
    return _encoded(line + "\n" for line in _markdown_lines(report, s))


def _encoded(pieces: Iterable[str]) -> bytes:
    out = io.BytesIO()  # getvalue() hands its buffer over without a copy
    for piece in pieces:
        out.write(piece.encode())
    return out.getvalue()


def report_objects(report: CycleReport) -> Iterator[ReportObject | StreamedObject]:
    """The four objects of a cycle report, in a fixed order, each rendered when it is asked for,
    the audit as a :class:`StreamedObject` (made while it is stored).

    A caller that stores each object and lets it go before asking for the next holds one at a
    time: with 10,000 applied decisions the four are ~80 MiB together (the audit alone ~44 MiB)
    on top of the summary the three views share, and holding them all at once was the worker's
    peak of the cycle (docs/benchmarks.md).  The summary goes with the views, before the audit,
    which does not use it.
    """
    keys = report_keys(report)
    yield from _views(report, keys)
    yield StreamedObject(keys["audit.json"], "application/json", partial(audit_chunks, report))


def documents(report: CycleReport) -> list[ReportObject]:
    """The four objects of a cycle report, in a fixed order, all at once."""
    keys = report_keys(report)
    return [
        *_views(report, keys),
        ReportObject(keys["audit.json"], audit_bytes(report), "application/json"),
    ]


def _views(report: CycleReport, keys: dict[str, str]) -> Iterator[ReportObject]:
    """report.json, .md and .html, one at a time, from one summary (a pass over a log decodes
    every decision) that is let go with the generator."""
    s = summarize(report)
    yield ReportObject(keys["report.json"], _json_bytes(s), "application/json")
    yield ReportObject(
        keys["report.md"], render_markdown_bytes(report, s), "text/markdown; charset=utf-8"
    )
    yield ReportObject(
        keys["report.html"], render_html_bytes(report, s), "text/html; charset=utf-8"
    )
