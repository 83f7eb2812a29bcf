"""A real Git remote for tests: bare repos served by ``git http-backend`` (smart HTTP) behind
HTTP basic auth, so the bot's token path (GIT_ASKPASS over HTTPS/HTTP) is exercised for real.

The server is a tiny ``http.server`` CGI wrapper run as its own process
(``python -m tests.harness.git_http``): it checks ``Authorization: Basic user:token`` (401 with a
``WWW-Authenticate`` challenge otherwise), then runs ``git http-backend`` with
``GIT_PROJECT_ROOT``/``GIT_HTTP_EXPORT_ALL``/``REMOTE_USER`` (``REMOTE_USER`` set enables pushes).

Fixture ``git_remote`` (session): a seeded repo ``smarthealth.git`` whose first commit holds the
``smarthealth-gitops`` folder.  Tests that change the remote call ``git_remote.fresh(name)`` for
their own seeded repo on the same server.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness.proc import Server, free_port, port_open, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ESTATE = REPO_ROOT / "smarthealth-gitops"
TOKEN_ENV = "GIT_HTTP_TEST_TOKEN"
SEED_AUTHOR = {
    "GIT_AUTHOR_NAME": "SmartHealth Platform",
    "GIT_AUTHOR_EMAIL": "platform@smarthealth.local",
    "GIT_COMMITTER_NAME": "SmartHealth Platform",
    "GIT_COMMITTER_EMAIL": "platform@smarthealth.local",
}


# --- the server (runs in its own process) -------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    root: str = ""
    user: str = ""
    token: str = ""

    def log_message(self, format: str, *args: object) -> None:
        status = args[1] if len(args) > 1 else ""
        sys.stderr.write(f"{self.command} {self.path.split('?')[0]} {status}\n")

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.user) and hmac.compare_digest(token, self.token)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": self.client_address[0],
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


def serve(root: str, port: int, user: str, token: str) -> None:
    handler = type("Handler", (_Handler,), {"root": root, "user": user, "token": token})
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


# --- the fixture -------------------------------------------------------------------------------
def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **SEED_AUTHOR}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def seed_bare_repo(bare: Path, branch: str = "main") -> None:
    """A bare repo whose first commit holds a copy of the ``smarthealth-gitops`` folder."""
    _git("init", "--bare", "--initial-branch", branch, str(bare))
    _git("config", "http.receivepack", "true", cwd=bare)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        _git("init", "--initial-branch", branch, str(work))
        shutil.copytree(ESTATE, work / "smarthealth-gitops")
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "feat: SmartHealth estate (initial import)", cwd=work)
        _git("push", "-q", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)


@dataclass
class GitRemote:
    url: str
    username: str
    token: str
    bare_path: Path
    server: Server
    base_url: str = ""

    def fresh(self, name: str) -> GitRemote:
        """Another seeded bare repo on the same server, for a test that changes the remote."""
        bare = self.bare_path.parent / f"{name}.git"
        if bare.exists():
            shutil.rmtree(bare)
        seed_bare_repo(bare)
        return GitRemote(
            f"{self.base_url}/{name}.git",
            self.username,
            self.token,
            bare,
            self.server,
            self.base_url,
        )

    def log(self, ref: str = "main", fmt: str = "%H") -> list[str]:
        out = _git("log", f"--format={fmt}%x00", ref, cwd=self.bare_path)
        return [e.strip("\n") for e in out.split("\x00") if e.strip("\n")]

    def changed_files(self, ref: str = "main") -> list[str]:
        return _git("show", "--name-only", "--format=", ref, cwd=self.bare_path).split()

    def show(self, path: str, ref: str = "main") -> str:
        return _git("show", f"{ref}:{path}", cwd=self.bare_path)


@pytest.fixture(scope="session")
def git_remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitRemote]:
    root = tmp_path_factory.mktemp("git-remote")
    repos = root / "repos"
    repos.mkdir()
    seed_bare_repo(repos / "smarthealth.git")
    port = free_port()
    token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    server = Server(
        "git-http",
        [
            sys.executable,
            "-m",
            "tests.harness.git_http",
            "--root",
            str(repos),
            "--port",
            str(port),
            "--user",
            "kubefinops-bot",
        ],
        log=root / "git-http.log",
        env={TOKEN_ENV: token},
        cwd=REPO_ROOT,
    ).start()
    try:
        wait_until(lambda: port_open(port), 15, "git http server", server.log)
        base = f"http://127.0.0.1:{port}"
        yield GitRemote(
            f"{base}/smarthealth.git",
            "kubefinops-bot",
            token,
            repos / "smarthealth.git",
            server,
            base,
        )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="git smart-HTTP server with basic auth (tests)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    ns = parser.parse_args()
    serve(ns.root, ns.port, ns.user, os.environ[TOKEN_ENV])
