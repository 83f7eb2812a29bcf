"""`kubefinops demo`: the embedded broker, one worker, a local GitOps remote — one command.

Runs the real command as a subprocess and checks what a user would look at: the printed cycle, the
commit in the GitOps repository, the report files — and that nothing it started is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_loop_and_stops_what_it_started(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "demo",
            "--once",
            "--seconds",
            "120",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "embedded broker (Tansu)" in out
    assert "replayed" in out and "SmartHealth workloads" in out
    assert "pushed" in out, out[-3000:]

    log = subprocess.run(
        [
            "git",
            "--git-dir",
            str(workdir / "smarthealth-gitops.git"),
            "log",
            "--format=%s%n%b",
            "main",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert log.stdout.count("chore(rightsizing)") == 1, log.stdout
    assert "Kubefinops-Cycle:" in log.stdout

    reports = sorted((workdir / "reports").rglob("report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["summary"]["changed"] if "summary" in report else report
    assert (reports[0].parent / "report.html").read_text().lstrip().startswith("<!DOCTYPE html>")

    leftovers = subprocess.run(
        ["pgrep", "-f", f"tansu.*{workdir.name}|{workdir}"], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", "the demo left processes running"
