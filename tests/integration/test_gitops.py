"""The Git executor against a real smart-HTTP remote with basic auth (tests/harness/git_http.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import kubernetes_validate
import pytest

from engine import logs
from engine.adapters.gitops import GitOpsWriter
from engine.core import patches
from engine.core.decision_log import DecisionLog
from engine.core.model import (
    Action,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Mode,
    ResourcePair,
    Savings,
)
from engine.errors import AuthenticationFailed
from engine.metrics import REGISTRY
from engine.settings import GitMode, Settings, load_settings
from tests.harness.git_http import GitRemote

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
OVERLAY = "smarthealth-gitops/overlays/production"
REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_for(remote: GitRemote, workdir: Path, **extra: object) -> Settings:
    return load_settings(
        git_remote_url=remote.url,
        git_token=remote.token,
        git_username=remote.username,
        git_workdir=workdir,
        data_dir=workdir.parent,
        kafka_username=None,
        **extra,
    )


def decision(
    name: str,
    container: str,
    *,
    kind: str = "Deployment",
    cpu: float | None = None,
    mem_mib: int | None = None,
    mem_limit_mib: int | None = None,
    cur_cpu: float = 0.5,
    cur_mem_mib: int = 512,
    action: Action = Action.APPLY,
    delta: float = -5.0,
    did: str | None = None,
) -> Decision:
    rec = ContainerRecommendation(
        name=container,
        current=ContainerSpec(
            name=container, requests=ResourcePair(cpu=cur_cpu, memory=cur_mem_mib * MIB)
        ),
        cpu_request=cpu,
        memory_request=None if mem_mib is None else mem_mib * MIB,
        memory_limit=None if mem_limit_mib is None else mem_limit_mib * MIB,
        reasons=["p95 well below request"],
    )
    return Decision(
        id=did or f"dec-{name}-{container}",
        recommendation_id=f"rec-{name}",
        workload_id=f"smarthealth/{kind}/{name}",
        namespace="smarthealth",
        kind=kind,
        name=name,
        action=action,
        guardrail="none",
        reason="usage well below requests for 14 days",
        mode=Mode.AUTOPILOT,
        containers=[rec],
        savings=Savings(monthly_delta=delta, monthly_savings=max(0.0, -delta)),
        decided_at=1_790_000_000.0,
    )


def three_decisions() -> list[Decision]:
    return [
        decision("patient-api", "app", cpu=0.25, mem_mib=384),
        decision("appointments", "envoy", cpu=0.05, mem_mib=96, cur_cpu=0.1, cur_mem_mib=128),
        decision(
            "patients-db",
            "postgres",
            kind="StatefulSet",
            mem_mib=1536,
            mem_limit_mib=1536,
            cur_cpu=1.0,
            cur_mem_mib=2048,
            delta=-2.0,
        ),
        decision("billing", "app", cpu=0.3, action=Action.HOLD),
    ]


# The executor hands the writer its applies as a DecisionLog (JSON, decoded one at a time); the
# writer takes any sequence.  The main paths run with both.
HELD_AS = pytest.mark.parametrize("held_as", [list, DecisionLog], ids=["list", "log"])


def _rejections() -> float:
    return REGISTRY.get_sample_value("kubefinops_git_pushes_total", {"outcome": "rejected"}) or 0.0


def render(remote: GitRemote, tmp: Path, ref: str = "main") -> list[dict[str, object]]:
    checkout = tmp / f"render-{ref.replace('/', '-')}"
    subprocess.run(
        ["git", "clone", "-q", "-b", ref, str(remote.bare_path), str(checkout)], check=True
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(checkout / OVERLAY)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in patches.parse_yaml_all(out) if isinstance(d, dict)]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31.0", strict=True)
    return docs


def resources_of(docs: list[dict[str, object]], kind: str, name: str, container: str) -> dict:
    present = patches.workload_containers(docs)
    return present[("smarthealth", kind, name)][container]


def human_commit(remote: GitRemote, tmp: Path, path: str, text: str, msg: str) -> None:
    work = tmp / f"human-{abs(hash((path, msg)))}"
    subprocess.run(["git", "clone", "-q", str(remote.bare_path), str(work)], check=True)
    (work / path).parent.mkdir(parents=True, exist_ok=True)
    (work / path).write_text(text)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Alice",
        "GIT_AUTHOR_EMAIL": "alice@smarthealth.local",
        "GIT_COMMITTER_NAME": "Alice",
        "GIT_COMMITTER_EMAIL": "alice@smarthealth.local",
    }
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "commit", "-qm", msg], cwd=work, check=True, env=env)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:main"], cwd=work, check=True)


@HELD_AS
async def test_one_commit_per_cycle_renders_valid_and_matches(
    git_remote: GitRemote, tmp_path: Path, held_as: type
) -> None:
    remote = git_remote.fresh(f"one-commit-{held_as.__name__}")
    before = remote.log()
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    result = await writer.apply_cycle("cycle-001", held_as(three_decisions()))
    ex = result
    assert ex.outcome == "pushed", ex.detail
    after = remote.log()
    assert len(after) == len(before) + 1 and after[0] == ex.commit_sha
    assert sorted(ex.workload_ids) == [
        "smarthealth/Deployment/appointments",
        "smarthealth/Deployment/patient-api",
        "smarthealth/StatefulSet/patients-db",
    ]
    message = remote.log(fmt="%B")[0]
    trailers = patches.parse_trailers(message)
    assert message.startswith("chore(rightsizing): apply 3 recommendations")
    assert trailers["Kubefinops-Cycle"] == ["cycle-001"]
    assert sorted(trailers["Kubefinops-Decision"]) == sorted(ex.decision_ids)
    assert trailers["Kubefinops-Monthly-Delta"] == ["-12.00 USD"]
    author = remote.log(fmt="%an <%ae>|%cn")[0]
    bot = "KubeFinOps Autopilot"
    assert author == f"{bot} <kubefinops-bot@users.noreply.local>|{bot}"
    changed = remote.changed_files("main")
    assert all(f.startswith(f"{OVERLAY}/kubefinops/") for f in changed), changed

    docs = render(remote, tmp_path)
    api = resources_of(docs, "Deployment", "patient-api", "app")
    assert api["requests"] == {"cpu": "250m", "memory": "384Mi"}
    assert api["limits"] == {"memory": "1Gi"}  # untouched by the bot
    envoy = resources_of(docs, "Deployment", "appointments", "envoy")
    assert envoy["requests"] == {"cpu": "50m", "memory": "96Mi"}
    app = resources_of(docs, "Deployment", "appointments", "app")
    assert app["requests"] == {"cpu": "1", "memory": "1Gi"}  # sibling container untouched
    db = resources_of(docs, "StatefulSet", "patients-db", "postgres")
    assert db["requests"] == {"cpu": "1", "memory": "1536Mi"}
    assert db["limits"] == {"memory": "1536Mi"}
    billing = resources_of(docs, "Deployment", "billing", "app")
    assert billing["requests"]["cpu"] == "750m"  # a hold decision changes nothing

    # replaying the same cycle (even with a fresh working copy) adds no commit
    again = await GitOpsWriter(settings_for(remote, tmp_path / "wd2")).apply_cycle(
        "cycle-001", three_decisions()
    )
    assert again.outcome == "noop" and again.commit_sha == ex.commit_sha
    same_values = await writer.apply_cycle("cycle-002", three_decisions())
    assert same_values.outcome == "noop"
    assert remote.log() == after


async def test_nothing_to_apply_is_noop(git_remote: GitRemote, tmp_path: Path) -> None:
    remote = git_remote.fresh("noop")
    before = remote.log()
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    ex = await writer.apply_cycle(
        "c-hold", [decision("billing", "app", cpu=0.3, action=Action.SKIP)]
    )
    assert ex.outcome == "noop" and ex.commit_sha is None
    assert remote.log() == before


async def test_concurrent_human_commit_is_rebased_over(
    git_remote: GitRemote, tmp_path: Path
) -> None:
    remote = git_remote.fresh("rebase")
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    await writer.apply_cycle("c1", [decision("frontend", "nginx", cpu=0.1, cur_cpu=0.2)])
    # the bot's working copy is now behind: a human changes a human-owned file meanwhile
    kust = remote.show(f"{OVERLAY}/kustomization.yaml")
    human_commit(
        remote,
        tmp_path,
        f"{OVERLAY}/kustomization.yaml",
        kust.replace("newTag: 2.4.1", "newTag: 2.5.0"),
        "feat: patient-api 2.5.0",
    )
    human_sha = remote.log()[0]
    writer_stale = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    rejected = _rejections()
    ex = await _apply_with_stale_fetch(
        writer_stale, "c2", [decision("billing", "app", cpu=0.5, cur_cpu=0.75)]
    )
    assert ex.outcome == "pushed", ex.detail
    log = remote.log()
    assert log[0] == ex.commit_sha and human_sha in log
    assert log[1] == human_sha  # the bot commit was rebased on top of the human one
    assert _rejections() == rejected + 1  # the push really raced and was rejected once
    assert "newTag: 2.5.0" in remote.show(f"{OVERLAY}/kustomization.yaml")
    docs = render(remote, tmp_path)
    assert resources_of(docs, "Deployment", "billing", "app")["requests"]["cpu"] == "500m"
    assert resources_of(docs, "Deployment", "frontend", "nginx")["requests"]["cpu"] == "100m"


async def _apply_with_stale_fetch(writer: GitOpsWriter, cycle: str, decisions: list[Decision]):
    """Make the writer's first fetch a no-op so its push is rejected (a real race)."""
    original = writer._run
    state = {"skipped": False}

    def run(repo, *args):  # type: ignore[no-untyped-def]
        if args[:1] == ("fetch",) and not state["skipped"]:
            state["skipped"] = True
            return ""
        return original(repo, *args)

    writer._run = run  # type: ignore[method-assign]
    return await writer.apply_cycle(cycle, decisions)


@HELD_AS
async def test_conflicting_human_edit_is_held_not_overwritten(
    git_remote: GitRemote, tmp_path: Path, held_as: type
) -> None:
    remote = git_remote.fresh(f"conflict-{held_as.__name__}")
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    await writer.apply_cycle("c1", [decision("billing", "app", cpu=0.5, cur_cpu=0.75)])
    bot_file = f"{OVERLAY}/kubefinops/deployment-billing.yaml"
    human_text = remote.show(bot_file).replace("500m", "900m") + "\n# pinned by Alice\n"
    human_commit(remote, tmp_path, bot_file, human_text, "fix: billing needs more cpu")
    rejected = _rejections()
    ex_result = await _apply_result_stale(
        writer,
        "c2",
        held_as(
            [
                decision("billing", "app", cpu=0.4, cur_cpu=0.5),
                decision("frontend", "nginx", cpu=0.1, cur_cpu=0.2),
            ]
        ),
    )
    ex = ex_result
    assert ex.outcome == "pushed", ex.detail
    assert "smarthealth/Deployment/billing" in ex_result.held
    assert "human" in ex_result.held["smarthealth/Deployment/billing"]
    assert ex.workload_ids == ["smarthealth/Deployment/frontend"]
    assert _rejections() == rejected + 1
    assert remote.show(bot_file) == human_text.rstrip("\n")
    docs = render(remote, tmp_path)
    assert resources_of(docs, "Deployment", "billing", "app")["requests"]["cpu"] == "900m"
    assert resources_of(docs, "Deployment", "frontend", "nginx")["requests"]["cpu"] == "100m"


async def _apply_result_stale(writer: GitOpsWriter, cycle: str, decisions: list[Decision]):
    original = writer._run
    state = {"skipped": False}

    def run(repo, *args):  # type: ignore[no-untyped-def]
        if args[:1] == ("fetch",) and not state["skipped"]:
            state["skipped"] = True
            return ""
        return original(repo, *args)

    writer._run = run  # type: ignore[method-assign]
    return await writer.apply_cycle(cycle, decisions)


async def test_rebase_that_makes_the_overlay_invalid_pushes_nothing(
    git_remote: GitRemote, tmp_path: Path
) -> None:
    remote = git_remote.fresh("rebase-invalid")
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    await writer.apply_cycle("c1", [decision("billing", "app", cpu=0.5, cur_cpu=0.75)])
    base = "smarthealth-gitops/base/frontend/deployment.yaml"
    human_commit(
        remote,
        tmp_path,
        base,
        remote.show(base).replace("memory: 256Mi", "memory: 128Mi") + "\n",
        "perf: frontend memory limit 128Mi",
    )
    human_sha = remote.log()[0]
    ex = await _apply_with_stale_fetch(
        writer, "c2", [decision("frontend", "nginx", mem_mib=200, cur_mem_mib=128)]
    )
    assert ex.outcome == "failed" and "exceeds limit" in ex.detail, ex.detail
    assert remote.log()[0] == human_sha


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys, json
    from engine.adapters.gitops import GitOpsWriter
    from engine.core.model import Decision
    from engine.settings import load_settings
    args = json.loads(sys.argv[1])
    settings = load_settings(**args["settings"])
    decisions = [Decision.model_validate(d) for d in args["decisions"]]
    result = GitOpsWriter(settings).commit_only(args["cycle"], decisions)
    print(result.commit_sha, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # crash between commit and push
""")


async def test_crash_between_commit_and_push_pushes_exactly_once(
    git_remote: GitRemote, tmp_path: Path
) -> None:
    import json

    remote = git_remote.fresh("crash")
    before = remote.log()
    decisions = [
        decision(
            "records-service",
            "app",
            mem_mib=1800,
            mem_limit_mib=1800,
            cur_cpu=1.0,
            cur_mem_mib=2048,
        )
    ]
    payload = json.dumps(
        {
            "cycle": "c-crash",
            "decisions": [d.model_dump(mode="json") for d in decisions],
            "settings": {
                "git_remote_url": remote.url,
                "git_token": remote.token,
                "git_username": remote.username,
                "git_workdir": str(tmp_path / "wd"),
                "data_dir": str(tmp_path),
                "kafka_username": None,
            },
        }
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASH_SCRIPT, payload],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    local_sha = proc.stdout.strip()
    assert remote.log() == before  # committed locally, never pushed
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    ex = await writer.apply_cycle("c-crash", DecisionLog(decisions))  # as the executor has them
    assert ex.outcome == "pushed" and ex.commit_sha == local_sha
    assert remote.log() == [local_sha, *before]
    again = await writer.apply_cycle("c-crash", decisions)
    assert again.outcome == "noop" and remote.log() == [local_sha, *before]


async def test_invalid_render_commits_nothing(git_remote: GitRemote, tmp_path: Path) -> None:
    remote = git_remote.fresh("invalid")
    before = remote.log()
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd"))
    # request above the human-set limit (frontend nginx has limits.memory 256Mi)
    ex = await writer.apply_cycle("c-bad", [decision("frontend", "nginx", mem_mib=512)])
    assert ex.outcome == "failed" and "exceeds limit" in ex.detail
    assert remote.log() == before
    unknown = await writer.apply_cycle("c-unknown", [decision("ghost", "app", cpu=0.1)])
    assert unknown.outcome == "held"
    assert "not in the overlay" in unknown.held["smarthealth/Deployment/ghost"]
    assert remote.log() == before


async def test_branch_mode_pushes_review_branch(git_remote: GitRemote, tmp_path: Path) -> None:
    remote = git_remote.fresh("branch")
    main_before = remote.log()
    writer = GitOpsWriter(settings_for(remote, tmp_path / "wd", git_mode=GitMode.BRANCH))
    ex = await writer.apply_cycle("2026-11-27T06", [decision("billing", "app", cpu=0.5)])
    assert ex.outcome == "pushed" and ex.branch == "kubefinops/2026-11-27T06"
    assert remote.log() == main_before
    assert remote.log("kubefinops/2026-11-27T06")[0] == ex.commit_sha
    docs = render(remote, tmp_path, "kubefinops/2026-11-27T06")
    assert resources_of(docs, "Deployment", "billing", "app")["requests"]["cpu"] == "500m"
    again = await writer.apply_cycle("2026-11-27T06", [decision("billing", "app", cpu=0.5)])
    assert again.outcome == "noop"


async def test_token_never_leaks(
    git_remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    remote = git_remote.fresh("secret")
    wd = tmp_path / "wd"
    writer = GitOpsWriter(settings_for(remote, wd))
    await writer.apply_cycle("c-secret", [decision("billing", "app", cpu=0.5)])
    bad = GitOpsWriter(
        settings_for(remote, tmp_path / "wd-bad").model_copy(
            update={
                "git_token": load_settings(
                    git_token=remote.token[::-1], kafka_username=None
                ).git_token
            }
        )
    )
    with pytest.raises(AuthenticationFailed) as failed:
        await bad.apply_cycle("c-secret-2", [decision("billing", "app", cpu=0.4)])
    assert remote.token[::-1] not in str(failed.value)
    token = remote.token.encode()
    for root in (wd, tmp_path / "wd-bad", remote.bare_path):
        for path in root.rglob("*"):
            if path.is_file():
                assert token not in path.read_bytes(), path
    assert remote.token not in (wd / ".git" / "config").read_text()
    assert remote.token not in caplog.text and remote.token[::-1] not in caplog.text
    assert remote.token not in remote.server.log.read_text()


def test_remote_requires_basic_auth(git_remote: GitRemote) -> None:
    import base64
    import urllib.error
    import urllib.request

    url = f"{git_remote.url}/info/refs?service=git-upload-pack"

    def status(token: str | None) -> int:
        request = urllib.request.Request(url)
        if token is not None:
            raw = base64.b64encode(f"{git_remote.username}:{token}".encode()).decode()
            request.add_header("Authorization", f"Basic {raw}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(None) == 401
    assert status("wrong-token") == 401
    assert status(git_remote.token) == 200


def test_estate_renders_and_passes_strict_validation(tmp_path: Path) -> None:
    """The folder Argo CD tracks, as committed: renders and passes kubernetes-validate --strict."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO_ROOT / OVERLAY)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(out)
    # The CLI of the interpreter running the tests: found without the venv's bin on PATH.
    cli = [sys.executable, "-m", "kubernetes_validate"]
    check = subprocess.run(
        [*cli, "--strict", "-k", "1.31.0", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    docs = [d for d in patches.parse_yaml_all(out) if isinstance(d, dict)]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in (
        "patient-api",
        "appointments",
        "billing",
        "notifications-worker",
        "records-service",
        "frontend",
    ):
        assert ("Deployment", name) in kinds
    assert ("StatefulSet", "patients-db") in kinds
    assert ("HorizontalPodAutoscaler", "patient-api") in kinds
    assert all(
        d["metadata"].get("namespace") == "smarthealth" for d in docs if d["kind"] != "Namespace"
    )
    present = patches.workload_containers(docs)
    assert set(present[("smarthealth", "Deployment", "appointments")]) == {"app", "envoy"}
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    records = by_name[("Deployment", "records-service")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in records["containers"][0]["env"]}
    assert "MaxRAMPercentage" in env["JAVA_TOOL_OPTIONS"]
    assert by_name[("StatefulSet", "patients-db")]["spec"]["volumeClaimTemplates"]
    overlay = (REPO_ROOT / OVERLAY / "kustomization.yaml").read_text()
    assert "- kubefinops" in overlay  # the one-time include of the bot's component


async def test_token_file_is_reread_so_rotation_needs_no_restart(
    git_remote: GitRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "_ACTIVE", logs.RedactSecrets([]))  # this test's secrets only
    remote = git_remote.fresh("rotate")
    token_file = tmp_path / "token"
    token_file.write_text("expired-token\n")
    settings = load_settings(
        git_remote_url=remote.url,
        git_token_file=token_file,
        git_username=remote.username,
        git_workdir=tmp_path / "wd",
        data_dir=tmp_path,
        kafka_username=None,
    )
    writer = GitOpsWriter(settings)
    with pytest.raises(AuthenticationFailed) as failed:
        await writer.apply_cycle("c-rot", [decision("billing", "app", cpu=0.5)])
    assert "expired-token" not in str(failed.value)
    token_file.write_text(remote.token + "\n")  # the mounted Secret was rotated
    ex = await writer.apply_cycle("c-rot", [decision("billing", "app", cpu=0.5)])
    assert ex.outcome == "pushed" and remote.log()[0] == ex.commit_sha
    # the token read from the file is masked in what leaves the process from now on
    assert logs.redact(f"push with {remote.token}") == "push with ****"


FLEET_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: registry.example/{name}:1.0.0
          resources:
            requests:
              cpu: 500m
              memory: 512Mi
"""


async def test_a_cycle_whose_commit_message_is_over_the_argument_limit(
    git_remote: GitRemote, tmp_path: Path
) -> None:
    """480 workloads in one cycle: the commit message is over Linux's 128 KiB limit on one
    argument, so ``git commit -m`` failed ("Argument list too long") for every cycle of more
    than ~440 workloads (~300 bytes each here); the message now goes through a file.  The cycle
    is handed over as the executor has it, a DecisionLog."""
    remote = git_remote.fresh("big-cycle")
    n = 480
    names = [f"svc-{i:04d}" for i in range(n)]
    base = "\n---\n".join(FLEET_DEPLOYMENT.format(name=name) for name in names)
    human_commit(remote, tmp_path, "fleet/base/deployments.yaml", base, "feat: fleet base")
    human_commit(
        remote,
        tmp_path,
        "fleet/base/kustomization.yaml",
        "resources:\n  - deployments.yaml\n",
        "feat: fleet base kustomization",
    )
    human_commit(
        remote,
        tmp_path,
        "fleet/overlay/kustomization.yaml",
        "namespace: smarthealth\nresources:\n  - ../base\ncomponents:\n  - kubefinops\n",
        "feat: fleet overlay",
    )
    human_commit(
        remote,
        tmp_path,
        "fleet/overlay/kubefinops/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches: []\n",
        "feat: fleet overlay, the bot's component",
    )
    before = remote.log()
    settings = settings_for(remote, tmp_path / "wd", gitops_overlay_path="fleet/overlay")
    given = DecisionLog(decision(name, "app", cpu=0.25, mem_mib=384) for name in names)
    ex = await GitOpsWriter(settings).apply_cycle("c-big", given)
    assert ex.outcome == "pushed", ex.detail
    assert sorted(ex.workload_ids) == [f"smarthealth/Deployment/{name}" for name in names]
    assert remote.log() == [ex.commit_sha, *before]
    message = remote.log(fmt="%B")[0]
    assert len(message.encode()) > 128 * 1024
    trailers = patches.parse_trailers(message)
    assert sorted(trailers["Kubefinops-Decision"]) == sorted(d.id for d in given.refs)
    assert trailers["Kubefinops-Cycle"] == ["c-big"]
    assert len(remote.changed_files("main")) == n + 1  # a patch per workload + the component
    patch = remote.show("fleet/overlay/kubefinops/deployment-svc-0479.yaml")
    assert "cpu: 250m" in patch and "memory: 384Mi" in patch
    again = await GitOpsWriter(settings).apply_cycle("c-big", given)
    assert again.outcome == "noop" and again.commit_sha == ex.commit_sha


def _in_namespace(d: Decision, namespace: str) -> Decision:
    return Decision.model_validate(
        {**d.model_dump(), "namespace": namespace, "workload_id": f"{namespace}/{d.kind}/{d.name}"}
    )


async def test_one_overlay_per_namespace(git_remote: GitRemote, tmp_path: Path) -> None:
    """``gitops_overlay_path`` with ``{namespace}``: each namespace's patches go into its own
    overlay's component, in one commit; a namespace without an overlay is held, not failed."""
    remote = git_remote.fresh("per-namespace")
    for team in ("payments", "search"):
        names = [f"{team}-{i}" for i in range(3)]
        base = "\n---\n".join(FLEET_DEPLOYMENT.format(name=name) for name in names)
        for path, text in (
            (f"teams/{team}/deployments.yaml", base),
            (
                f"teams/{team}/kustomization.yaml",
                f"namespace: {team}\nresources:\n  - deployments.yaml\ncomponents:\n"
                "  - kubefinops\n",
            ),
            (
                f"teams/{team}/kubefinops/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches: []\n",
            ),
        ):
            human_commit(remote, tmp_path, path, text, f"feat: {path}")
    before = remote.log()
    settings = settings_for(remote, tmp_path / "wd", gitops_overlay_path="teams/{namespace}")
    given = DecisionLog(
        [
            _in_namespace(decision("payments-1", "app", cpu=0.25), "payments"),
            _in_namespace(decision("search-0", "app", mem_mib=256), "search"),
            _in_namespace(decision("search-2", "app", cpu=0.3), "search"),
            _in_namespace(decision("ghost", "app", cpu=0.1), "nowhere"),
        ]
    )
    ex = await GitOpsWriter(settings).apply_cycle("c-teams", given)
    assert ex.outcome == "pushed", ex.detail
    assert ex.workload_ids == [
        "payments/Deployment/payments-1",
        "search/Deployment/search-0",
        "search/Deployment/search-2",
    ]
    why = "no overlay at teams/nowhere (gitops_overlay_path)"
    assert ex.held == {"nowhere/Deployment/ghost": why}
    assert remote.log() == [ex.commit_sha, *before]  # one commit for both overlays
    assert sorted(remote.changed_files("main")) == [
        "teams/payments/kubefinops/deployment-payments-1.yaml",
        "teams/payments/kubefinops/kustomization.yaml",
        "teams/search/kubefinops/deployment-search-0.yaml",
        "teams/search/kubefinops/deployment-search-2.yaml",
        "teams/search/kubefinops/kustomization.yaml",
    ]
    rendered = await asyncio.to_thread(_render_teams, remote, tmp_path)
    for team, name, section in (
        ("payments", "payments-1", {"cpu": "250m", "memory": "512Mi"}),
        ("search", "search-0", {"cpu": "500m", "memory": "256Mi"}),
        ("search", "search-2", {"cpu": "300m", "memory": "512Mi"}),
        ("search", "search-1", {"cpu": "500m", "memory": "512Mi"}),  # untouched
    ):
        present = patches.workload_containers(patches.parse_yaml_all(rendered[team]))
        assert present[(team, "Deployment", name)]["app"]["requests"] == section


def _render_teams(remote: GitRemote, tmp: Path) -> dict[str, str]:
    checkout = tmp / "render-teams"
    subprocess.run(["git", "clone", "-q", str(remote.bare_path), str(checkout)], check=True)
    return {
        team: subprocess.run(
            ["kubectl", "kustomize", str(checkout / "teams" / team)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for team in ("payments", "search")
    }
