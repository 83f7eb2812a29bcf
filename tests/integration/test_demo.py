"""`kubefinops demo`: the embedded broker, one worker, a local GitOps remote — one command.

Runs the real command as a subprocess and checks what a user would look at: the printed cycle, the
commit in the GitOps repository, the report files — and that nothing it started is left running.
The same check runs against a wheel built from the repository (``pip wheel .``) and installed into
a fresh virtualenv, so the demo's data travels as package data, not as a path into a checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO_ARGS = ["demo", "--once", "--seconds", "120"]
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "var")


def test_demo_runs_the_loop_and_stops_what_it_started(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "engine.cli", *DEMO_ARGS, "--workdir", str(workdir)]
    check_demo(argv, workdir, cwd=ROOT)


def test_a_wheel_in_a_fresh_venv_runs_the_demo(tmp_path: Path) -> None:
    """``pip wheel .`` -> a new venv -> ``kubefinops demo --once`` from outside the checkout.

    The wheel is installed with ``--no-deps``; the third-party dependencies come from this test
    environment through a ``.pth`` line (no package index needed in CI).  That line adds only the
    directory: the checkout's editable install (itself a ``.pth`` there) is not activated, so
    ``engine`` can only come from the wheel — which the test checks before running the demo.
    """
    # From a copy: setuptools keeps a build/ folder in the source tree, whose stale files (a
    # module deleted since) would otherwise end up in the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("kubefinops_autopilot-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run(
        [python, "-c", "import engine.demo.data as d; print(d.__file__); print(d.gitops_dir())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=outside,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the wheel's code and data
    workdir = tmp_path / "demo"
    argv = [str(venv / "bin" / "kubefinops"), *DEMO_ARGS, "--workdir", str(workdir)]
    check_demo(argv, workdir, cwd=outside)


def check_demo(argv: list[str], workdir: Path, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFINOPS_")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=cwd, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "embedded broker (Tansu)" in out
    assert "replayed" in out and "SmartHealth workloads" in out
    assert re.search(r"web UI http://127\.0\.0\.1:\d+/ui/ ", out), out[-3000:]
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
    committed = set(re.findall(r"^Kubefinops-Workload: (\S+)", log.stdout, re.MULTILINE))

    reports = sorted((workdir / "reports").rglob("report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    changed = {c["workload"] for c in report["changed"]}
    assert report["totals"]["changed"] == len(changed) > 0, report["totals"]
    assert changed == committed  # the report lists exactly what the commit changed
    assert (reports[0].parent / "report.html").read_text().lstrip().startswith("<!DOCTYPE html>")

    leftovers = subprocess.run(
        ["pgrep", "-f", f"tansu.*{workdir.name}|{workdir}"], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", "the demo left processes running"
