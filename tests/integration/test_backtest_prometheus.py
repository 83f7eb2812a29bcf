"""``kubefinops backtest --prometheus-url``: the collector's queries against a real Prometheus
(the harness's SmartHealth cluster), the specs at ``--from`` as the starting point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.prometheus import CLUSTER, PromInfo

ROOT = Path(__file__).resolve().parents[2]


def backtest(prom: PromInfo, tmp: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    export = tmp / "export.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "backtest",
            "--prometheus-url",
            prom.url,
            "--from",
            str(prom.start_ts),
            "--to",
            str(prom.end_ts),
            "--strategy",
            "kubefinops",
            "--strategy",
            "krr-simple",
            "--output",
            "json",
            "--export",
            str(export),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), json.loads(export.read_text())


def test_backtest_over_prometheus_honours_namespace_hpa_and_exclusion(
    prometheus: PromInfo, tmp_path: Path
) -> None:
    doc, export = backtest(prometheus, tmp_path, "--namespace", "smarthealth")
    want = {
        f"{w.namespace}/{w.kind}/{w.name}/{c[0]}"
        for w in CLUSTER
        if w.namespace == "smarthealth"
        for c in w.containers
    }
    seen = {key for day in export.values() for key in day}
    assert seen == want
    ours, krr = doc["strategies"]
    assert (ours["strategy"], krr["strategy"]) == ("kubefinops", "krr-simple")
    assert ours["container_days"] > 0 and ours["applies"] > 0
    by_wl = {w["workload_id"]: w for w in ours["workloads_detail"]}
    # the annotation kubefinops.io/exclude keeps the notifier as it is
    assert by_wl["smarthealth/Deployment/notifier"]["applies"] == 0
    days = sorted(export, key=int)
    # patient-api's HPA scales on CPU: its CPU request never moves (hpa rule memory-only)
    cpu = {export[d]["smarthealth/Deployment/patient-api/app"]["cpu_request"] for d in days}
    assert len(cpu) == 1
    krr_wl = {w["workload_id"]: w for w in krr["workloads_detail"]}
    assert krr_wl["smarthealth/Deployment/patient-api"]["applies"] == 0  # KRR skips HPAs


def test_backtest_selector_keeps_only_matching_workloads(
    prometheus: PromInfo, tmp_path: Path
) -> None:
    _, export = backtest(prometheus, tmp_path, "--selector", "team=payments")
    workloads = {key.rsplit("/", 1)[0] for day in export.values() for key in day}
    assert workloads == {
        f"{w.namespace}/{w.kind}/{w.name}" for w in CLUSTER if w.labels.get("team") == "payments"
    }
