"""The Git executor: apply decisions as one commit per cycle to the GitOps repo Argo CD tracks.

:meth:`GitOpsWriter.apply_cycle` (blocking git in a worker thread, one cycle at a time):
clone/fetch into ``settings.git_workdir``; skip a cycle whose ``Kubefinops-Cycle`` trailer is
already on the remote, push a local commit of it that a crash left unpushed; write only the bot's
patch files (``overlay/kubefinops/``); render with ``kubectl kustomize`` and validate strictly
before committing (invalid -> ``failed``, no commit); commit once with trailers; push, and on a
rejected push fetch + rebase + retry with backoff, holding (never overwriting) a workload whose
bot file a human edited meanwhile.  See docs/gitops.md.

The token reaches git only through the environment of the git child process, read by a
``GIT_ASKPASS`` script that holds no secret: never in ``.git/config``, the remote URL, logs or
exception messages (:func:`redact`).  Every child (git through GitPython, kubectl) gets a
minimal environment (:func:`child_env`: PATH, HOME, locale, proxies, CA bundle, the askpass
variables) — the worker's own ``KUBEFINOPS_*`` secrets never reach it — and the askpass
directory exists only while a cycle runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import kubernetes_validate

from engine.adapters.manifests import SchemaValidator, iter_documents
from engine.core import patches
from engine.core.decision_log import DecisionLog, as_log, identities, select
from engine.core.model import Decision, Execution, Outcome
from engine.core.verification import Verification, revert_message
from engine.errors import AuthenticationFailed, DependencyUnavailable, PermanentError
from engine.logs import remember
from engine.metrics import GIT_PUSHES
from engine.settings import GitMode, Settings

log = logging.getLogger(__name__)

TOKEN_ENV = "KUBEFINOPS_GIT_ASKPASS_TOKEN"  # noqa: S105 - a variable name, not a secret
USER_ENV = "KUBEFINOPS_GIT_ASKPASS_USER"
_ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "${USER_ENV}" ;;
  *) printf '%s\\n' "${TOKEN_ENV}" ;;
esac
"""
CYCLE_TRAILER = "Kubefinops-Cycle"
VERIFICATION_TRAILER = "Kubefinops-Verification"
_NETWORK = {"clone", "fetch", "push", "ls-remote", "pull"}
_AUTH_FAILED = re.compile(
    r"authentication failed|returned error: 40[13]|could not read (username|password)"
)


# What a child process may inherit from the worker: nothing that can hold one of its secrets.
_INHERIT = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME"}
_INHERIT_PREFIX = ("LC_",)
_INHERIT_NETWORK = {
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "KUBECONFIG",
}  # fmt: skip


def child_env(env: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The minimal environment of a child process: the allow-listed variables of ``env``
    (default: this process's), the variables git itself sets for its children (``GIT_*``, which
    GitPython passes on), and ``extra``."""
    source = os.environ if env is None else env
    keep = {
        k: v
        for k, v in source.items()
        if k in _INHERIT
        or k in _INHERIT_NETWORK
        or k.startswith(_INHERIT_PREFIX)
        or (k.startswith("GIT_") and not k.startswith("GIT_PYTHON"))
        or k in (TOKEN_ENV, USER_ENV)
    }
    return {**keep, **extra}


def _popen_minimal_env(*args: Any, env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    popen: Any = subprocess.Popen
    return popen(*args, env=child_env(env), **kwargs)


# GitPython starts every git process with a copy of os.environ plus what it is given, with no
# way to opt out; its process factory is replaced so each git child gets child_env() instead.
# tests/integration/test_hostile.py reads a live git child's /proc/<pid>/environ to hold this.
if sys.platform != "win32":
    git.cmd.safer_popen = _popen_minimal_env


def redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass
class RevertResult:
    outcome: str  # pushed | committed | noop | failed
    sha: str | None
    detail: str


class _Rejected(Exception):
    pass


class _Conflict(Exception):
    def __init__(self, files: list[str]) -> None:
        super().__init__(", ".join(files))
        self.files = files


class GitOpsWriter:
    """Single logical writer of the GitOps repo (the agent runs one per cluster)."""

    def __init__(
        self,
        settings: Settings,
        *,
        kubernetes_version: str = "1.31.0",
        max_push_attempts: int = 4,
        backoff_seconds: float = 0.25,
    ) -> None:
        if not settings.git_remote_url:
            raise PermanentError("git_remote_url is not set (KUBEFINOPS_GIT_REMOTE_URL)")
        self.settings = settings
        self.url: str = settings.git_remote_url
        self.workdir = Path(settings.git_workdir)
        self.kubernetes_version = kubernetes_version
        self.max_push_attempts = max_push_attempts
        self.backoff_seconds = backoff_seconds
        self._lock = threading.Lock()
        self._askpass_dir: Path | None = None

    # --- public ------------------------------------------------------------------------------
    async def apply_cycle(self, cycle_id: str, decisions: Sequence[Decision]) -> Execution:
        """Commit and push one apply cycle; held workloads are in ``Execution.held``."""
        # not copied into a list: a DecisionLog stays JSON, decoded one decision at a time
        return await asyncio.to_thread(self._locked, cycle_id, decisions, True)

    async def revert(self, v: Verification) -> RevertResult:
        """One revert commit of ``v``'s change to its workload (see :meth:`_revert`)."""
        return await asyncio.to_thread(self._locked_revert, v, True)

    def revert_commit_only(self, v: Verification) -> RevertResult:
        """The revert without its push (blocking): what a crash right after the commit leaves."""
        return self._locked_revert(v, False)

    def commit_only(self, cycle_id: str, decisions: Sequence[Decision]) -> Execution:
        """Steps 1-5 without the push (blocking): what a crash right after the commit leaves."""
        return self._locked(cycle_id, decisions, False)

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def _token(self) -> str | None:
        """Read at every git call: a rotated token file (mounted Secret) is picked up."""
        path = self.settings.git_token_file
        if path is not None:
            with contextlib.suppress(OSError):
                rotated = Path(path).read_text(encoding="utf-8").strip()
                remember(rotated)  # a rotated token is masked in logs like the one read at start
                return rotated
        token = self.settings.git_token
        return token.get_secret_value() if token is not None else None

    @contextlib.contextmanager
    def _askpass(self) -> Iterator[None]:
        """The askpass script's directory, for the duration of one cycle: removed on every exit
        path (success, error, cancellation), so nothing is left behind after a shutdown."""
        self._askpass_dir = Path(tempfile.mkdtemp(prefix="kubefinops-askpass-"))
        try:
            script = self._askpass_dir / "askpass.sh"
            script.write_text(_ASKPASS, encoding="utf-8")
            script.chmod(stat.S_IRWXU)
            yield
        finally:
            shutil.rmtree(self._askpass_dir, ignore_errors=True)
            self._askpass_dir = None

    def _env(self, network: bool = True) -> dict[str, str]:
        if self._askpass_dir is None:
            raise RuntimeError("git called outside a cycle (no askpass directory)")
        s = self.settings
        secret = {USER_ENV: s.git_username, TOKEN_ENV: self._token or ""} if network else {}
        return {
            "GIT_ASKPASS": str(self._askpass_dir / "askpass.sh"),
            "GIT_TERMINAL_PROMPT": "0",
            **secret,
            "GIT_CONFIG_COUNT": "1",  # no credential helper may store the token
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": "",
            "GIT_AUTHOR_NAME": s.git_author_name,
            "GIT_AUTHOR_EMAIL": s.git_author_email,
            "GIT_COMMITTER_NAME": s.git_author_name,
            "GIT_COMMITTER_EMAIL": s.git_author_email,
        }

    def _run(self, repo: git.Repo, *args: str) -> str:
        try:
            with repo.git.custom_environment(**self._env(network=args[0] in _NETWORK)):
                out: str = repo.git.execute(["git", *args])
                return out
        except git.GitCommandError as exc:
            raise self._translate(exc) from None

    def _commit_message(self, repo: git.Repo, message: str) -> None:
        """``git commit`` with ``message`` read from a file (``-F``): as an argument (``-m``) it
        was limited to 128 KiB (Linux's MAX_ARG_STRLEN), and a cycle of a few hundred workloads
        failed with "Argument list too long" (bench/bench_apply.py).  The file lives in the
        cycle's askpass directory, outside the working tree, removed with it."""
        if self._askpass_dir is None:
            raise RuntimeError("git called outside a cycle (no askpass directory)")
        path = self._askpass_dir / "COMMIT_MSG"
        path.write_text(message, encoding="utf-8")
        try:
            self._run(
                repo, "commit", "--quiet", "--no-verify", "--cleanup=verbatim", "-F", str(path)
            )
        finally:
            path.unlink(missing_ok=True)

    def _translate(self, exc: git.GitCommandError) -> Exception:
        argv = [str(a) for a in exc.command]
        text = redact(f"{' '.join(argv)}: {exc.stderr or exc.stdout}".strip(), self._token)
        lowered = text.lower()
        network = any(a in _NETWORK for a in argv[1:3])
        if network and _AUTH_FAILED.search(lowered):
            return AuthenticationFailed(f"git remote refused the credentials: {text}")
        if network and (
            "[rejected]" in lowered
            or "updates were rejected" in lowered
            or "non-fast-forward" in lowered
            or "fetch first" in lowered
        ):
            return _Rejected(text)
        if network:
            return DependencyUnavailable(f"git remote unreachable or failing: {text}")
        return DependencyUnavailable(f"git failed: {text}")

    def _locked(self, cycle_id: str, decisions: Sequence[Decision], push: bool) -> Execution:
        with self._lock, self._askpass():
            return self._apply(cycle_id, decisions, push)

    def _branch(self, cycle_id: str) -> str:
        if self.settings.git_mode == GitMode.BRANCH:
            return f"kubefinops/{re.sub(r'[^A-Za-z0-9._-]+', '-', cycle_id).strip('-.')}"
        return self.settings.git_branch

    def _open(self) -> git.Repo:
        if (self.workdir / ".git").is_dir():
            repo = git.Repo(self.workdir)
            git_dir = Path(repo.git_dir)
            if (git_dir / "rebase-merge").exists() or (git_dir / "rebase-apply").exists():
                with contextlib.suppress(DependencyUnavailable):  # a crash mid-rebase
                    self._run(repo, "rebase", "--abort")
            if repo.remotes.origin.url != self.url:
                self._run(repo, "remote", "set-url", "origin", self.url)
        else:
            if self.workdir.exists():
                shutil.rmtree(self.workdir)
            self.workdir.parent.mkdir(parents=True, exist_ok=True)
            try:
                git.Git().execute(
                    ["git", "clone", "--quiet", "--no-checkout", self.url, str(self.workdir)],
                    env=self._env(),
                )
            except git.GitCommandError as exc:
                raise self._translate(exc) from None
            repo = git.Repo(self.workdir)
        self._run(repo, "fetch", "--quiet", "--prune", "origin")
        return repo

    def _remote_has(self, repo: git.Repo, ref: str) -> bool:
        return bool(self._run(repo, "branch", "-r", "--list", ref.removeprefix("refs/remotes/")))

    def _find_cycle(self, repo: git.Repo, rev_range: str, cycle_id: str) -> str | None:
        return self._find_trailer(repo, rev_range, CYCLE_TRAILER, cycle_id)

    def _find_trailer(self, repo: git.Repo, rev_range: str, key: str, value: str) -> str | None:
        """The newest commit in ``rev_range`` with the trailer ``key: value``, or None."""
        out = self._run(
            repo, "log", "--format=%H", "--fixed-strings", f"--grep={key}: {value}", rev_range
        )
        for sha in out.split():
            trailers = patches.parse_trailers(str(repo.commit(sha).message))
            if value in trailers.get(key, []):
                return sha
        return None

    # --- the cycle ------------------------------------------------------------------------------
    def _apply(self, cycle_id: str, decisions: Sequence[Decision], push: bool) -> Execution:
        branch = self._branch(cycle_id)
        todo = patches.apply_decisions(decisions)
        if not todo:
            return self._result(cycle_id, [], "noop", None, branch, "no apply decisions")
        repo = self._open()
        base = f"origin/{self.settings.git_branch}"
        upstream = f"origin/{branch}" if self._remote_has(repo, f"origin/{branch}") else base
        done = self._find_cycle(repo, upstream, cycle_id) or (
            self._find_cycle(repo, base, cycle_id) if upstream != base else None
        )
        if done:
            return self._result(cycle_id, todo, "noop", done, branch, "cycle already on the remote")
        local = f"refs/heads/{branch}"
        pending = None
        if local in (h.path for h in repo.heads):
            pending = self._find_cycle(repo, f"{upstream}..{local}", cycle_id)
        held: dict[str, str] = {}
        if pending:  # committed by an earlier attempt that died before its push: push that
            self._run(repo, "checkout", "--quiet", "--force", branch)
            self._run(repo, "clean", "-fdq")
            ids = patches.parse_trailers(str(repo.commit(pending).message)).get(
                "Kubefinops-Decision", []
            )
            todo = select(todo, lambda d: d.id in ids) or todo
        else:
            sha, todo, detail = self._commit(repo, cycle_id, branch, upstream, todo, held)
            if sha is None:
                return self._result(cycle_id, todo, detail[0], None, branch, detail[1], held)
        if not push:
            sha = repo.head.commit.hexsha
            return self._result(cycle_id, todo, "committed", sha, branch, "not pushed", held)
        return self._push(repo, cycle_id, branch, upstream, todo, held)

    def _overlays(self, todo: DecisionLog) -> list[tuple[str, DecisionLog]]:
        """The overlays ``todo`` goes to (``gitops_overlay_path``, per namespace when it holds
        ``{namespace}``), each with its decisions in ``todo``'s order, nothing decoded."""
        ids: dict[str, set[str]] = {}
        for ref in todo.refs:
            rel = overlay_path(self.settings.gitops_overlay_path, namespace_of(ref.workload_id))
            ids.setdefault(rel, set()).add(ref.id)
        return [(rel, _with_ids(todo, keep)) for rel, keep in sorted(ids.items())]

    def _validate(self, todo: DecisionLog) -> str | None:
        """The first problem of the overlays ``todo`` touches, rendered and validated each."""
        for rel, group in self._overlays(todo):
            problem = validate_overlay(self.workdir / rel, group, self.kubernetes_version)
            if problem:
                return problem
        return None

    def _commit(
        self,
        repo: git.Repo,
        cycle_id: str,
        branch: str,
        upstream: str,
        todo: Sequence[Decision],
        held: dict[str, str],
    ) -> tuple[str | None, Sequence[Decision], tuple[Outcome, str]]:
        self._run(repo, "checkout", "--quiet", "--force", "-B", branch, upstream)
        self._run(repo, "clean", "-fdq")
        log_ = as_log(todo)
        kept: set[str] = set()
        bot_dirs: list[str] = []
        for rel, group in self._overlays(log_):
            overlay = self.workdir / rel
            if not (overlay / patches.KUSTOMIZATION).is_file():
                for ref in group.refs:
                    held[ref.workload_id] = f"no overlay at {rel} (gitops_overlay_path)"
                continue
            kept.update(ref.id for ref in identities(write_patches(overlay, group, held)))
            bot_dirs.append(str(overlay / patches.BOT_DIR))
        todo = log_.where(lambda r: r.id in kept)
        if not todo:
            return None, todo, ("held", held_detail(held))
        if not self._run(repo, "status", "--porcelain", "--", *bot_dirs):
            return None, todo, ("noop", "the remote already has these values")
        problem = self._validate(todo)
        if problem:
            self._run(repo, "checkout", "--quiet", "--force", branch)
            self._run(repo, "clean", "-fdq")
            why = f"rendered overlay is invalid, nothing committed: {problem}"
            return None, todo, ("failed", why)
        self._run(repo, "add", "--all", "--", *bot_dirs)
        message = patches.commit_message(cycle_id, todo)
        self._commit_message(repo, message)
        return repo.head.commit.hexsha, todo, ("committed", "")

    def _push(
        self,
        repo: git.Repo,
        cycle_id: str,
        branch: str,
        upstream: str,
        todo: Sequence[Decision],
        held: dict[str, str],
    ) -> Execution:
        for attempt in range(1, self.max_push_attempts + 1):
            try:
                self._run(repo, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
                GIT_PUSHES.labels(outcome="ok").inc()
                sha = repo.head.commit.hexsha
                detail = f"{len(held)} workload(s) held" if held else ""
                return self._result(cycle_id, todo, "pushed", sha, branch, detail, held)
            except _Rejected:
                GIT_PUSHES.labels(outcome="rejected").inc()
                log.info("push of cycle %s rejected (attempt %d); rebasing", cycle_id, attempt)
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
                self._run(repo, "fetch", "--quiet", "origin")
                if self._remote_has(repo, f"origin/{branch}"):
                    upstream = f"origin/{branch}"
                try:
                    self._rebase(repo, upstream)
                    problem = self._validate(as_log(todo))
                    if problem:  # the human change and ours do not fit together: drop ours
                        self._run(repo, "checkout", "--quiet", "--force", "-B", branch, upstream)
                        why = f"invalid after rebasing on the remote, nothing pushed: {problem}"
                        return self._result(cycle_id, todo, "failed", None, branch, why, held)
                except _Conflict as conflict:
                    todo = self._hold_conflicts(conflict.files, todo, held)
                    new_sha, todo, (outcome, why) = self._commit(
                        repo, cycle_id, branch, upstream, todo, held
                    )
                    if new_sha is None:
                        return self._result(cycle_id, todo, outcome, None, branch, why, held)
            except Exception:
                GIT_PUSHES.labels(outcome="error").inc()
                raise
        raise DependencyUnavailable(
            f"push of cycle {cycle_id} rejected {self.max_push_attempts} times; "
            "the commit stays local and is pushed on the next attempt"
        )

    # --- reverts --------------------------------------------------------------------------------
    def _locked_revert(self, v: Verification, push: bool) -> RevertResult:
        with self._lock, self._askpass():
            for attempt in range(1, self.max_push_attempts + 1):
                try:
                    return self._revert(v, push)
                except _Rejected:
                    GIT_PUSHES.labels(outcome="rejected").inc()
                    log.info("revert %s: push rejected (attempt %d); redoing it", v.id, attempt)
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise DependencyUnavailable(
            f"push of revert {v.id} rejected {self.max_push_attempts} times"
        )

    def _blob(self, repo: git.Repo, rev: str, path: str) -> dict[str, Any] | None:
        try:
            data = (repo.commit(rev).tree / path).data_stream.read()
        except (KeyError, ValueError):
            return None
        doc = patches.parse_yaml(data.decode("utf-8"))
        return doc if isinstance(doc, dict) else None

    def _revert(self, v: Verification, push: bool) -> RevertResult:
        """Put back, in one commit, the values ``v``'s commit changed in that workload's bot
        patch file — three-way, so fields changed again since and other workloads stay as they
        are.  A revert already on the remote (trailer ``Kubefinops-Verification``) is not made
        twice; one committed but not pushed by a process that died is pushed."""
        repo = self._open()
        branch = self._branch(f"revert-{v.id}")
        base = f"origin/{self.settings.git_branch}"
        upstream = f"origin/{branch}" if self._remote_has(repo, f"origin/{branch}") else base
        done = self._find_trailer(repo, upstream, VERIFICATION_TRAILER, v.id)
        if done:
            return RevertResult("noop", done, "revert already on the remote")
        local = f"refs/heads/{branch}"
        if local in (h.path for h in repo.heads) and self._find_trailer(
            repo, f"{upstream}..{local}", VERIFICATION_TRAILER, v.id
        ):
            self._run(repo, "checkout", "--quiet", "--force", branch)
            return self._push_revert(repo, branch, push, "pushed a revert committed earlier")
        change = v.commit_sha
        try:
            parents = repo.commit(change).parents
        except (ValueError, git.BadName):
            raise PermanentError(
                f"commit {change[:12]} of the change is not in the remote"
            ) from None
        overlay_rel = overlay_path(self.settings.gitops_overlay_path, v.namespace)
        rel = "/".join((overlay_rel, patches.BOT_DIR, patches.patch_filename(v.kind, v.name)))
        before = self._blob(repo, parents[0].hexsha, rel) if parents else None
        after = self._blob(repo, change, rel)
        self._run(repo, "checkout", "--quiet", "--force", "-B", branch, upstream)
        self._run(repo, "clean", "-fdq")
        current = self._blob(repo, "HEAD", rel)
        doc, kept = patches.revert_document(v.kind, v.name, before, after, current)
        if doc == current:
            why = "; ".join(kept) or "the file already has the previous values"
            return RevertResult("noop", None, f"nothing to revert: {why}")
        target = self.workdir / rel
        if doc is None:
            target.unlink()
        else:
            _atomic_write(target, patches.render_yaml(doc))
        bot_dir = target.parent
        files = [p.name for p in bot_dir.glob("*.yaml")]
        _atomic_write(bot_dir / patches.KUSTOMIZATION, patches.component_kustomization(files))
        problem = validate_overlay(self.workdir / overlay_rel, [], self.kubernetes_version)
        if problem:
            self._run(repo, "checkout", "--quiet", "--force", branch)
            return RevertResult("failed", None, f"reverted overlay is invalid: {problem}")
        self._run(repo, "add", "--all", "--", str(bot_dir))
        message = revert_message(v)
        self._commit_message(repo, message)
        detail = "; ".join(f"left alone: {k}" for k in kept)
        return self._push_revert(repo, branch, push, detail)

    def _push_revert(self, repo: git.Repo, branch: str, push: bool, detail: str) -> RevertResult:
        sha = repo.head.commit.hexsha
        if not push:
            return RevertResult("committed", sha, detail)
        try:
            self._run(repo, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        except _Rejected:
            raise
        except Exception:
            GIT_PUSHES.labels(outcome="error").inc()
            raise
        GIT_PUSHES.labels(outcome="ok").inc()
        return RevertResult("pushed", sha, detail)

    def _rebase(self, repo: git.Repo, upstream: str) -> None:
        try:
            self._run(repo, "rebase", "--quiet", upstream)
        except DependencyUnavailable:
            files = self._run(repo, "diff", "--name-only", "--diff-filter=U").split()
            with contextlib.suppress(DependencyUnavailable):
                self._run(repo, "rebase", "--abort")
            raise _Conflict(files) from None

    def _hold_conflicts(
        self, files: list[str], todo: Sequence[Decision], held: dict[str, str]
    ) -> Sequence[Decision]:
        names = {Path(f).name for f in files}

        def keep(decision: Decision) -> bool:
            fname = patches.patch_filename(decision.kind, decision.name)
            if fname in names:
                held[decision.workload_id] = (
                    f"a human changed bot-owned {patches.BOT_DIR}/{fname} concurrently "
                    "(not overwritten: review it, the next cycle retries)"
                )
                return False
            return True

        return select(todo, keep)

    def _result(
        self,
        cycle_id: str,
        todo: Sequence[Decision],
        outcome: Outcome,
        sha: str | None,
        branch: str,
        detail: str,
        held: dict[str, str] | None = None,
    ) -> Execution:
        return Execution.of(
            cycle_id,
            identities(todo),
            outcome,
            commit_sha=sha,
            branch=branch,
            detail=redact(detail, self._token),
            held={k: redact(v, self._token) for k, v in (held or {}).items()},
            executed_at=time.time(),
        )


def kubectl_kustomize(overlay: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise PermanentError("kubectl is not installed: cannot render the overlay")
    proc = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise PermanentError(f"kubectl kustomize failed: {proc.stderr.strip()[:2000]}")
    return proc.stdout


def overlay_path(template: str, namespace: str) -> str:
    """The overlay, relative to the repository root, that holds ``namespace``'s workloads:
    ``gitops_overlay_path`` with ``{namespace}`` replaced; without it, the estate's one overlay.

    One overlay per namespace (or team) is how a large estate is laid out: ``kubectl kustomize``
    is quadratic in the resources of one overlay (1,000 Deployments 3.6 s, 2,000 24 s, 4,000
    115 s here), and the writer renders each overlay it touches twice per cycle — an estate of
    10,000 workloads in one overlay would not fit the cycle timeout (docs/gitops.md)."""
    return template.replace("{namespace}", namespace).strip("/")


def namespace_of(workload: str) -> str:
    """``smarthealth/Deployment/patient-api`` -> ``smarthealth`` (a namespace has no ``/``)."""
    return workload.split("/", 1)[0]


def _with_ids(log: DecisionLog, ids: set[str]) -> DecisionLog:
    return log.where(lambda r: r.id in ids)


def held_detail(held: Mapping[str, str], show: int = 20) -> str:
    """Why a cycle was held, bounded (an execution's detail is at most 64 KiB; every reason
    stays in ``Execution.held``)."""
    items = sorted(held.items())
    text = "; ".join(f"{k}: {v}" for k, v in items[:show])
    if len(items) > show:
        text += f"; and {len(items) - show} more (Execution.held)"
    return text[: 60 * 1024]


@functools.lru_cache(maxsize=4)
def schema_validator(version: str) -> SchemaValidator:
    """One validator per Kubernetes version for the worker's life: its schemas load once."""
    return SchemaValidator(version)


def write_patches(
    overlay: Path, todo: Sequence[Decision], held: dict[str, str]
) -> Sequence[Decision]:
    """Write the bot's files for the decisions whose workload and containers the overlay has.

    The render is read one document at a time and ``todo`` decoded one decision at a time (a
    :class:`~engine.core.decision_log.DecisionLog` stays one: what is kept is its subset)."""
    try:
        present = patches.workload_containers(iter_documents(kubectl_kustomize(overlay)))
    except PermanentError as exc:
        for ref in identities(todo):
            held[ref.workload_id] = f"the overlay does not render before any change: {exc}"
        return []
    bot_dir = overlay / patches.BOT_DIR
    bot_dir.mkdir(parents=True, exist_ok=True)

    def write(decision: Decision) -> bool:
        missing = patches.missing_target(present, decision)
        if missing:
            held[decision.workload_id] = missing
            return False
        target = bot_dir / patches.patch_filename(decision.kind, decision.name)
        existing = None
        if target.exists():
            parsed = patches.parse_yaml(target.read_text(encoding="utf-8"))
            existing = parsed if isinstance(parsed, dict) else None
        _atomic_write(target, patches.render_yaml(patches.build_patch(decision, existing)))
        return True

    keep = select(todo, write)
    files = [p.name for p in bot_dir.glob("*.yaml")]
    _atomic_write(bot_dir / patches.KUSTOMIZATION, patches.component_kustomization(files))
    return keep


def validate_overlay(overlay: Path, todo: Sequence[Decision], version: str) -> str | None:
    """None when the overlay renders, passes strict schema validation and shows the decisions.

    Streamed: each rendered document is validated as it is read and only the workloads'
    container resources are kept (engine/adapters/manifests.py)."""
    try:
        text = kubectl_kustomize(overlay)
    except PermanentError as exc:
        return str(exc)
    validator = schema_validator(version)
    invalid: list[str] = []

    def validated() -> Iterator[dict[str, Any]]:
        for doc in iter_documents(text):
            try:
                validator.validate(doc)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                invalid.append(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
                return
            except kubernetes_validate.SchemaNotFoundError:
                pass  # CRDs have no bundled schema
            yield doc

    present = patches.workload_containers(validated())
    if invalid:
        return invalid[0]
    problem = patches.check_present(present, todo)
    kustomization = (overlay / patches.KUSTOMIZATION).read_text(encoding="utf-8")
    if problem and patches.BOT_DIR not in kustomization:
        problem += f" (the overlay does not include the '{patches.BOT_DIR}' component)"
    return problem


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
