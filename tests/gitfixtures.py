"""Test upstreams: real git repositories on disk, and a loopback HTTP server in front of them.

The HTTP server runs the real `git http-backend`; it can demand an Authorization header, stall
(to test timeouts and half-made clones), and it records every request with its headers. Per
repository name it can also misbehave as hostile or broken upstreams do (see `Behaviour`): answer
401 or 500, redirect elsewhere, close the connection halfway through a pack, or hold one kind of
request until the test releases it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
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


# Which request a `Behaviour` holds: the ref advertisement (GET info/refs), or a protocol v2 command
Stage = Literal["advertisement", "ls-refs", "fetch"]
MAX_HOLD_SECONDS = 60.0  # a held request is let go after this long, whatever the test does


@dataclass
class Behaviour:
    """How the upstream answers the requests for one repository name (the first path segment)."""

    status: int | None = None  # answer every request with this status (401 asks for Basic auth)
    redirect_to: str | None = None  # 302 to this URL + the rest of the path after the name
    redirect_only: Stage | None = None  # redirect only that request (default: every request)
    serve_as: str | None = None  # serve the repository of this name instead
    hold: Stage | None = None  # hold that request until `HTTPUpstreamServer.release` is set
    cut_pack: bool = False  # answer a fetch with half of its pack, then close the connection


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class HTTPUpstreamServer:
    """Serves every repo under `root` at http://127.0.0.1:<port>/<name> through git http-backend."""

    root: Path
    required_authorization: str | None = None
    stall_seconds: float = 0.0
    seen_authorization: list[str | None] = field(default_factory=list)
    requests: list[SeenRequest] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    held: threading.Event = field(default_factory=threading.Event)  # set while a request is held
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def repo_url(self, name: str, *, host: str = "127.0.0.1") -> str:
        return f"{self.url.replace('127.0.0.1', host)}/{name}"


def _stage(method: str, path: str, body: bytes, headers: dict[str, str]) -> Stage | None:
    if method == "GET" and path.endswith("/info/refs"):
        return "advertisement"
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    if b"command=fetch" in body:
        return "fetch"
    return "ls-refs" if b"command=ls-refs" in body else None


@contextmanager
def http_upstream(root: Path, *, required_authorization: str | None = None) -> Iterator[HTTPUpstreamServer]:
    state = HTTPUpstreamServer(root, required_authorization)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle(self) -> None:
            # the client went away (a test killed it, or it timed out): nothing to answer
            with contextlib.suppress(ConnectionError):
                super().handle()

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _answer(self, status: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _cgi(self) -> None:
            auth = self.headers.get("Authorization")
            request_headers = self._headers()
            state.seen_authorization.append(auth)
            state.requests.append(SeenRequest(self.command, self.path, request_headers))
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            name, _, rest = parts.path.lstrip("/").partition("/")
            behaviour = state.behaviours.get(name, Behaviour())
            if behaviour.status == 401 or (
                state.required_authorization and auth != state.required_authorization
            ):
                self._answer(401, (("WWW-Authenticate", 'Basic realm="test"'),))
                return
            if behaviour.status:
                self._answer(behaviour.status)
                return
            stage = _stage(self.command, parts.path, body, request_headers)
            if behaviour.redirect_to and behaviour.redirect_only in (None, stage):
                query = f"?{parts.query}" if parts.query else ""
                self._answer(302, (("Location", f"{behaviour.redirect_to}/{rest}{query}"),))
                return
            if behaviour.hold and behaviour.hold == stage:
                state.held.set()
                state.release.wait(MAX_HOLD_SECONDS)
            if state.stall_seconds:
                time.sleep(state.stall_seconds)
            path_info = f"/{behaviour.serve_as}/{rest}" if behaviour.serve_as else parts.path
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(state.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path_info,
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
            if behaviour.cut_pack and stage == "fetch":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(payload)

        def _headers(self) -> dict[str, str]:
            return {k.lower(): v for k, v in self.headers.items()}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
