"""A cycle's decisions held as JSON (engine/core/decision_log.py): read back equal, and the
report rendered from a log is byte for byte the report rendered from the parsed list."""

from __future__ import annotations

import orjson
import pytest

from engine.core import report as rp
from engine.core.decision_log import DecisionLog, as_log
from engine.core.model import Action, Decision, Execution
from tests.unit.test_report import T0, dec


def decisions(n: int) -> list[Decision]:
    out = []
    for i in range(n):
        action = (Action.APPLY, Action.HOLD, Action.SKIP)[i % 3]
        # deltas with ties (the charts' order), usage to chart, uneven policies, non-ASCII text
        d = dec(f"svc-{(i * 7919) % n:04d}", action, guardrail="min-change", delta=-(i % 7.0))
        usage = {"p50": 0.1, "p90": 0.15, "p95": 0.2, "p99": 0.3, "max": 0.4 + i, "count": 9.0}
        c = d.containers[0].model_copy(update={"usage": {"cpu": usage}})
        d = d.model_copy(
            update={"containers": [c], "policy_version": i % 4, "reason": f"raison n° {i} — ok"}
        )
        out.append(Decision.model_validate(d.model_dump()))
    return out


def test_a_log_reads_back_the_decisions_it_was_given() -> None:
    ds = decisions(50)
    log = DecisionLog(ds)
    assert len(log) == 50 and list(log) == ds and log == ds
    assert log[7] == ds[7] and log[-1] == ds[-1]
    assert list(log[10:20]) == ds[10:20] and isinstance(log[10:20], DecisionLog)
    assert [r.id for r in log.refs] == [d.id for d in ds]
    assert [(r.action, r.policy_version) for r in log.refs] == [
        (d.action, d.policy_version) for d in ds
    ]
    assert list(log.json_docs()) == [d.model_dump(mode="json") for d in ds]
    assert log.nbytes == sum(len(d.model_dump_json().encode()) for d in ds)
    by_wid = log.sorted_by(lambda r: r.workload_id)
    assert list(by_wid) == sorted(ds, key=lambda d: d.workload_id)
    assert list(log.where(lambda r: r.action is Action.HOLD)) == [
        d for d in ds if d.action is Action.HOLD
    ]
    assert as_log(log) is log and as_log(ds) == log
    with pytest.raises(IndexError):
        log[50]


def report(ds: list[Decision] | DecisionLog) -> rp.CycleReport:
    applied = [d for d in decisions(90) if d.action is Action.APPLY][3:]
    ex = Execution(
        cycle="c9",
        workload_ids=[d.workload_id for d in applied],
        decision_ids=[d.id for d in applied],
        outcome="pushed", commit_sha="cd" * 20, executed_at=T0,
        held={"ns/Deployment/svc-0000": "a human edited the file"},
    )  # fmt: skip
    return rp.CycleReport(
        cycle_id="c9", generated_at=T0, decisions=ds, execution=ex, policies={"default": 3}
    )


def test_the_report_of_a_log_is_the_report_of_the_list_byte_for_byte() -> None:
    ds = decisions(90)
    from_list, from_log = report(ds), report(DecisionLog(ds))
    assert isinstance(from_log.decisions, DecisionLog)  # kept as is, not decoded into a list
    docs_list, docs_log = rp.documents(from_list), rp.documents(from_log)
    assert [o.key for o in docs_log] == [o.key for o in docs_list]
    for a, b in zip(docs_list, docs_log, strict=True):
        assert a.body == b.body, a.key
    audit = orjson.loads(docs_log[3].body)
    assert len(audit["decisions"]) == 90
    assert {"default@3", "default@0", "default@1"} <= set(audit["policy_versions"])
    charted = rp.chart_data(from_log)
    assert len(charted) == rp.MAX_CHARTED and charted == rp.chart_data(from_list)
