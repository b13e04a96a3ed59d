"""Helpers for the HTTP security suite: raw bytes in, raw answers out, records of every git backend
started and of every log record written, and a `serve` process whose backends are counted.

Requests are written byte for byte (no client library would send a chunk size of `-1` or two
Content-Lengths); answers are read without trusting their framing, since a broken one is the finding.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.robustfixtures import REAL_GIT, address, git_wrapper

BACKEND_LOG = "backend-starts.log"


@dataclass(frozen=True)
class RawAnswer:
    """What came back on a connection: the first answer's status line, headers and everything after."""

    status_line: bytes
    headers: dict[str, str]
    rest: bytes  # the body and anything the server sent after it
    closed: bool  # the server closed the connection (EOF) before the read timed out

    @property
    def body(self) -> bytes:
        """The body, de-chunked when it was sent chunked."""
        if self.headers.get("transfer-encoding") != "chunked":
            return self.rest
        out, rest = b"", self.rest
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return out
            out, rest = out + rest[:size], rest[size + 2 :]

    @property
    def status(self) -> int:
        parts = self.status_line.split(b" ", 2)
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def exchange(
    base_url: str,
    data: bytes,
    *,
    half_close: bool = True,
    timeout: float = 10,
    source: str | None = None,
) -> RawAnswer | None:
    """Send `data`, optionally end the sending side, read until EOF or `timeout`. None: nothing came back.

    A server that refuses a request may close with request bytes unread, which resets the connection
    and can destroy its answer in flight: a reset without an answer is reported as None.
    """
    received, closed = exchange_raw(base_url, data, half_close=half_close, timeout=timeout, source=source)
    return parse_answer(received, closed=closed)


def exchange_raw(
    base_url: str, data: bytes, *, half_close: bool = True, timeout: float = 10, source: str | None = None
) -> tuple[bytes, bool]:
    """Everything the server sent back, and whether it closed the connection before `timeout`."""
    received = b""
    closed = False
    with socket.create_connection(
        address(base_url), timeout=timeout, source_address=(source, 0) if source else None
    ) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server stopped reading: its answer, if any, is still readable
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
        except OSError:
            closed = True
    return received, closed


def count_answers(received: bytes) -> int:
    """How many whole answers (status line, headers, framed body) `received` holds, one after another."""
    count = 0
    rest = received
    while rest.startswith(b"HTTP/1."):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return count
        count += 1
        if head.startswith(b"HTTP/1.1 1"):
            continue  # an interim answer: the final one follows
        answer = parse_answer(head + sep, closed=False)
        assert answer is not None
        if "content-length" in answer.headers:
            rest = rest[int(answer.headers["content-length"]) :]
        elif answer.headers.get("transfer-encoding") == "chunked":
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line or b"0", 16)
                rest = rest[size + 2 :] if size else rest.partition(b"\r\n")[2]
                if not size:
                    break
        else:
            return count  # the answer runs to the close
    return count


def parse_answer(received: bytes, *, closed: bool) -> RawAnswer | None:
    if not received:
        return None
    head, sep, rest = received.partition(b"\r\n\r\n")
    while sep and head.startswith(b"HTTP/1.1 1") and rest:  # an interim answer (100 Continue)
        head, sep, rest = rest.partition(b"\r\n\r\n")
    if not sep:
        return RawAnswer(received.split(b"\r\n", 1)[0], {}, b"", closed)
    status_line, *lines = head.split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("iso-8859-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(status_line, headers, rest, closed)


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body


def chunked(*pieces: bytes) -> bytes:
    """A well-formed chunked body of `pieces`."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def backend_starts(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def counting_backend_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment for a `serve` process whose every `git-http-backend` start is appended to a log.

    serve runs the dashed backend found through `git --exec-path`; the `git` first on PATH points
    that at a directory whose `git-http-backend` records `METHOD PATH_INFO`, then runs the real one.
    """
    log = tmp_path / BACKEND_LOG
    exec_dir = tmp_path / "libexec-counting"
    exec_dir.mkdir()
    real = Path(subprocess.check_output([REAL_GIT, "--exec-path"], text=True).strip()) / "git-http-backend"
    backend = exec_dir / "git-http-backend"
    backend.write_text(f'#!/bin/sh\necho "$REQUEST_METHOD $PATH_INFO" >> "{log}"\nexec "{real}"\n')
    backend.chmod(0o755)
    wrapper = git_wrapper(tmp_path, "git", f'if [ "$1" = --exec-path ]; then echo "{exec_dir}"; exit 0; fi')
    return {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}, log


class Records(logging.Handler):
    """Every record of a logger and its children, formatted with any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def errors(self) -> list[str]:
        """Records at ERROR or above, or carrying a traceback: what an unhandled exception leaves."""
        return [
            line
            for record, line in zip(self.records, self.lines, strict=True)
            if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in line
        ]


@contextmanager
def captured_logs(name: str = "cccatalog") -> Iterator[Records]:
    """Capture `name` and its children at DEBUG; the loggers' levels are put back afterwards."""
    loggers = [logging.getLogger(n) for n in (name, f"{name}.access", f"{name}.serve")]
    levels = [lg.level for lg in loggers]
    records = Records()
    loggers[0].addHandler(records)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        loggers[0].removeHandler(records)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class StderrLines:
    """Collects a process's stderr lines on a thread, so they can be checked while it runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        with suppress(ValueError, OSError):
            for line in stream:  # type: ignore[attr-defined]
                with self._lock:
                    self.lines.append(line)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")
