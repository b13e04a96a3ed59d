"""Test upstreams: real git repositories on disk, and a loopback HTTP server in front of them.

The HTTP server runs the real `git http-backend`; it can demand an Authorization header, stall
(to test timeouts and half-made clones), and it records every header it received.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    out = subprocess.run(["git", *args], cwd=cwd, env=full_env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Upstream:
    """A non-bare repository acting as a CodeCollection's upstream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git("init", "-q", "-b", "main", cwd=path)
        self.counter = 0
        self.commit("initial")
        git("tag", "-a", "v1.0.0", "-m", "v1.0.0", cwd=path)
        git("branch", "develop", cwd=path)

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def commit(self, message: str, *, branch: str | None = None) -> str:
        if branch:
            git("checkout", "-q", "-B", branch, cwd=self.path)
        self.counter += 1
        (self.path / f"file{self.counter}.txt").write_text(f"{self.path.name}: {message}\n")
        git("add", "-A", cwd=self.path)
        git("commit", "-q", "-m", message, cwd=self.path)
        sha = self.sha("HEAD")
        if branch:
            git("checkout", "-q", "main", cwd=self.path)
        return sha

    def sha(self, rev: str) -> str:
        return git("rev-parse", rev, cwd=self.path)

    def refs(self, *prefixes: str) -> dict[str, str]:
        out = git("for-each-ref", "--format=%(objectname) %(refname)", *prefixes, cwd=self.path)
        return {name: sha for sha, name in (line.split(" ", 1) for line in out.splitlines())}


def mirror_refs(repo: Path) -> dict[str, str]:
    out = git("--git-dir", str(repo), "for-each-ref", "--format=%(objectname) %(refname)")
    return {name: sha for sha, name in (line.split(" ", 1) for line in out.splitlines())}


@dataclass
class HTTPUpstreamServer:
    """Serves every repo under `root` at http://127.0.0.1:<port>/<name> through git http-backend."""

    root: Path
    required_authorization: str | None = None
    stall_seconds: float = 0.0
    seen_authorization: list[str | None] = field(default_factory=list)
    url: str = ""

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}"


@contextmanager
def http_upstream(root: Path, *, required_authorization: str | None = None) -> Iterator[HTTPUpstreamServer]:
    state = HTTPUpstreamServer(root, required_authorization)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _cgi(self) -> None:
            auth = self.headers.get("Authorization")
            state.seen_authorization.append(auth)
            if state.required_authorization and auth != state.required_authorization:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if state.stall_seconds:
                time.sleep(state.stall_seconds)
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(state.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "safe.directory",
                "GIT_CONFIG_VALUE_0": "*",
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = out.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
