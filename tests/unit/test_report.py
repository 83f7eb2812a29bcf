"""Pure cycle report: keys, the JSON summary, Markdown/HTML escaping, the audit snapshot."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from engine.core import report as rp
from engine.core.model import (
    Action,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Execution,
    Mode,
    ResourcePair,
    Savings,
    Targets,
)

MIB = 1024 * 1024
T0 = 1_795_000_000.0  # 2026-11-18T...Z


def dec(
    name: str,
    action: Action = Action.APPLY,
    *,
    cpu: float | None = 0.25,
    mem_mib: int | None = None,
    delta: float = -4.0,
    reason: str = "usage low",
    guardrail: str = "none",
) -> Decision:
    current = ContainerSpec(name="app", requests=ResourcePair(cpu=0.5, memory=512 * MIB))
    rec = ContainerRecommendation(
        name="app",
        current=current,
        cpu_request=cpu,
        memory_request=None if mem_mib is None else mem_mib * MIB,
        reasons=["P95 cpu 0.2 cores"],
    )
    return Decision(
        id=f"d-{name}",
        recommendation_id=f"r-{name}",
        workload_id=f"smarthealth/Deployment/{name}",
        namespace="smarthealth",
        kind="Deployment",
        name=name,
        action=action,
        guardrail=guardrail,
        reason=reason,
        mode=Mode.AUTOPILOT,
        policy_id="default",
        policy_version=2,
        containers=[rec],
        savings=Savings(
            monthly_delta=delta, monthly_savings=max(0.0, -delta), monthly_increase=max(0.0, delta)
        ),
        decided_at=T0,
    )


def make(
    decisions: list[Decision],
    applied: list[str],
    *,
    outcome: str = "pushed",
    held: dict[str, str] | None = None,
    cycle: str = "cycle-7",
) -> rp.CycleReport:
    ex = Execution(
        cycle=cycle,
        workload_ids=applied,
        decision_ids=[],
        outcome=outcome,
        commit_sha="c0ffee" * 6 + "beef",
        branch="main",
        held=held or {},
        executed_at=T0,
    )
    return rp.CycleReport(cycle_id=cycle, generated_at=T0, decisions=decisions, execution=ex)


def test_keys_are_deterministic_and_dated_utc() -> None:
    report = make([], [])
    assert rp.report_keys(report) == {
        "report.json": "reports/2026/11/18/cycle-7/report.json",
        "report.md": "reports/2026/11/18/cycle-7/report.md",
        "report.html": "reports/2026/11/18/cycle-7/report.html",
        "audit.json": "reports/2026/11/18/cycle-7/audit.json",
    }
    assert [o.content_type for o in rp.documents(report)] == [
        "application/json",
        "text/markdown; charset=utf-8",
        "text/html; charset=utf-8",
        "application/json",
    ]


def test_summary_splits_changed_increases_and_not_applied() -> None:
    decisions = [
        dec("patient-api", delta=-6.5),
        dec("records-service", cpu=None, mem_mib=768, delta=1.5, reason="OOM-killed twice"),
        dec("billing", Action.HOLD, guardrail="cooldown", reason="changed 2 h ago"),
        dec("frontend"),  # apply, but the executor held it
    ]
    s = rp.summarize(
        make(
            decisions,
            ["smarthealth/Deployment/patient-api", "smarthealth/Deployment/records-service"],
            held={"smarthealth/Deployment/frontend": "a human edited the patch"},
        )
    )
    assert s["totals"] == {
        "decisions": 4,
        "changed": 2,
        "not_applied": 2,
        "monthly_savings": 6.5,
        "monthly_savings_at_target": 6.5,
        "monthly_increase": 1.5,
        "monthly_delta": -5.0,
    }
    assert [c["workload"] for c in s["changed"]] == [
        "smarthealth/Deployment/patient-api",
        "smarthealth/Deployment/records-service",
    ]
    assert s["changed"][0]["changes"] == ["app requests.cpu 500m -> 250m"]
    assert s["increases"] == [
        {
            "workload": "smarthealth/Deployment/records-service",
            "changes": ["app requests.memory 512Mi -> 768Mi"],
            "reason": "OOM-killed twice",
            "monthly_increase": 1.5,
        }
    ]
    held = {h["workload"]: h for h in s["not_applied"]}
    assert held["smarthealth/Deployment/billing"]["guardrail"] == "cooldown"
    assert held["smarthealth/Deployment/frontend"]["reason"] == "a human edited the patch"


def test_failed_execution_counts_nothing_as_changed() -> None:
    s = rp.summarize(
        make([dec("patient-api")], ["smarthealth/Deployment/patient-api"], outcome="failed")
    )
    assert s["totals"]["changed"] == 0 and s["totals"]["monthly_savings"] == 0
    assert s["not_applied"][0]["reason"].startswith("not applied: execution failed")


def test_rendering_is_deterministic() -> None:
    decisions = [dec("b"), dec("a")]
    one = [o.body for o in rp.documents(make(decisions, ["smarthealth/Deployment/a"]))]
    two = [
        o.body for o in rp.documents(make(list(reversed(decisions)), ["smarthealth/Deployment/a"]))
    ]
    assert one == two


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_escapes_untrusted_text() -> None:
    evil = "<script>alert('x')</script> & \"quotes\""
    report = make([dec("patient-api", reason=evil)], ["smarthealth/Deployment/patient-api"])
    html = rp.render_html(report)
    parser = _Text()
    parser.feed(html)
    assert "script" not in parser.tags
    assert evil in "".join(parser.text)  # shown to the reader verbatim, as text
    assert "&lt;script&gt;" in html


def test_markdown_escapes_table_breakers() -> None:
    report = make(
        [dec("patient-api", reason="a | b <img src=x>")], ["smarthealth/Deployment/patient-api"]
    )
    md = rp.render_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| smarthealth"))
    assert row.count(" | ") == 3  # the pipe in the reason did not add a column
    assert "\\<img src=x\\>" in row
    assert "Monthly savings: **4.00 USD**" in md


def test_audit_snapshot_has_policies_decisions_and_sha() -> None:
    report = make([dec("patient-api")], ["smarthealth/Deployment/patient-api"])
    audit = json.loads(rp.audit_snapshot(report))
    assert audit["policy_versions"] == ["default@2"]
    assert audit["commit_sha"] == report.execution.commit_sha  # type: ignore[union-attr]
    assert audit["decisions"][0]["id"] == "d-patient-api"
    assert audit["decisions"][0]["containers"][0]["cpu_request"] == 0.25


def test_json_documents_keep_the_indented_sorted_layout_with_non_ascii_as_utf8() -> None:
    # rendered by orjson now (the stdlib's indenting encoder peaked at ~277 MiB for the audit
    # of a 10,000-decision cycle): the layout json.dumps(indent=2, sort_keys=True) gave
    report = make(
        [dec("patient-api", reason="pic \u00e9t\u00e9 \u2014 m\u00e9moire"), dec("billing")],
        ["smarthealth/Deployment/patient-api"],
    )
    for text in (rp.audit_snapshot(report), rp.render_json(report)):
        doc = json.loads(text)
        assert text == json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert "\u00e9t\u00e9" in text  # UTF-8, not \u escapes
    objects = {o.key.rsplit("/", 1)[-1]: o.body for o in rp.documents(report)}
    assert objects["audit.json"] == rp.audit_snapshot(report).encode()
    assert objects["report.json"] == rp.render_json(report).encode()


def test_audit_decisions_spliced_one_at_a_time_are_the_whole_document_rendered_at_once() -> None:
    import orjson

    opts = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    marker = rp._SPLICE
    for names in ([], ["a"], ["b", "a", "c"]):
        report = make(
            [dec(n, reason=f"\u00e9t\u00e9 {marker} \n  ") for n in names], ["x/Deployment/y"]
        )
        report = report.model_copy(update={"cycle_id": f"c-{len(names)}"})
        doc = json.loads(rp.audit_snapshot(report))
        assert [d["workload_id"] for d in doc["decisions"]] == sorted(
            d.workload_id for d in report.decisions
        )
        assert rp.audit_bytes(report) == orjson.dumps(doc, option=opts)


def test_audit_in_chunks_is_the_audit_cut_where_a_chunk_reaches_its_size() -> None:
    report = make([dec(n) for n in "abcdefgh"], ["smarthealth/Deployment/a"])
    whole = rp.audit_bytes(report)
    for size in (1, 500, 3000, len(whole) - 1, len(whole), 10 * len(whole)):
        chunks = list(rp.audit_chunks(report, size))
        assert b"".join(chunks) == whole
        assert all(len(c) >= size for c in chunks[:-1]) and all(chunks)
        assert len(chunks) == 1 or size < len(whole)
    assert len(list(rp.audit_chunks(report, 3000))) > 2  # one decision is ~1.3 KB


def test_documents_one_at_a_time_are_the_documents_with_the_audit_streamed() -> None:
    """The reporter stores the objects one at a time, the audit as it is made: the same keys,
    types and bytes as the four documents rendered at once (markdown and HTML are encoded a
    line or a table row at a time)."""
    decisions = [dec("b"), dec("a", reason="été | <b>")]
    report = make(decisions, ["smarthealth/Deployment/a"])
    whole = rp.documents(report)
    assert whole[1].body == rp.render_markdown(report).encode()
    assert whole[2].body == rp.render_html(report).encode()
    streamed = list(rp.report_objects(report))
    assert [type(o) for o in streamed] == [rp.ReportObject] * 3 + [rp.StreamedObject]
    assert [o.key for o in streamed] == [o.key for o in whole]
    assert streamed[:3] == whole[:3]
    audit = streamed[3]
    assert isinstance(audit, rp.StreamedObject) and audit.whole() == whole[3]
    assert b"".join(audit.chunks(100)) == whole[3].body == rp.audit_bytes(report)


def test_report_from_summary_takes_held_workloads_from_the_execution_data() -> None:
    from engine.core.model import CycleSummary

    why = "a human changed bot-owned kubefinops/deployment-frontend.yaml (not overwritten)"
    ex = make([dec("frontend")], []).execution
    assert ex is not None
    ex = ex.model_copy(update={"held": {"smarthealth/Deployment/frontend": why}, "detail": ""})
    summary = CycleSummary(cycle="c-9", decisions=[dec("frontend")], execution=ex)
    report = rp.CycleReport.from_summary(summary, generated_at=1.0)
    assert report.generated_at == ex.executed_at  # dated by the execution: replays same keys
    row = rp.summarize(report)["not_applied"][0]
    assert (row["workload"], row["action"], row["reason"]) == (
        "smarthealth/Deployment/frontend",
        "held",
        why,
    )
    assert json.loads(rp.audit_snapshot(report))["held"] == {"smarthealth/Deployment/frontend": why}


def test_reasons_name_their_container_unless_shared() -> None:
    from engine.core.model import Action, ContainerRecommendation, ContainerSpec, Decision, Mode
    from engine.core.report import labelled_reasons

    def cont(name: str, *reasons: str) -> ContainerRecommendation:
        return ContainerRecommendation(
            name=name,
            current=ContainerSpec(name=name),
            reasons=["policy p is in autopilot mode", *reasons],
        )

    base = {
        "id": "d",
        "recommendation_id": "r",
        "workload_id": "ns/Deployment/a",
        "namespace": "ns",
        "kind": "Deployment",
        "name": "a",
        "action": Action.APPLY,
        "guardrail": "autopilot",
        "reason": "ok",
        "mode": Mode.AUTOPILOT,
        "decided_at": 0.0,
    }
    two = Decision(
        **base, containers=[cont("app", "cpu request = 188m"), cont("envoy", "cpu request = 5m")]
    )
    assert labelled_reasons(two) == [
        "policy p is in autopilot mode",
        "app: cpu request = 188m",
        "envoy: cpu request = 5m",
    ]
    one = Decision(**base, containers=[cont("app", "cpu request = 188m")])
    assert labelled_reasons(one) == ["cpu request = 188m", "policy p is in autopilot mode"]


def test_a_step_short_of_its_target_shows_both_and_both_savings() -> None:
    d = dec("stepper", cpu=0.25, delta=-4.0)
    c = d.containers[0].model_copy(update={"target": Targets(cpu_request=0.1)})
    d = d.model_copy(
        update={
            "containers": [c],
            "target_savings": Savings(monthly_delta=-6.0, monthly_savings=6.0),
        }
    )
    report = make(
        [d, dec("plain", delta=-1.0)],
        ["smarthealth/Deployment/stepper", "smarthealth/Deployment/plain"],
    )
    s = rp.summarize(report)
    (stepper,) = [c for c in s["changed"] if c["workload"].endswith("stepper")]
    assert stepper["targets"] == ["app cpu request: step 250m, target 100m"]
    assert (stepper["monthly_delta"], stepper["monthly_delta_at_target"]) == (-4.0, -6.0)
    assert (s["totals"]["monthly_savings"], s["totals"]["monthly_savings_at_target"]) == (5.0, 7.0)
    md = rp.render_markdown(report)
    assert "at target: 7.00 USD" in md and "step 250m, target 100m" in md
    assert "step 250m, target 100m" in rp.render_html(report)


def test_html_charts_usage_against_old_and_new_values_of_applied_workloads() -> None:
    usage = {"p50": 0.1, "p90": 0.15, "p95": 0.2, "p99": 0.3, "max": 0.4, "count": 900.0}
    a = dec("a", delta=-9.0)
    a = a.model_copy(
        update={"containers": [a.containers[0].model_copy(update={"usage": {"cpu": usage}})]}
    )
    skipped = dec("b", Action.SKIP)
    data = rp.chart_data(make([a, skipped], ["smarthealth/Deployment/a"]))
    assert data == [
        {
            "workload": "smarthealth/Deployment/a",
            "container": "app",
            "resource": "cpu",  # memory has no usage in this decision: no chart
            "usage": [0.1, 0.15, 0.2, 0.3, 0.4],
            "old_request": 0.5,
            "old_limit": None,
            "new_request": 0.25,
            "new_limit": None,
        }
    ]
    page = rp.render_html(make([a, skipped], ["smarthealth/Deployment/a"]))
    assert '<div id="charts"></div>' in page and "uPlot" in page
    assert "<script src=" not in page  # the library is inlined, no CDN
    assert rp.chart_data(make([a], [], outcome="failed")) == []  # nothing applied: no charts
    assert 'id="charts"' not in rp.render_html(make([a], [], outcome="failed"))
