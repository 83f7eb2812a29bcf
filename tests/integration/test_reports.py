"""Cycle reports to a real S3 server (moto in server mode), the outbox and headless Chromium."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.adapters.reports import Pending, ReportWriter
from engine.core.model import (
    Action,
    ContainerRecommendation,
    ContainerSpec,
    CycleSummary,
    Decision,
    Execution,
    Mode,
    ResourcePair,
    Savings,
)
from engine.core.report import CycleReport, documents, report_keys
from engine.metrics import REGISTRY
from engine.settings import Settings, load_settings
from tests.harness.s3 import S3Info, unique_bucket

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def settings_for(s3_info: S3Info, tmp_path: Path, bucket: str) -> Settings:
    return load_settings(
        s3_endpoint_url=s3_info.endpoint_url,
        s3_access_key=s3_info.access_key,
        s3_secret_key=s3_info.secret_key,
        s3_region=s3_info.region,
        s3_bucket=bucket,
        data_dir=tmp_path,
        kafka_username=None,
    )


def client(s3_info: S3Info):  # type: ignore[no-untyped-def]
    return s3_info.boto3_client()


def sample_report(cycle: str = "cycle-42", name: str = "patient-api") -> CycleReport:
    rec = ContainerRecommendation(
        name="app",
        current=ContainerSpec(name="app", requests=ResourcePair(cpu=0.5, memory=512 * MIB)),
        cpu_request=0.25,
        memory_request=768 * MIB,
        reasons=["P95 CPU 0.18 cores over 14 days"],
    )
    applied = Decision(
        id="d-1",
        recommendation_id="r-1",
        workload_id=f"smarthealth/Deployment/{name}",
        namespace="smarthealth",
        kind="Deployment",
        name=name,
        action=Action.APPLY,
        guardrail="none",
        reason="<script>alert('x')</script> & usage low",
        mode=Mode.AUTOPILOT,
        policy_id="default",
        policy_version=3,
        containers=[rec],
        savings=Savings(monthly_delta=-4.2, monthly_savings=4.2),
        decided_at=1_795_000_000.0,
    )
    held = Decision(
        id="d-2",
        recommendation_id="r-2",
        workload_id="smarthealth/Deployment/billing",
        namespace="smarthealth",
        kind="Deployment",
        name="billing",
        action=Action.HOLD,
        guardrail="cooldown",
        reason="changed 2 h ago",
        mode=Mode.AUTOPILOT,
        decided_at=1_795_000_000.0,
    )
    execution = Execution(
        cycle=cycle,
        workload_ids=[applied.workload_id],
        decision_ids=["d-1"],
        outcome="pushed",
        commit_sha="ab" * 20,
        branch="main",
        executed_at=1_795_000_100.0,
    )
    return CycleReport(
        cycle_id=cycle,
        generated_at=1_795_000_200.0,
        decisions=[applied, held],
        execution=execution,
    )


async def test_report_objects_readable_by_boto3(s3: S3Info, tmp_path: Path) -> None:
    s3_info, bucket = s3, unique_bucket("reports")
    writer = ReportWriter(settings_for(s3_info, tmp_path, bucket))
    report = sample_report()
    keys = await writer.write(report)
    assert keys == list(report_keys(report).values())
    assert keys[0] == "reports/2026/11/18/cycle-42/report.json"
    s3c = client(s3_info)
    types = {}
    secret = s3_info.secret_key
    for key in keys:
        obj = await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=key)
        types[key.rsplit("/", 1)[1]] = obj["ContentType"]
        assert obj["Metadata"] == {"cycle-id": "cycle-42", "commit-sha": "ab" * 20}
        body = obj["Body"].read()
        assert secret.encode() not in body
    assert types == {
        "report.json": "application/json",
        "report.md": "text/markdown; charset=utf-8",
        "report.html": "text/html; charset=utf-8",
        "audit.json": "application/json",
    }
    summary = json.loads(
        (await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[0]))["Body"].read()
    )
    assert summary["totals"]["monthly_savings"] == 4.2
    assert summary["not_applied"][0]["guardrail"] == "cooldown"
    audit = json.loads(
        (await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[3]))["Body"].read()
    )
    assert audit["commit_sha"] == "ab" * 20 and audit["policy_versions"] == ["default@3"]
    assert writer.pending() == []


async def test_s3_outage_goes_to_outbox_and_flush_delivers(
    s3_outage: S3Info, tmp_path: Path
) -> None:
    s3_info = s3_outage
    settings = settings_for(s3_info, tmp_path, "reports-b")
    writer = ReportWriter(settings, attempts=2, backoff_seconds=0.05, timeout_seconds=1.0)
    s3_info.stop()
    try:
        keys = await writer.write(sample_report("cycle-outage"))
        keys2 = await writer.write(sample_report("cycle-outage-2", "frontend"))
        assert len(writer.pending()) == 8  # each report's four objects, one file each
        assert await writer.flush() == 0  # still down: nothing lost, nothing delivered
        assert len(ReportWriter(settings).pending()) == 8  # durable: a new process sees them
        assert REGISTRY.get_sample_value("kubefinops_reports_pending") == 2
    finally:
        s3_info.start()
    parked = [json.loads(path.read_text())["prefix"] for path in writer.pending()]
    assert parked == [*keys, *keys2]  # flushed in the order they were rendered
    restarted = ReportWriter(settings)  # e.g. after a worker restart
    assert await restarted.flush() == 2
    assert restarted.pending() == []
    s3 = client(s3_info)
    for key in [*keys, *keys2]:
        head = await asyncio.to_thread(s3.head_object, Bucket="reports-b", Key=key)
        assert head["ContentLength"] > 0


async def test_an_outage_in_the_middle_of_a_report_parks_the_objects_not_stored(
    s3_outage: S3Info, tmp_path: Path
) -> None:
    """The objects are stored one at a time: S3 going down after the first parks the other
    three (in render order), and a flush completes the report."""
    s3_info = s3_outage
    settings = settings_for(s3_info, tmp_path, "reports-c")
    stored: list[str] = []

    class DownAfterTheFirst(ReportWriter):
        async def _deliver(self, pending: Pending) -> None:
            await super()._deliver(pending)
            stored.append(pending.prefix)
            if len(stored) == 1:  # the first object is really in S3; then the outage
                s3c = client(s3_info)
                await asyncio.to_thread(s3c.head_object, Bucket="reports-c", Key=pending.prefix)
                await asyncio.to_thread(s3_info.stop)

    writer = DownAfterTheFirst(settings, attempts=2, backoff_seconds=0.05, timeout_seconds=1.0)
    try:
        keys = await writer.write(sample_report("cycle-mid"))
        assert stored == keys[:1]
        parked = [json.loads(path.read_text())["prefix"] for path in writer.pending()]
        assert parked == keys[1:]
        assert REGISTRY.get_sample_value("kubefinops_reports_pending") == 1
    finally:
        s3_info.start()  # a fresh moto: what was stored before the outage is gone with it
    assert await ReportWriter(settings).flush() == 1  # the report is whole again
    for key in keys[1:]:
        head = await asyncio.to_thread(client(s3_info).head_object, Bucket="reports-c", Key=key)
        assert head["ContentLength"] > 0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
async def test_html_report_opens_in_headless_chromium(s3: S3Info, tmp_path: Path) -> None:
    s3_info, bucket = s3, unique_bucket("reports")
    writer = ReportWriter(settings_for(s3_info, tmp_path, bucket))
    keys = await writer.write(sample_report())
    html_key = next(k for k in keys if k.endswith(".html"))
    page = tmp_path / "report.html"
    obj = await asyncio.to_thread(client(s3_info).get_object, Bucket=bucket, Key=html_key)
    page.write_bytes(obj["Body"].read())
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'id="monthly-savings">4.20 USD<' in dom
    assert "&lt;script&gt;alert" in dom and "<script>alert" not in dom  # escaped, not executed
    assert "cooldown" in dom and "smarthealth/Deployment/patient-api" in dom


async def test_cycle_end_to_end_token_in_no_object_or_log(
    s3: S3Info, git_remote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Apply a cycle through the real Git remote, report it to S3, grep everything for the PAT."""
    import logging

    from engine.adapters.gitops import GitOpsWriter
    from tests.integration.test_gitops import decision

    caplog.set_level(logging.DEBUG)
    s3_info, bucket = s3, unique_bucket("reports")
    remote = git_remote.fresh("e2e-report")
    settings = load_settings(
        git_remote_url=remote.url,
        git_token=remote.token,
        git_username=remote.username,
        git_workdir=tmp_path / "wd",
        data_dir=tmp_path,
        kafka_username=None,
        s3_endpoint_url=s3_info.endpoint_url,
        s3_access_key=s3_info.access_key,
        s3_secret_key=s3_info.secret_key,
        s3_region=s3_info.region,
        s3_bucket=bucket,
    )
    decisions = [
        decision("billing", "app", cpu=0.5, cur_cpu=0.75),
        decision("ghost", "app", cpu=0.1),
    ]
    execution = await GitOpsWriter(settings).apply_cycle("cycle-e2e", decisions)
    assert execution.outcome == "pushed"
    assert "smarthealth/Deployment/ghost" in execution.held  # data, not text in the detail
    report = CycleReport.from_summary(
        CycleSummary(cycle="cycle-e2e", decisions=decisions, execution=execution)
    )
    keys = await ReportWriter(settings).write(report)
    s3c = client(s3_info)
    listed = await asyncio.to_thread(s3c.list_objects_v2, Bucket=bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(keys)
    summary = None
    for key in keys:
        obj = await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=key)
        body = obj["Body"].read()
        assert remote.token.encode() not in body
        assert obj["Metadata"]["commit-sha"] == execution.commit_sha
        if key.endswith("report.json"):
            summary = json.loads(body)
    assert summary is not None
    assert [c["workload"] for c in summary["changed"]] == ["smarthealth/Deployment/billing"]
    assert "not in the overlay" in summary["not_applied"][0]["reason"]
    assert remote.token not in caplog.text
    for path in (tmp_path / "wd").rglob("*"):
        if path.is_file():
            assert remote.token.encode() not in path.read_bytes(), path


async def test_write_cycle_from_executor_summary(s3: S3Info, tmp_path: Path) -> None:
    """The reporter agent's call: a CycleSummary; hold reasons come from ``Execution.held``."""
    from engine.core.model import CycleSummary

    bucket = unique_bucket("reports")
    base = sample_report("cycle-sum")
    assert base.execution is not None
    execution = base.execution.model_copy(
        update={
            "held": {
                "smarthealth/Deployment/frontend": "a human changed bot-owned "
                "kubefinops/deployment-frontend.yaml concurrently (not overwritten)"
            }
        }
    )
    frontend = base.decisions[0].model_copy(
        update={"id": "d-3", "workload_id": "smarthealth/Deployment/frontend", "name": "frontend"}
    )
    summary = CycleSummary(
        cycle="cycle-sum",
        decisions=[*base.decisions, frontend],
        execution=execution,
        policies={"default": 3, "jvm": 1},
    )
    writer = ReportWriter(settings_for(s3, tmp_path, bucket))
    keys = await writer.write_cycle(summary, generated_at=1.0)
    assert keys == await writer.write_cycle(summary, generated_at=2.0)  # same keys on replay
    s3c = client(s3)
    report = json.loads(
        (await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[0]))["Body"].read()
    )
    held = {h["workload"]: h["reason"] for h in report["not_applied"]}
    assert held["smarthealth/Deployment/frontend"].startswith("a human changed bot-owned")
    audit = json.loads(
        (await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[3]))["Body"].read()
    )
    assert audit["policy_versions"] == ["default@3", "jvm@1"]


async def test_a_five_thousand_decision_cycle_gives_one_complete_report(
    s3: S3Info, tmp_path: Path
) -> None:
    """The reporter's side of a cycle far over Kafka's message limit: its parts arrive one by
    one (any order, one re-delivered) and exactly one complete report is written."""
    from engine.core.cycles import split_cycle
    from tests.unit.test_cycles import big_cycle

    bucket = unique_bucket("reports")
    whole = big_cycle(5000)
    parts = split_cycle(whole)
    assert len(parts) > 2
    order = [*parts[1:], parts[1], parts[0]]  # out of order, with a duplicate
    writer = ReportWriter(
        settings_for(s3, tmp_path, bucket), park_on_failure=False, multipart_bytes=5 * MIB
    )  # S3's smallest part: the ~7.4 MB audit goes up in two
    results = [await writer.write_cycle(order[0])]
    opened = writer._s3
    results += [await writer.write_cycle(p) for p in order[1:]]
    assert opened is not None and writer._s3 is opened  # one S3 client for every write
    await writer.close()
    assert writer._s3 is None
    for keys in results[:-1]:
        assert len(keys) == 1 and "/parts/" in keys[0]  # stored, waiting for the rest
    keys = results[-1]
    assert [k.rsplit("/", 1)[1] for k in keys] == [
        "report.json", "report.md", "report.html", "audit.json",
    ]  # fmt: skip
    s3c = client(s3)
    report = json.loads(
        (await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[0]))["Body"].read()
    )
    applied = len(whole.execution.workload_ids)  # 40 more were held by a human edit
    assert report["totals"]["decisions"] == 5000
    assert report["totals"]["changed"] == applied
    assert report["totals"]["not_applied"] == 5000 - applied
    obj = await asyncio.to_thread(s3c.get_object, Bucket=bucket, Key=keys[3])
    body = obj["Body"].read()
    assert len(json.loads(body)["decisions"]) == 5000
    # the audit went up as a multipart upload: whole, in order, with the same type and metadata
    # as a single put, and no upload left open
    assert len(body) > writer.multipart_bytes and obj["ETag"].endswith('-2"')
    assert obj["ContentType"] == "application/json" and obj["Metadata"]["cycle-id"] == "c1"
    assert body == documents(CycleReport.from_summary(whole))[3].body
    uploads = await asyncio.to_thread(s3c.list_multipart_uploads, Bucket=bucket)
    assert not uploads.get("Uploads")
    listing = await asyncio.to_thread(s3c.list_objects_v2, Bucket=bucket)
    reports = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("report.json")]
    assert reports == [keys[0]]  # one report for the cycle
