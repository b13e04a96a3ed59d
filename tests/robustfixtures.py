"""Helpers for serve robustness tests: raw HTTP, stand-in `git` scripts, pkt-lines, process inspection.

httpx normalises paths (`..`, `//`, `%2e`), so hostile requests go out through `http.client` or a raw
socket, byte for byte as written here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.gitfixtures import Upstream, git

REAL_GIT = shutil.which("git") or "git"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def detail(self) -> object:
        """The `detail` of a JSON error body (KeyError/ValueError when the body is not one)."""
        payload = json.loads(self.body)
        assert isinstance(payload, dict), payload
        return payload["detail"]


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None, base_url
    assert parts.port is not None, base_url
    return parts.hostname, parts.port


def raw_request(
    base_url: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
    source: str | None = None,
) -> Reply:
    """One request with `target` sent verbatim (no normalisation), on a fresh connection; from the
    loopback address `source` (any 127.x.y.z) when given."""
    host, port = address(base_url)
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def read_reply(sock: socket.socket) -> Reply:
    """Parse the HTTP answer arriving on `sock` (a request sent by hand)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    try:
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        resp.close()


def git_wrapper(tmp_path: Path, name: str, before_exec: str) -> Path:
    """A `git` stand-in: runs the shell snippet `before_exec`, then execs the real git with the same argv."""
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f'#!/bin/sh\n{before_exec}\nexec "{REAL_GIT}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def logging_git(tmp_path: Path) -> tuple[Path, Path]:
    """A `git` that appends `argv | REQUEST_METHOD | PATH_INFO` to a log before running the real git."""
    log = tmp_path / "git-argv.log"
    log.touch()
    script = git_wrapper(
        tmp_path, "git-logging", f'printf "%s | %s | %s\\n" "$*" "$REQUEST_METHOD" "$PATH_INFO" >> "{log}"'
    )
    return script, log


def add_random_blobs(up: Upstream, *, megabytes: int, files: int = 3) -> str:
    """Commit `megabytes` of incompressible data in `files` blobs; returns the new HEAD."""
    for i in range(files):
        (up.path / f"random{i}.bin").write_bytes(os.urandom(megabytes * 1024 * 1024 // files))
    git("add", "-A", cwd=up.path)
    git("commit", "-q", "-m", f"{megabytes} MB of random data", cwd=up.path)
    return up.sha("HEAD")


def branch_of_random_data(up: Upstream, branch: str, size: int, tmp_path: Path) -> str:
    """A commit of its own (no parent) holding `size` bytes of incompressible data, on `branch`."""
    data = tmp_path / f"{branch}.bin"
    data.write_bytes(os.urandom(size))
    blob = git("hash-object", "-w", str(data), cwd=up.path)
    tree = subprocess.run(
        ["git", "mktree"],
        input=f"100644 blob {blob}\tblob.bin\n",
        cwd=up.path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    head = git("commit-tree", tree, "-m", branch, cwd=up.path)
    git("update-ref", f"refs/heads/{branch}", head, cwd=up.path)
    return head


def pkt_line(payload: bytes) -> bytes:
    return b"%04x%s" % (len(payload) + 4, payload)


def pkt_lines(data: bytes) -> list[bytes]:
    """Split a pkt-line stream; flush packets come back as b""."""
    out: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        size = int(data[pos : pos + 4], 16)
        if size == 0:
            out.append(b"")
            pos += 4
            continue
        out.append(data[pos + 4 : pos + size])
        pos += size
    return out


def processes_touching(path: Path) -> list[str]:
    """Command lines of processes (not this one) whose argv, cwd or environment mention `path`."""
    needle = str(path)
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone, or a zombie: neither holds the repo
        if needle in cmdline or cwd.startswith(needle) or needle in environ:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found
