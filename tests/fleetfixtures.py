"""Helpers for the fleet tests (admission queue, pack cache): a backend held at a gate, requests from
chosen client addresses, the platform's shallow fetch, and what a clone holds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.gitfixtures import git
from tests.robustfixtures import Reply, git_wrapper, pkt_line, raw_request

UP = "?service=git-upload-pack"
UPLOAD_HEADERS = {
    "Content-Type": "application/x-git-upload-pack-request",
    "Accept": "application/x-git-upload-pack-result",
}


@dataclass(frozen=True)
class Gate:
    """A `git` whose http-backend logs `REMOTE_ADDR METHOD PATH_INFO`, then waits for the gate to open."""

    git: Path
    started: Path
    gate: Path

    def open(self) -> None:
        self.gate.touch()

    def lines(self) -> list[str]:
        return self.started.read_text().splitlines()


def gated_git(tmp_path: Path) -> Gate:
    started, gate = tmp_path / "started.log", tmp_path / "gate"
    started.touch()
    script = git_wrapper(
        tmp_path,
        "git-gated",
        'if [ "$1" = http-backend ]; then\n'
        f'  echo "$REMOTE_ADDR $REQUEST_METHOD $PATH_INFO" >> "{started}"\n'
        f'  while [ ! -e "{gate}" ]; do sleep 0.02; done\n'
        "fi",
    )
    return Gate(script, started, gate)


def request_from(
    base_url: str,
    method: str,
    target: str,
    *,
    source: str = "127.0.0.1",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """One request on a fresh connection from the loopback address `source` (any 127.x.y.z)."""
    return raw_request(base_url, method, target, headers=headers, body=body, timeout=timeout, source=source)


def want_request(*wants: str, depth: int | None = None) -> bytes:
    """A protocol v0 upload-pack request: these wants (side-band-64k), optionally shallow, and done."""
    lines = [pkt_line(f"want {wants[0]} side-band-64k ofs-delta\n".encode())]
    lines += [pkt_line(f"want {w}\n".encode()) for w in wants[1:]]
    if depth is not None:
        lines.append(pkt_line(f"deepen {depth}\n".encode()))
    return b"".join(lines) + b"0000" + pkt_line(b"done\n")


def upload_pack(base_url: str, slug: str, body: bytes, *, source: str = "127.0.0.1") -> Reply:
    return request_from(
        base_url, "POST", f"/git/{slug}/git-upload-pack", source=source, body=body, headers=UPLOAD_HEADERS
    )


def platform_fetch(url: str, dest: Path, *, protocol: int = 2) -> subprocess.CompletedProcess[str]:
    """What the platform's fetcher does for a new runner: a fresh repo, `fetch --depth=2 --tags`."""
    git("init", "-q", str(dest))
    return subprocess.run(
        [
            "git",
            "-C",
            str(dest),
            "-c",
            f"protocol.version={protocol}",
            "fetch",
            "-q",
            "--depth=2",
            "--tags",
            url,
            "+refs/heads/*:refs/remotes/origin/*",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def holdings(repo: Path) -> tuple[str, str, str]:
    """What a fetch gave a repository: its refs, every object it has, its shallow boundary."""
    refs = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)
    objects = git("cat-file", "--batch-all-objects", "--batch-check", cwd=repo)
    shallow_file = repo / ".git" / "shallow" if (repo / ".git").is_dir() else repo / "shallow"
    shallow = "\n".join(sorted(shallow_file.read_text().split())) if shallow_file.exists() else ""
    return refs, objects, shallow


def fsck(repo: Path) -> None:
    git("fsck", "--strict", "--no-progress", cwd=repo)


def pack_data(answer: bytes) -> bytes:
    """The pack in a side-band answer (band 1, demultiplexed). Only this is a function of the request:
    how upload-pack cuts it into packets depends on how its pipe from pack-objects was read, and the
    progress messages (band 2) carry timings."""
    out, pos = bytearray(), 0
    while pos + 4 <= len(answer):
        size = int(answer[pos : pos + 4], 16)
        if size < 4:  # flush, delim (protocol v2's sections), end
            pos += 4
            continue
        if answer[pos + 4 : pos + 5] == b"\x01":
            out += answer[pos + 5 : pos + size]
        pos += size
    return bytes(out)
