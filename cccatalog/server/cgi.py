"""The CGI bridge to the native `git http-backend`: environment, request body in, streamed response out.

The CGI environment is built from an explicit list, never copied from os.environ (a REMOTE_USER in
the server's environment once let an anonymous push through). The backend is the dashed
`git-http-backend` from `git --exec-path`, run directly as nginx+fcgiwrap would, not through the `git`
wrapper (one process fewer per request). Its stdout, a 1 MiB pipe, goes to the client through the
sink's `stream_from` in large chunks, and stderr is drained on its own thread, so neither a huge pack
nor a chatty backend holds memory or stalls the request; the backend's process group is killed when
the client goes away or the request times out.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from cccatalog.gitmirror.deadlines import Watchdog
from cccatalog.server import handoff
from cccatalog.server.admission import client_gone

log = logging.getLogger("cccatalog.http_backend")  # the logger keeps its name: log filters select on it

CHUNK = 64 * 1024
_PIPE_SIZE = 1024 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_STDERR_LOG_LINES = 20
_GIT_PROTOCOL_RE = re.compile(r"[A-Za-z0-9=:._-]{0,256}")
# What the backend inherits from the server's environment: only what finding and running git needs.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ")


class ClientGone(ConnectionError):
    """The client closed the connection while we were sending."""


class ResponseSink(Protocol):
    """What the HTTP server gives the bridge to answer with."""

    def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def write(self, data: bytes) -> None: ...  # raises ClientGone
    def stream_from(self, fd: int) -> int: ...  # everything readable from `fd` until EOF; raises ClientGone
    # The end of a whole answer; `complete` is False when the backend failed after starting it.
    def finish(self, *, complete: bool = True) -> None: ...  # raises ClientGone


def copy_stream(fd: int, sink: ResponseSink) -> int:
    """The portable `stream_from`: read `fd` until EOF, hand each piece to `sink.write`."""
    sent = 0
    while chunk := os.read(fd, CHUNK):
        sink.write(chunk)
        sent += len(chunk)
    return sent


def backend_command(environ: Mapping[str, str], git: str = "git") -> list[str]:
    """`<exec-path>/git-http-backend` when git has one (as a web server runs it), else `git http-backend`."""
    try:
        out = subprocess.run(
            [git, "--exec-path"],
            env={k: environ[k] for k in _INHERITED if k in environ},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return [git, "http-backend"]
    dashed = Path(out) / "git-http-backend"
    return [str(dashed)] if out and os.access(dashed, os.X_OK) else [git, "http-backend"]


@dataclass(frozen=True, slots=True)
class CGIRequest:
    method: str
    path_info: str
    query: str
    content_type: str
    content_length: int | None
    content_encoding: str
    git_protocol: str
    remote_addr: str


@dataclass(frozen=True, slots=True)
class BackendOutcome:
    status: int
    body_bytes: int
    stderr_lines: int
    killed: str | None = None  # why the backend was killed, if it was


def cgi_environment(req: CGIRequest, *, project_root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Exactly the variables git http-backend needs; nothing from the caller leaks through."""
    env = {k: environ[k] for k in _INHERITED if k in environ}
    env.setdefault("PATH", os.defpath)
    git_protocol = req.git_protocol if _GIT_PROTOCOL_RE.fullmatch(req.git_protocol) else ""
    env.update(
        {
            "HOME": str(project_root),  # git wants one; nothing is read from it (global config is off)
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "PATH_INFO": req.path_info,
            "QUERY_STRING": req.query,
            "REQUEST_METHOD": req.method,
            "CONTENT_TYPE": req.content_type,
            "HTTP_CONTENT_ENCODING": req.content_encoding,
            "HTTP_GIT_PROTOCOL": git_protocol,
            "REMOTE_ADDR": req.remote_addr,
            # Command-line scope config: honoured for safe.directory, invisible in argv.
            "GIT_CONFIG_COUNT": "4",
            "GIT_CONFIG_KEY_0": "safe.directory",
            "GIT_CONFIG_VALUE_0": "*",  # the serving uid may not own the mirrors (bake, k8s fsGroup)
            "GIT_CONFIG_KEY_1": "uploadpack.allowFilter",
            "GIT_CONFIG_VALUE_1": "true",
            "GIT_CONFIG_KEY_2": "http.receivepack",
            "GIT_CONFIG_VALUE_2": "false",  # refused by routing already; refused here again
            "GIT_CONFIG_KEY_3": "http.getanyfile",
            # No dumb-protocol file access, except HEAD (part of the contract; the router lets no other
            # file through, and this keeps it so even if it did).
            "GIT_CONFIG_VALUE_3": "true" if req.path_info.endswith("/HEAD") else "false",
        }
    )
    if req.content_length is not None:
        env["CONTENT_LENGTH"] = str(req.content_length)
    return env


class HttpBackend:
    """Runs one `git http-backend` per request; tracks them so shutdown can kill stragglers.

    `git`, when given, is run as `<git> http-backend` (a wrapper that must see every request);
    otherwise the dashed backend is looked up once, on first use.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None, git: str | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self._command: list[str] | None = None if git is None else [git, "http-backend"]
        self._live: set[int] = set()
        self._live_lock = threading.Lock()
        self._deadlines = Watchdog()
        self.hand_offs = 0  # answers git wrote to the client's socket itself (`hand_off`), for /metrics

    @property
    def command(self) -> list[str]:
        if self._command is None:
            self._command = backend_command(self.environ)
        return self._command

    @property
    def running(self) -> int:
        """Backends running now (a gauge for /metrics and the status page; read without the lock)."""
        return len(self._live)

    def kill_all(self) -> int:
        """Kill every backend still running (shutdown after the grace period). Returns how many."""
        with self._live_lock:
            pids = list(self._live)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return len(pids)

    def run(
        self,
        req: CGIRequest,
        body: IO[bytes] | None,
        sink: ResponseSink,
        *,
        project_root: Path,
        timeout: float,
    ) -> BackendOutcome:
        proc, run = self._start(req, body, subprocess.PIPE, project_root=project_root, timeout=timeout)
        assert proc.stdout is not None
        status, sent = 502, 0
        stdout = proc.stdout.fileno()  # read raw: the buffered reader is never used, so holds nothing
        _grow_pipe(stdout)
        try:
            status, headers, first = _read_cgi_head(stdout)
            sink.start(status, headers)
            if first:
                sink.write(first)
                sent += len(first)
            sent += sink.stream_from(stdout)
            code = proc.wait()  # at EOF the backend is exiting; how it exits decides how the answer ends
            if not run.killed and not run.expired.is_set():  # a killed backend's answer is cut off
                sink.finish(complete=code == 0)
        except ClientGone:
            run.kill("client disconnected")
        except _BadCGI as exc:
            run.kill(str(exc))
            sink.start(502, [("Content-Type", "text/plain")])
            sink.write(b"bad gateway: the git backend failed\n")
            sink.finish()
        finally:
            if proc.poll() is None and not run.killed:
                proc.stdout.close()  # nothing more to read: a backend still writing gets SIGPIPE
            self._end(run)
        return run.outcome(status, sent, timeout)

    def hand_off(
        self,
        req: CGIRequest,
        body: IO[bytes],
        sock: socket.socket,
        *,
        head: bytes,
        project_root: Path,
        timeout: float,
        idle_timeout: float,
    ) -> BackendOutcome:
        """Answer with `sock` as the backend's stdout (see `handoff`): `head` (a status line and headers
        without the blank line) first, then whatever the backend writes. The caller closes the
        connection afterwards; a backend that did not finish leaves it marked for a reset."""
        before = handoff.written(sock)
        self.hand_offs += 1
        idle = sock.gettimeout()
        sock.setblocking(True)  # git's stdout: writes wait for room instead of failing
        handoff.cork(sock, True)
        try:
            sock.sendall(head)
            proc, run = self._start(req, body, sock.fileno(), project_root=project_root, timeout=timeout)
            try:
                why = handoff.watch(sock, proc, idle_timeout=idle_timeout, gone=client_gone)
                if why is not None:
                    run.kill(why)
            finally:
                self._end(run)
            cut = bool(run.killed) or run.expired.is_set()
            sent = 0
            with suppress(OSError):  # a client that reset the connection has nothing left to tell
                sent = max(0, handoff.written(sock) - before - len(head))
                if cut or proc.returncode != 0:
                    handoff.end_broken(sock, drain=not cut, gone=client_gone)
                else:  # whole: the client sees the end now, not after the access log is written
                    handoff.cork(sock, False)
                    sock.shutdown(socket.SHUT_WR)
        finally:
            sock.settimeout(idle)
        return run.outcome(200, sent, timeout)

    def _start(
        self,
        req: CGIRequest,
        body: IO[bytes] | None,
        stdout: int,
        *,
        project_root: Path,
        timeout: float,
    ) -> tuple[subprocess.Popen[bytes], _Run]:
        env = cgi_environment(req, project_root=project_root, environ=self.environ)
        proc = subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.PIPE if body is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,  # so one kill takes upload-pack and pack-objects with it
        )
        assert proc.stderr is not None
        with self._live_lock:
            self._live.add(proc.pid)
        run = _Run(proc, self._deadlines.watch(proc, timeout))
        run.threads.append(
            threading.Thread(target=_drain_stderr, args=(proc.stderr, req, run.stderr_lines), daemon=True)
        )
        if body is not None:
            run.threads.append(threading.Thread(target=_feed_stdin, args=(proc, body), daemon=True))
        for t in run.threads:
            t.start()
        return proc, run

    def _end(self, run: _Run) -> None:
        run.proc.wait()
        self._deadlines.forget(run.expired)
        with self._live_lock:
            self._live.discard(run.proc.pid)
        for t in run.threads:
            t.join(timeout=5)


class _Run:
    """One running backend: its deadline, its helper threads, and whether (and why) it was killed."""

    def __init__(self, proc: subprocess.Popen[bytes], expired: threading.Event) -> None:
        self.proc = proc
        self.expired = expired
        self.threads: list[threading.Thread] = []
        self.stderr_lines = [0]
        self.killed: list[str] = []

    def kill(self, reason: str) -> None:
        if self.proc.poll() is None:
            self.killed.append(reason)
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def outcome(self, status: int, sent: int, timeout: float) -> BackendOutcome:
        if self.expired.is_set():
            self.killed.insert(0, f"request took longer than {timeout:.0f}s")
        return BackendOutcome(status, sent, self.stderr_lines[0], self.killed[0] if self.killed else None)


class _BadCGI(Exception):
    pass


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe (Linux; the default is 64 KiB): fewer wake-ups per pack for backend and server."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size; the default size works too
            fcntl.fcntl(fd, setpipe, _PIPE_SIZE)


def _read_cgi_head(stdout: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """Parse CGI headers (`Status:` gives the code): status, headers, and body bytes read past them."""
    buf = b""
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            if sep in buf:
                head, _, rest = buf.partition(sep)
                return (*_parse_head(head), rest)
        if len(buf) > _MAX_HEADER_BYTES:
            raise _BadCGI("backend sent oversized headers")
        more = os.read(stdout, CHUNK)
        if not more:
            raise _BadCGI("backend exited without a response")
        buf += more


def _parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").replace("\r\n", "\n").split("\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if name.strip().lower() == "status":
            code = value.strip().split(" ", 1)[0]
            status = int(code) if code.isdigit() else 502
        else:
            headers.append((name.strip(), value.strip()))
    return status, headers


def _feed_stdin(proc: subprocess.Popen[bytes], body: IO[bytes]) -> None:
    assert proc.stdin is not None
    try:
        while chunk := body.read(CHUNK):
            proc.stdin.write(chunk)
    except (BrokenPipeError, OSError):
        pass  # the backend stopped reading; its exit status and stderr tell the story
    finally:
        with suppress(OSError):
            proc.stdin.close()


def _drain_stderr(stderr: IO[bytes], req: CGIRequest, count: list[int]) -> None:
    """Read stderr to its end whatever its size; log its first lines as one record, count the rest.
    One record, not one per line: git echoes a client's bytes in its messages (`invalid command
    'x<LF>y'`), and a newline there must not start a record of the client's making."""
    shown: list[str] = []
    for raw in iter(lambda: stderr.readline(4096), b""):  # bounded: a line without newline cannot grow
        count[0] += 1
        if count[0] <= _STDERR_LOG_LINES:
            shown.append(raw.decode("utf-8", "replace").rstrip("\r\n")[:500])
    if shown:
        more = f" ({count[0] - len(shown)} more stderr lines not shown)" if count[0] > len(shown) else ""
        log.warning("git http-backend %s: %s%s", req.path_info, "\n".join(shown), more)
