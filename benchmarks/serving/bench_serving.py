#!/usr/bin/env python3
"""Serving benchmark: `cccatalog serve` side by side with what users would run instead.

It owns everything one run needs, all on 127.0.0.1 and all on the same bare repos:

- fixtures: a deterministic generated repo (seeded incompressible blobs through `git fast-import`; a
  ≥200 MB pack and ≥1,000 refs at `--size full`) and a small repo with many annotated tags, both
  mirrored by the real `cccatalog sync` from file:// upstreams, so bitmaps and commit-graph are as in
  production;
- request bodies captured once from real git clients (through a recording proxy), replayed by a raw
  HTTP / git:// client that streams every response to nowhere;
- the servers: `cccatalog serve`, nginx + fcgiwrap + `git http-backend`, `git daemon`, and the floor,
  `git upload-pack --stateless-rpc` fed the captured body directly;
- the accounting (throughput, p50/p99, errors, server CPU of the whole process tree from a cgroup of
  its own, peak and growth of the server's RSS, CPU used by anything else on the machine) and the
  ratio tables, printed and written as JSON.

    python benchmarks/serving/bench_serving.py --size smoke
    python benchmarks/serving/bench_serving.py --size full --json-out serving-full.json
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Literal

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
GIT = shutil.which("git") or "git"
FIXTURE_VERSION = 1
EPOCH = 1_600_000_000
BIG = "bench-big"
MANY = "bench-manyrefs"
SERVERS = (
    "cccatalog",
    "cccatalog-packcache",
    "cccatalog-nocache",
    "nginx-fcgiwrap",
    "git-daemon",
    "raw-upload-pack",
)
APT_PACKAGES = ("nginx-light", "fcgiwrap")
RECV = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- sizes and mixes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    files: int  # paths in the big repo's tree; the first commit adds them all
    commits: int  # commits before the incremental fetch's client snapshot
    new_commits: int  # commits after it: what the incremental fetch gets
    blobs_per_commit: int
    blob_bytes: tuple[int, int]
    branches: int  # feature branches at seeded commits of the big repo
    moved_branches: int  # of those, moved onto new commits after the snapshot
    many_tags: int  # annotated tags in the many-refs repo
    concurrency: tuple[int, ...]
    requests: dict[str, tuple[int, int]]  # mix class -> (minimum per round, per connection)
    rounds: int  # each cell is measured in rounds, the servers taking turns, so drift hits all alike
    cell_seconds: float  # no new request starts after this (once every connection had one)
    request_timeout: float


SIZES = {
    "full": Size(
        name="full",
        files=100,
        commits=420,
        new_commits=10,
        blobs_per_commit=5,
        blob_bytes=(60 * 1024, 140 * 1024),
        branches=700,
        moved_branches=20,
        many_tags=5000,
        concurrency=(1, 4, 8, 16),
        requests={"advert": (50, 4), "clone": (2, 1), "fetch": (8, 1)},
        rounds=3,
        cell_seconds=30.0,
        request_timeout=180.0,
    ),
    "smoke": Size(
        name="smoke",
        files=8,
        commits=12,
        new_commits=2,
        blobs_per_commit=2,
        blob_bytes=(16 * 1024, 48 * 1024),
        branches=30,
        moved_branches=3,
        many_tags=300,
        concurrency=(1, 2),
        requests={"advert": (3, 1), "clone": (2, 1), "fetch": (2, 1)},
        rounds=1,
        cell_seconds=3.0,
        request_timeout=30.0,
    ),
}

MixClass = Literal["advert", "clone", "fetch"]


@dataclass(frozen=True, slots=True)
class Mix:
    name: str
    repo: str
    cls: MixClass
    capture: str | None  # the captured v2 POST it replays; None: a v0 GET info/refs advertisement
    # Every request a different body (a `have` of an object nobody has) asking for the same pack:
    # no pack cache can answer it, so it measures what a cache miss costs. Run only for `servers`.
    distinct: bool = False
    servers: tuple[str, ...] | None = None

    def runs_on(self, server: str) -> bool:
        return self.servers is None or server.startswith(self.servers)


MIXES = (
    Mix("info-refs", BIG, "advert", None),
    Mix("info-refs-manyrefs", MANY, "advert", None),
    Mix("ls-refs", BIG, "advert", "ls-refs-big"),
    Mix("ls-refs-manyrefs", MANY, "advert", "ls-refs-many"),
    Mix("full-clone", BIG, "clone", "clone"),
    Mix("full-clone-miss", BIG, "clone", "clone", distinct=True, servers=("cccatalog", "raw-upload-pack")),
    Mix("incremental-fetch", BIG, "fetch", "fetch"),
    Mix("depth-1", BIG, "fetch", "depth-1"),
    Mix("filter-blob-none", BIG, "fetch", "filter"),
)


def request_count(size: Size, mix: Mix, n: int) -> int:
    """Requests per server per round."""
    minimum, per_conn = size.requests[mix.cls]
    return max(minimum, n * per_conn)


# --- small helpers -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def git_env(home: Path, **extra: str) -> dict[str, str]:
    """A git environment that reads no user or system config: runs are the same on every machine."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        **extra,
    }


def run(argv: Sequence[str], *, env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    result = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


# --- fixtures: generated repos -----------------------------------------------------------------------


def _fast_import(repo: Path, env: dict[str, str], write: Callable[[IO[bytes]], None]) -> None:
    proc = subprocess.Popen(
        [GIT, "-C", str(repo), "fast-import", "--quiet", "--done"], stdin=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    try:
        write(proc.stdin)
        proc.stdin.write(b"done\n")
    finally:
        proc.stdin.close()
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"git fast-import into {repo} failed")


def _commit_head(out: IO[bytes], ref: str, mark: int, index: int, message: bytes) -> None:
    ts = EPOCH + index * 3600
    out.write(b"commit %s\nmark :%d\n" % (ref.encode(), mark))
    out.write(b"author Bench <bench@example.invalid> %d +0000\n" % ts)
    out.write(b"committer Bench <bench@example.invalid> %d +0000\n" % ts)
    out.write(b"data %d\n%s\n" % (len(message), message))


def _annotated_tag(out: IO[bytes], name: str, mark: int, index: int) -> None:
    message = b"release %s\n" % name.encode()
    out.write(b"tag %s\nfrom :%d\n" % (name.encode(), mark))
    out.write(b"tagger Bench <bench@example.invalid> %d +0000\n" % (EPOCH + index * 3600))
    out.write(b"data %d\n%s\n" % (len(message), message))


def _big_stage(out: IO[bytes], size: Size, rng: random.Random, *, stage: int) -> None:
    """Stage 1 is the history a returning client already has; stage 2 what its incremental fetch gets."""
    paths = [f"src/d{k % 10}/f{k:03d}.bin".encode() for k in range(size.files)]
    first, count = (0, size.commits) if stage == 1 else (size.commits, size.new_commits)
    lo, hi = size.blob_bytes
    for offset in range(count):
        index = first + offset
        _commit_head(out, "refs/heads/main", offset + 1, index, b"change %d" % index)
        if stage == 2 and offset == 0:
            out.write(b"from refs/heads/main^0\n")
        for path in paths if index == 0 else rng.sample(paths, size.blobs_per_commit):
            blob = rng.randbytes(rng.randint(lo, hi))  # incompressible: the pack is as big as the data
            out.write(b"M 100644 inline %s\ndata %d\n" % (path, len(blob)))
            out.write(blob)
            out.write(b"\n")
        out.write(b"\n")
        _annotated_tag(out, f"v{stage}.{offset}", offset + 1, index)
    if stage == 1:
        for b in range(size.branches):
            out.write(b"reset refs/heads/feature/%04d\nfrom :%d\n\n" % (b, rng.randint(1, count)))
    else:
        for b in range(size.moved_branches):
            out.write(b"reset refs/heads/feature/%04d\nfrom :%d\n\n" % (b, rng.randint(1, count)))


def _many_refs(out: IO[bytes], size: Size) -> None:
    commits = 20
    for i in range(commits):
        _commit_head(out, "refs/heads/main", i + 1, i, b"small change %d" % i)
        text = b"line %d\n" % i * 50
        out.write(b"M 100644 inline README\ndata %d\n%s\n\n" % (len(text), text))
    for t in range(size.many_tags):
        _annotated_tag(out, f"r{t:05d}", t % commits + 1, t)


def make_upstreams(work: Path, size: Size, seed: int) -> dict[str, object]:
    """The two upstream repos, plus the snapshot a returning client has of the big one."""
    env = git_env(work / "home")
    up = work / "upstream"
    big, many, client = up / f"{BIG}.git", up / f"{MANY}.git", work / "client-before.git"
    for repo in (big, many):
        run([GIT, "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], env=env, timeout=60)
    rng = random.Random(seed)  # noqa: S311 - reproducible fixture data, not cryptography
    started = time.monotonic()
    _fast_import(big, env, lambda out: _big_stage(out, size, rng, stage=1))
    run([GIT, "clone", "--quiet", "--mirror", str(big), str(client)], env=env, timeout=600)
    _fast_import(big, env, lambda out: _big_stage(out, size, rng, stage=2))
    _fast_import(many, env, lambda out: _many_refs(out, size))
    log(f"generated upstreams in {time.monotonic() - started:.1f}s")
    return {"seed": seed, "generate_seconds": round(time.monotonic() - started, 2)}


# --- fixtures: mirrors made by the real `cccatalog sync` ---------------------------------------------


def write_config(work: Path) -> Path:
    up = work / "upstream"
    text = (
        "git:\n"
        "  enabled: true\n"
        f"  data_dir: {work / 'mirrors'}\n"
        "  lock_timeout_seconds: 60\n"
        "serve:\n"
        "  max_concurrent_upload_packs: 64\n"  # above the highest concurrency: no 503s
        "state:\n"
        f"  path: {work / 'state' / 'state.sqlite3'}\n"
        "sources:\n"
        "  - name: bench\n"
        "    type: static\n"
        "    codecollections:\n"
        f"      - slug: {BIG}\n"
        f"        git_url: file://{up / (BIG + '.git')}\n"
        f"      - slug: {MANY}\n"
        f"        git_url: file://{up / (MANY + '.git')}\n"
    )
    path = work / "cccatalog.yaml"
    path.write_text(text)
    return path


def variant_config(work: Path, name: str, settings: str) -> Path:
    """The config with more `serve:` settings (YAML lines), as `serve-<name>.yaml`."""
    path = work / f"serve-{name}.yaml"
    text = (work / "cccatalog.yaml").read_text()
    path.write_text(text.replace("serve:\n", "serve:\n" + settings))
    return path


def server_config(work: Path, name: str) -> Path:
    """cccatalog: every pack request runs git (the pack cache has its own server); packcache: repeated
    requests answered from disk, sized to keep the 230 MB clone; nocache: git runs for every request."""
    if name == "cccatalog-packcache":
        cache = work / "pack-cache"
        shutil.rmtree(cache, ignore_errors=True)  # no entry from an earlier run answers the first request
        return variant_config(work, name, f"  pack_cache_mb: 1024\n  pack_cache_dir: {cache}\n")
    if name == "cccatalog-nocache":
        return variant_config(work, name, "  advertisement_cache_mb: 0\n  pack_cache_mb: 0\n")
    return variant_config(work, name, "  pack_cache_mb: 0\n")


def cccatalog_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cccatalog", *args]


def sync_mirrors(work: Path, config: Path) -> dict[str, object]:
    started = time.monotonic()
    env = {**os.environ, "HOME": str(work / "home"), "PYTHONPATH": str(REPO_ROOT)}
    out = run(cccatalog_argv("sync", "-c", str(config), "--no-images", "--json"), env=env, timeout=1800)
    seconds = time.monotonic() - started
    log(f"cccatalog sync made the mirrors in {seconds:.1f}s")
    info: dict[str, object] = {"sync_seconds": round(seconds, 2), "sync_summary": json.loads(out)}
    for slug in (BIG, MANY):
        mirror = work / "mirrors" / f"{slug}.git"
        packs = sorted((mirror / "objects" / "pack").glob("*.pack"))
        refs = run([GIT, "-C", str(mirror), "for-each-ref", "--format=x"], env=git_env(work), timeout=60)
        info[slug] = {
            "packs": len(packs),
            "pack_bytes": sum(p.stat().st_size for p in packs),
            "bitmap": any((mirror / "objects" / "pack").glob("*.bitmap")),
            "commit_graph": (mirror / "objects" / "info" / "commit-graph").exists(),
            "refs": len(refs.splitlines()),
        }
    return info


# --- captured requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Captured:
    path: str
    headers: tuple[tuple[str, str], ...]  # replayed as they were sent
    body: bytes  # on the wire (git gzips bodies over 1 KiB)
    plain: bytes  # decoded: what upload-pack reads, for git daemon and the floor

    @property
    def git_protocol(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "git-protocol"), "")


_REPLAYED = ("content-type", "accept", "git-protocol", "content-encoding", "user-agent")
_HOP = ("connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host")


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.posts: list[Captured] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RecordingProxy)


class _RecordingProxy(BaseHTTPRequestHandler):
    """Forwards to `cccatalog serve`, remembering every POST the git client sent."""

    protocol_version = "HTTP/1.1"
    server: _Recorder

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline(10)
            while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                pass
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = tuple((k, v) for k, v in self.headers.items() if k.lower() in _REPLAYED)
        gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
        with self.server.lock:
            self.server.posts.append(
                Captured(self.path, headers, body, gzip.decompress(body) if gzipped else body)
            )
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=300)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in (*_HOP, "expect", "content-length")
        }
        if self.command == "POST":
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in (*_HOP, "content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(RECV):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()


def capture_requests(work: Path, serve_port: int) -> dict[str, Captured]:
    """Run real git clients through a recording proxy; keep the POST of each that carries the answer."""
    recorder = _Recorder(serve_port)
    thread = threading.Thread(target=recorder.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    scratch = work / "capture-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    base = f"http://127.0.0.1:{recorder.server_address[1]}/git"
    env = git_env(work / "home")
    v2 = ["-c", "protocol.version=2"]
    client = scratch / "client.git"
    plans: dict[str, tuple[list[str], bytes]] = {
        "ls-refs-big": ([GIT, *v2, "ls-remote", f"{base}/{BIG}.git"], b"command=ls-refs"),
        "ls-refs-many": ([GIT, *v2, "ls-remote", f"{base}/{MANY}.git"], b"command=ls-refs"),
        "clone": (
            [GIT, *v2, "clone", "--quiet", "--no-checkout", f"{base}/{BIG}.git", str(scratch / "c")],
            b"command=fetch",
        ),
        "depth-1": (
            [
                GIT,
                *v2,
                "clone",
                "--quiet",
                "--no-checkout",
                "--depth=1",
                f"{base}/{BIG}.git",
                str(scratch / "d"),
            ],
            b"command=fetch",
        ),
        "filter": (
            [
                GIT,
                *v2,
                "clone",
                "--quiet",
                "--no-checkout",
                "--filter=blob:none",
                f"{base}/{BIG}.git",
                str(scratch / "f"),
            ],
            b"command=fetch",
        ),
        "fetch": (
            [
                GIT,
                *v2,
                "-C",
                str(client),
                "fetch",
                "--quiet",
                f"{base}/{BIG}.git",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
            b"command=fetch",
        ),
    }
    captured: dict[str, Captured] = {}
    try:
        # A copy of the client snapshot (hardlinked objects): capturing again starts from the same state.
        run(
            [GIT, "clone", "--quiet", "--mirror", str(work / "client-before.git"), str(client)],
            env=env,
            timeout=300,
        )
        for key, (argv, command) in plans.items():
            with recorder.lock:
                recorder.posts.clear()
            run(argv, env=env, timeout=900)
            with recorder.lock:
                posts = [p for p in recorder.posts if command in p.plain]
            if not posts:
                raise RuntimeError(f"capturing {key}: the git client sent no {command.decode()} request")
            captured[key] = posts[-1]
            log(f"captured {key}: {len(posts)} POST(s), last {len(posts[-1].body)} bytes on the wire")
    finally:
        recorder.shutdown()
        recorder.server_close()
        shutil.rmtree(scratch, ignore_errors=True)
    return captured


def save_captures(captures: dict[str, Captured], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, cap in captures.items():
        (folder / f"{key}.body").write_bytes(cap.body)
        (folder / f"{key}.plain").write_bytes(cap.plain)
        (folder / f"{key}.json").write_text(json.dumps({"path": cap.path, "headers": cap.headers}))


def load_captures(folder: Path) -> dict[str, Captured]:
    out = {}
    for meta in sorted(folder.glob("*.json")):
        data = json.loads(meta.read_text())
        key = meta.stem
        out[key] = Captured(
            data["path"],
            tuple((str(k), str(v)) for k, v in data["headers"]),
            (folder / f"{key}.body").read_bytes(),
            (folder / f"{key}.plain").read_bytes(),
        )
    return out


# --- /proc accounting --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcInfo:
    ppid: int
    state: str
    cpu: float  # utime + stime + cutime + cstime: itself and every child it has reaped


def proc_table() -> dict[int, ProcInfo]:
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        ticks = sum(int(f) for f in fields[11:15])
        table[int(name)] = ProcInfo(int(fields[1]), fields[0].decode(), ticks / CLK_TCK)
    return table


def descendants(roots: Sequence[int], table: dict[int, ProcInfo]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs (needs same uid)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def tree_pids(roots: Sequence[int]) -> set[int]:
    """A process tree from /proc/<pid>/task/<tid>/children: cheap enough to sample many times a second."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with suppress(OSError):
                    todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return seen


class RssSampler:
    """Peak summed RSS of a process tree (server plus its git children), sampled every 50 ms."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        if self.roots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, sum(status_kib(p, "VmRSS") for p in tree_pids(self.roots)))
            if self._stop.wait(0.05):
                return


class CgroupCpu:
    """CPU of a server's whole process tree, exited processes included, from a cgroup of its own.

    /proc's cutime only holds children a process waited for, and fcgiwrap ignores SIGCHLD, so the git
    processes it forks would go uncounted. A cgroup counts every task that ever ran in it. cgroup v2's
    cpu.stat needs no controller; v1's cpuacct is the fallback; without either, /proc is used.
    """

    def __init__(self, path: Path, usage: Path) -> None:
        self.path = path
        self.usage = usage

    @classmethod
    def create(cls, name: str) -> CgroupCpu | None:
        for base, usage in (
            (Path("/sys/fs/cgroup"), "cpu.stat"),
            (Path("/sys/fs/cgroup/unified"), "cpu.stat"),
            (Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage"),
        ):
            if not (base / "cgroup.procs").exists():
                continue
            path = base / f"bench-serving-{os.getpid()}-{name}"
            try:
                path.mkdir()
            except OSError:
                continue
            if (path / usage).exists():
                return cls(path, path / usage)
            with suppress(OSError):
                path.rmdir()
        return None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv run as itself (exec keeps the pid), moved into this cgroup before it starts."""
        return [
            "/bin/sh",
            "-c",
            'echo $$ 2>/dev/null > "$0"; exec "$@"',
            str(self.path / "cgroup.procs"),
            *argv,
        ]

    def holds(self, pids: Sequence[int]) -> bool:
        with suppress(OSError):
            return set(pids) <= {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        return False

    def seconds(self) -> float:
        text = self.usage.read_text()
        if self.usage.name == "cpuacct.usage":
            return int(text) / 1e9
        fields = dict(line.split() for line in text.splitlines() if line.strip())
        return int(fields["usage_usec"]) / 1e6

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)  # the last tasks are still exiting


# --- servers -----------------------------------------------------------------------------------------

Kind = Literal["http", "daemon", "raw"]


@dataclass(slots=True)
class Server:
    name: str
    kind: Kind
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The long-lived processes whose RSS is "the server's": cccatalog's Python process, nginx's master and
    # workers with fcgiwrap's, the git daemon. Filled in once the server is up.
    resident: list[int] = field(default_factory=list)
    cgroup: CgroupCpu | None = None

    @property
    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]


def _spawn(server: Server, argv: Sequence[str], *, log_path: Path, env: dict[str, str], cwd: Path) -> None:
    argv = server.cgroup.wrap(argv) if server.cgroup else list(argv)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: stopping it stops its children, nothing else
        )
    server.procs.append(proc)


def new_server(name: str, kind: Kind) -> Server:
    return Server(name, kind, free_port(), cgroup=CgroupCpu.create(name))


def stop_server(server: Server) -> None:
    for proc in server.procs:
        stop(proc)
    if server.cgroup:
        server.cgroup.remove()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _wait_ready(server: Server, probe: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for proc in server.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited early with {proc.returncode}; see its log in the work dir")
        with suppress(OSError):
            if probe():
                time.sleep(0.3)  # let the probe's own git processes exit: they are not the server
                if server.cgroup and not server.cgroup.holds(server.roots):
                    log(f"{what}: could not join cgroup {server.cgroup.path}; counting CPU from /proc")
                    server.cgroup.remove()
                    server.cgroup = None
                pids = descendants(server.roots, proc_table())
                server.resident = sorted(
                    p for p in pids if p in server.roots or not _comm(p).startswith("git")
                )
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {seconds:.0f}s")


def _is_reaper(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"\0cccatalog-reaper\0")
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    finally:
        conn.close()


def start_cccatalog(work: Path, config: Path, *, name: str = "cccatalog", src: Path = REPO_ROOT) -> Server:
    """`cccatalog serve` from the source tree `src` (another checkout: A/B a change with --compare-src)."""
    server = new_server(name, "http")
    env = {**os.environ, "HOME": str(work / "home"), "PYTHONPATH": str(src)}
    argv = cccatalog_argv("serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(server.port))
    log_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    _spawn(server, argv, log_path=work / "logs" / f"{log_name}.log", env=env, cwd=work)
    _wait_ready(server, lambda: _http_ok(server.port, "/healthz"), "cccatalog serve")
    return server


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def start_nginx(
    work: Path,
    max_concurrency: int,
    *,
    name: str = "nginx-fcgiwrap",
    cgi_env: dict[str, str] | None = None,
    probe_repo: str = BIG,
) -> Server:
    """nginx + fcgiwrap (`max_concurrency` children) in `work/<name>`; `cgi_env` is passed to
    git-http-backend as extra CGI variables (the fleet benchmark sets a packObjectsHook that way)."""
    nginx, fcgiwrap = find_tool("nginx"), find_tool("fcgiwrap")
    if not nginx or not fcgiwrap:
        raise RuntimeError(f"nginx and fcgiwrap are needed: apt-get install {' '.join(APT_PACKAGES)}")
    server = new_server(name, "http")
    home = work / ("nginx" if name == "nginx-fcgiwrap" else name)
    for sub in ("client_body", "fastcgi", "proxy", "uwsgi", "scgi"):
        (home / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    sock = home / "fcgiwrap.sock"
    sock.unlink(missing_ok=True)
    exec_path = run([GIT, "--exec-path"], env=git_env(work), timeout=30).strip()
    conf = (HERE / "nginx.conf.template").read_text()
    for key, value in {
        "@USER_LINE@": "user root;" if os.geteuid() == 0 else "",
        "@WORK@": str(home),
        "@PORT@": str(server.port),
        "@GIT_HTTP_BACKEND@": str(Path(exec_path) / "git-http-backend"),
        "@MIRRORS@": str(work / "mirrors"),
        "@SOCKET@": str(sock),
    }.items():
        conf = conf.replace(key, value)
    extra = "".join(f"            fastcgi_param {k} {v};\n" for k, v in (cgi_env or {}).items())
    conf = conf.replace("            fastcgi_pass ", extra + "            fastcgi_pass ")
    (home / "nginx.conf").write_text(conf)
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(work / "home"), "LC_ALL": "C"}
    # Debian starts one fcgiwrap, which serves one request at a time; preforking one per client is the
    # tuned setup, so nginx is not held back by it.
    _spawn(
        server,
        [fcgiwrap, "-c", str(max_concurrency), "-s", f"unix:{sock}"],
        log_path=work / "logs" / f"{name}-fcgiwrap.log",
        env=env,
        cwd=home,
    )
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    _spawn(
        server,
        [nginx, "-p", str(home), "-c", str(home / "nginx.conf"), "-e", str(home / "error.log")],
        log_path=work / "logs" / f"{name}.log",
        env=env,
        cwd=home,
    )
    probe = f"/git/{probe_repo}.git/info/refs?service=git-upload-pack"
    _wait_ready(server, lambda: _http_ok(server.port, probe), "nginx + fcgiwrap")
    return server


def start_daemon(work: Path) -> Server:
    server = new_server("git-daemon", "daemon")
    mirrors = work / "mirrors"
    # The dashed binary itself: `git daemon` would leave a `git` wrapper process waiting in front of it.
    exec_path = Path(run([GIT, "--exec-path"], env=git_env(work), timeout=30).strip())
    argv = [
        str(exec_path / "git-daemon"),
        "--reuseaddr",
        "--listen=127.0.0.1",
        f"--port={server.port}",
        "--export-all",
        f"--base-path={mirrors}",
        "--max-connections=128",
        "--informative-errors",
    ]
    _spawn(server, argv, log_path=work / "logs" / "git-daemon.log", env=git_env(work / "home"), cwd=work)

    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            return True

    _wait_ready(server, probe, "git daemon")
    return server


# --- clients -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    nbytes: int
    tail: bytes  # the last 4 bytes: every complete answer here ends with a flush-pkt, b"0000"
    cpu: float = 0.0  # the floor only: CPU of upload-pack and its children, from wait4
    maxrss_kib: int = 0


class _Body:
    """Counts a response's payload without keeping it: Content-Length, chunked, or up to EOF."""

    __slots__ = ("chunked", "done", "left", "line", "payload", "tail", "trailers")

    def __init__(self, *, length: int | None, chunked: bool) -> None:
        self.chunked = chunked
        self.left = 0 if chunked else (-1 if length is None else length)
        self.done = length == 0 and not chunked
        self.line = b""
        self.trailers = False
        self.payload = 0
        self.tail = b""

    def _data(self, buf: bytes | bytearray, start: int, end: int) -> None:
        self.payload += end - start
        self.tail = (
            bytes(buf[end - 4 : end]) if end - start >= 4 else (self.tail + bytes(buf[start:end]))[-4:]
        )

    def feed(self, buf: bytes | bytearray, start: int, end: int) -> None:
        if not self.chunked:
            take = end - start if self.left < 0 else min(self.left, end - start)
            self._data(buf, start, start + take)
            if self.left >= 0:
                self.left -= take
                self.done = self.left == 0
            return
        pos = start
        while pos < end and not self.done:
            if self.left:
                take = min(self.left, end - pos)
                self._data(buf, pos, pos + take)
                self.left -= take
                pos += take
                continue
            nl = buf.find(b"\n", pos, end)
            if nl < 0:
                self.line += bytes(buf[pos:end])
                if len(self.line) > 4096:
                    raise ConnectionError("malformed chunked response")
                return
            text = (self.line + bytes(buf[pos:nl])).strip()
            self.line, pos = b"", nl + 1
            if self.trailers:
                self.done = not text
            elif text:  # an empty line is the CRLF that ends a chunk's data
                size = int(text.split(b";", 1)[0], 16)
                self.trailers, self.left = size == 0, size


def http_request(
    port: int, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, *, timeout: float
) -> Answer:
    """One request on a fresh connection, as a git client makes it; the answer is counted, not kept."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers)]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        buf = bytearray(RECV)
        head = b""
        while (end := head.find(b"\r\n\r\n")) < 0:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("connection closed before the response head")
            head += bytes(buf[:n])
        status_line, *header_lines = head[:end].decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(fields["content-length"]) if "content-length" in fields else None
        counter = _Body(length=length, chunked=fields.get("transfer-encoding", "").lower() == "chunked")
        counter.feed(head, end + 4, len(head))
        while not counter.done:
            n = sock.recv_into(buf)
            if not n:
                if counter.left < 0 and not counter.chunked:
                    break
                raise ConnectionError("connection closed mid-response")
            counter.feed(buf, 0, n)
    if status != 200:
        raise ConnectionError(f"HTTP {status}")
    return Answer(counter.payload, counter.tail)


def _pkt(data: bytes) -> bytes:
    return b"%04x%s" % (len(data) + 4, data)


def _read_to_flush(sock: socket.socket, buf: bytearray) -> int:
    """Read pkt-lines up to and including a flush-pkt; returns the bytes read (nothing may follow)."""
    data = b""
    pos = 0
    while True:
        while len(data) - pos < 4:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("git daemon closed the connection early")
            data += bytes(buf[:n])
        length = int(data[pos : pos + 4], 16)
        if length == 0:
            return pos + 4
        while len(data) - pos < length:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("git daemon closed the connection mid-pkt")
            data += bytes(buf[:n])
        pos += length


def daemon_request(port: int, repo: str, cap: Captured | None, timeout: float) -> Answer:
    """git:// as git's client speaks it; v0 advertisement when `cap` is None, else the v2 command."""
    hello = f"git-upload-pack /{repo}.git\0host=127.0.0.1\0".encode()
    if cap is not None:
        hello += f"\0{cap.git_protocol}\0".encode()
    buf = bytearray(RECV)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_pkt(hello))
        advert = _read_to_flush(sock, buf)  # v0: the ref advertisement; v2: the capability list
        if cap is None:
            sock.sendall(b"0000")  # no wants: upload-pack ends
            return Answer(advert, b"0000")
        sock.sendall(cap.plain)
        sock.shutdown(socket.SHUT_WR)  # after this command, upload-pack sees EOF and exits
        counter = _Body(length=None, chunked=False)
        while n := sock.recv_into(buf):
            counter.feed(buf, 0, n)
    return Answer(counter.payload, counter.tail)


def raw_request(repo: Path, body_file: Path | None, git_protocol: str, home: Path, timeout: float) -> Answer:
    """The floor: upload-pack fed the request body from a file, its answer read from a pipe and dropped."""
    argv = [
        GIT,
        "upload-pack",
        "--stateless-rpc",
        *(["--advertise-refs"] if body_file is None else []),
        str(repo),
    ]
    env = git_env(home, **({"GIT_PROTOCOL": git_protocol} if git_protocol else {}))
    with ExitStack() as stack:
        stdin = stack.enter_context(body_file.open("rb")) if body_file else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            buf = bytearray(RECV)
            counter = _Body(length=None, chunked=False)
            while n := proc.stdout.readinto(buf):  # type: ignore[attr-defined]
                counter.feed(buf, 0, n)
        finally:
            timer.cancel()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ConnectionError(f"upload-pack exited {proc.returncode}")
    return Answer(counter.payload, counter.tail, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


@dataclass(frozen=True, slots=True)
class Bench:
    """What a request needs: where things are and the captured bodies."""

    work: Path
    size: Size
    captures: dict[str, Captured]

    def body_file(self, key: str) -> Path:
        return self.work / "captures" / f"{key}.plain"


_DISTINCT = iter(range(1, 1 << 31))


def distinct_body(cap: Captured) -> bytes:
    """The captured request with a `have` of an object nobody has before its `done` (gzipped again
    when it was): a new request to any cache that keys on what the request asks (the pack cache
    inflates bodies and drops the client's agent), the same pack from git."""
    zipped = cap.body[:2] == b"\x1f\x8b"
    plain = gzip.decompress(cap.body) if zipped else cap.body
    done = plain.rindex(b"0009done\n")
    asked = plain[:done] + b"0032have %040x\n" % next(_DISTINCT) + plain[done:]
    return gzip.compress(asked, compresslevel=1, mtime=0) if zipped else asked


def do_request(bench: Bench, server: Server, mix: Mix) -> Answer:
    cap = bench.captures[mix.capture] if mix.capture else None
    timeout = bench.size.request_timeout
    if server.kind == "http":
        if cap is None:
            path = f"/git/{mix.repo}.git/info/refs?service=git-upload-pack"
            return http_request(
                server.port,
                "GET",
                path,
                [("User-Agent", "git/bench"), ("Accept", "*/*")],
                b"",
                timeout=timeout,
            )
        wire = distinct_body(cap) if mix.distinct else cap.body
        return http_request(server.port, "POST", cap.path, cap.headers, wire, timeout=timeout)
    if server.kind == "daemon":
        return daemon_request(server.port, mix.repo, cap, timeout)
    repo = bench.work / "mirrors" / f"{mix.repo}.git"
    body = bench.body_file(mix.capture) if mix.capture else None
    return raw_request(repo, body, cap.git_protocol if cap else "", bench.work / "home", timeout)


# --- one cell: server x mix x concurrency, measured in interleaved rounds ------------------------------


@dataclass(slots=True)
class Batch:
    """One server's share of one round of a cell."""

    latencies: list[float] = field(default_factory=list)
    nbytes: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    client_cpu: float = 0.0
    busy_cpu: float = 0.0  # the whole machine's, from /proc/stat
    peak_kib: int | None = None
    growth_kib: int | None = None
    tree_peak_kib: int = 0


@dataclass(slots=True)
class Row:
    server: str
    mix: str
    concurrency: int
    requests: int
    errors: int
    bytes_per_request: int
    wall_seconds: float
    mb_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_seconds_per_request: float
    client_cpu_seconds_per_request: float
    foreign_cpu_percent: float  # CPU used by neither the server nor this client: noise from elsewhere
    server_peak_rss_mib: float | None  # VmHWM of the resident server processes during the cell
    server_rss_growth_mib: float | None  # that peak minus their RSS when a round started (the worst round)
    tree_peak_rss_mib: float  # server plus git children, sampled; the floor: max ru_maxrss
    first_error: str = ""


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def _quiesce(server: Server, seconds: float = 10.0) -> dict[int, ProcInfo]:
    """Wait until every per-request process has exited and been reaped, so its CPU is counted."""
    deadline = time.monotonic() + seconds
    while True:
        table = proc_table()
        pids = descendants(server.roots, table)
        # cccatalog's reaper (one `sh` that ends git's process groups if the server dies) starts
        # with the first git and lives as long as the server: it is not per-request work
        extra = {p for p in pids - set(server.resident) if not _is_reaper(p)}
        if not extra:
            return table
        if time.monotonic() > deadline:
            log(
                f"{server.name}: processes still running after {seconds:.0f}s: "
                + ", ".join(f"{p} {_comm(p)} ({table[p].state})" for p in sorted(extra) if p in table)
            )
            return table
        time.sleep(0.02)


def _tree_cpu(server: Server, table: dict[int, ProcInfo]) -> float:
    if server.cgroup:
        return server.cgroup.seconds()
    return sum(table[p].cpu for p in descendants(server.roots, table))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def run_batch(bench: Bench, server: Server, mix: Mix, n: int, count: int) -> Batch:
    """`count` requests over `n` connections at once; at least one per connection, then time-bounded."""
    batch = Batch()
    table = _quiesce(server)
    cpu_before = _tree_cpu(server, table)
    reset = [p for p in server.resident if reset_peak_rss(p)]
    rss_before = sum(status_kib(p, "VmRSS") for p in reset)
    lock = threading.Lock()
    issued = [0]
    answers: list[Answer] = []

    def worker(deadline: float) -> None:
        while True:
            with lock:
                if issued[0] >= count or (issued[0] >= n and time.monotonic() > deadline):
                    return
                issued[0] += 1
            started = time.perf_counter()
            try:
                answer = do_request(bench, server, mix)
                if answer.tail != b"0000":
                    raise ConnectionError(f"incomplete answer ({answer.nbytes} bytes, ends {answer.tail!r})")
            except (OSError, ValueError, RuntimeError) as exc:
                with lock:
                    batch.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            with lock:
                batch.latencies.append(elapsed)
                answers.append(answer)

    client_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = machine_busy_seconds()
    deadline = time.monotonic() + bench.size.cell_seconds / bench.size.rounds
    with RssSampler(server.roots) as sampler:
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(deadline,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(bench.size.cell_seconds + bench.size.request_timeout * 2)
        batch.wall = time.perf_counter() - started
    batch.busy_cpu = machine_busy_seconds() - busy_before
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    batch.client_cpu = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    table = _quiesce(server)
    batch.nbytes = sum(a.nbytes for a in answers)
    if server.kind == "raw":
        batch.cpu = sum(a.cpu for a in answers)
        batch.tree_peak_kib = max((a.maxrss_kib for a in answers), default=0)
    else:
        batch.cpu = _tree_cpu(server, table) - cpu_before
        batch.tree_peak_kib = sampler.peak_kib
    if reset:
        batch.peak_kib = sum(status_kib(p, "VmHWM") for p in reset)
        batch.growth_kib = batch.peak_kib - rss_before
    return batch


def merge(server: Server, mix: Mix, n: int, batches: Sequence[Batch]) -> Row:
    lat = sorted(x for b in batches for x in b.latencies)
    errors = [e for b in batches for e in b.errors]
    done = len(lat) + len(errors)
    wall = sum(b.wall for b in batches)
    total = sum(b.nbytes for b in batches)
    cpu, client = sum(b.cpu for b in batches), sum(b.client_cpu for b in batches)
    foreign = max(0.0, sum(b.busy_cpu for b in batches) - cpu - client)
    peaks = [b.peak_kib for b in batches if b.peak_kib is not None]
    growths = [b.growth_kib for b in batches if b.growth_kib is not None]
    return Row(
        server=server.name,
        mix=mix.name,
        concurrency=n,
        requests=done,
        errors=len(errors),
        bytes_per_request=total // max(1, len(lat)),
        wall_seconds=round(wall, 3),
        mb_per_s=round(total / wall / 1e6, 2) if wall else 0.0,
        requests_per_s=round(len(lat) / wall, 1) if wall else 0.0,
        p50_ms=round(percentile(lat, 0.5) * 1000, 2),
        p99_ms=round(percentile(lat, 0.99) * 1000, 2),
        cpu_seconds_per_request=round(cpu / max(1, done), 4),
        client_cpu_seconds_per_request=round(client / max(1, done), 4),
        foreign_cpu_percent=round(100 * foreign / (wall * (os.cpu_count() or 1)), 1) if wall else 0.0,
        server_peak_rss_mib=round(max(peaks) / 1024, 1) if peaks else None,
        server_rss_growth_mib=round(max(growths) / 1024, 1) if growths else None,
        tree_peak_rss_mib=round(max(b.tree_peak_kib for b in batches) / 1024, 1),
        first_error=errors[0][:300] if errors else "",
    )


def run_cell(bench: Bench, servers: Sequence[Server], mix: Mix, n: int) -> list[Row]:
    """Every server takes a turn in each round, so drift in the machine's load hits them all alike."""
    count = request_count(bench.size, mix, n)
    servers = [s for s in servers if mix.runs_on(s.name)]
    batches: dict[str, list[Batch]] = {s.name: [] for s in servers}
    for _ in range(bench.size.rounds):
        for server in servers:
            batches[server.name].append(run_batch(bench, server, mix, n, count))
    return [merge(server, mix, n, batches[server.name]) for server in servers]


# --- reporting ---------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _find(rows: Sequence[Row], server: str, mix: str, n: int) -> Row | None:
    return next((r for r in rows if (r.server, r.mix, r.concurrency) == (server, mix, n)), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run


def evaluate_targets(rows: Sequence[Row], size: Size) -> list[Target]:
    conc = size.concurrency
    n_mid = 4 if 4 in conc else conc[-1]
    n_rss = 8 if 8 in conc else conc[-1]
    targets = []

    def tput(server: str, mix: str, n: int) -> float | None:
        row = _find(rows, server, mix, n)
        return row.mb_per_s if row and not row.errors else None

    def p50(server: str, mix: str) -> float | None:
        row = _find(rows, server, mix, 1)
        return row.p50_ms if row and not row.errors else None

    r = _ratio(tput("cccatalog", "full-clone", n_mid), tput("nginx-fcgiwrap", "full-clone", n_mid))
    targets.append(
        Target(
            f"full-clone MB/s at N={n_mid}: cccatalog / nginx+fcgiwrap",
            _fmt_ratio(r),
            ">= 1.30x",
            None if r is None else r >= 1.3,
        )
    )
    r = _ratio(tput("cccatalog", "full-clone", 1), tput("raw-upload-pack", "full-clone", 1))
    targets.append(
        Target(
            "full-clone MB/s at N=1: cccatalog / raw upload-pack",
            _fmt_ratio(r),
            ">= 0.95x",
            None if r is None else r >= 0.95,
        )
    )
    r = _ratio(tput("cccatalog-packcache", "full-clone", 1), tput("raw-upload-pack", "full-clone", 1))
    targets.append(
        Target(
            "full-clone MB/s at N=1, from the pack cache: cccatalog-packcache / raw upload-pack",
            _fmt_ratio(r),
            ">= 1.00x",
            None if r is None else r >= 1.0,
        )
    )
    for n in sorted({1, n_mid}):
        r = _ratio(tput("cccatalog-packcache", "full-clone-miss", n), tput("cccatalog", "full-clone-miss", n))
        targets.append(
            Target(
                f"full-clone-miss MB/s at N={n}, every request a cache miss: cccatalog-packcache / "
                "cccatalog (no pack cache)",
                _fmt_ratio(r),
                ">= 0.95x",
                None if r is None else r >= 0.95,
            )
        )
    for server in ("cccatalog", "cccatalog-nocache"):
        for mix in ("info-refs", "info-refs-manyrefs"):
            r = _ratio(p50(server, mix), p50("nginx-fcgiwrap", mix))
            targets.append(
                Target(
                    f"{mix} p50 at N=1: {server} / nginx+fcgiwrap",
                    _fmt_ratio(r),
                    "<= 1.00x",
                    None if r is None else r <= 1.0,
                )
            )
    row = _find(rows, "cccatalog", "full-clone", n_rss)
    growth = row.server_rss_growth_mib if row else None
    targets.append(
        Target(
            f"cccatalog RSS growth, {n_rss} concurrent full clones",
            "n/a" if growth is None else f"{growth:.1f} MiB",
            "< 50 MB",
            None if growth is None else growth * 1.048576 < 50,
        )
    )
    return targets


def report(rows: Sequence[Row], targets: Sequence[Target], size: Size) -> str:
    out = []
    mixes = list(dict.fromkeys(r.mix for r in rows))
    conc = size.concurrency
    names = list(dict.fromkeys(r.server for r in rows))
    status = {True: "met", False: "MISSED", None: "not measured"}
    out.append("## Targets\n")
    out.append(
        markdown_table(
            ["target", "measured", "goal", ""], [(t.name, t.measured, t.goal, status[t.met]) for t in targets]
        )
    )

    out.append("\n## Throughput, cccatalog / nginx+fcgiwrap (MB/s ratio; cccatalog MB/s in brackets)\n")
    body = []
    for mix in mixes:
        cells = []
        for n in conc:
            a, b = _find(rows, "cccatalog", mix, n), _find(rows, "nginx-fcgiwrap", mix, n)
            cells.append(
                f"{_fmt_ratio(_ratio(a.mb_per_s, b.mb_per_s) if a and b else None)}"
                f" ({a.mb_per_s if a else '-'})"
            )
        body.append([mix, *cells])
    out.append(markdown_table(["mix", *(f"N={n}" for n in conc)], body))

    out.append("\n## At N=1: MB/s and p50 ms by server; ratios against nginx+fcgiwrap and the floor\n")
    body = []
    for mix in mixes:
        by = {s: _find(rows, s, mix, 1) for s in names}
        mbs = [f"{r.mb_per_s:.1f} / {r.p50_ms:.1f}" if (r := by[s]) else "-" for s in names]
        c, ng, raw = by.get("cccatalog"), by.get("nginx-fcgiwrap"), by.get("raw-upload-pack")
        body.append(
            [
                mix,
                *mbs,
                _fmt_ratio(_ratio(c.p50_ms, ng.p50_ms) if c and ng else None),
                _fmt_ratio(_ratio(c.mb_per_s, raw.mb_per_s) if c and raw else None),
            ]
        )
    out.append(
        markdown_table(["mix", *(f"{s} MB/s / p50" for s in names), "p50 ccc/nginx", "MB/s ccc/raw"], body)
    )

    n_cpu = 4 if 4 in conc else conc[-1]
    out.append(f"\n## Server CPU seconds per request at N={n_cpu} (server process tree incl. git children)\n")
    body = []
    for mix in mixes:
        body.append(
            [
                mix,
                *(
                    f"{r.cpu_seconds_per_request:.4f}" if (r := _find(rows, s, mix, n_cpu)) else "-"
                    for s in names
                ),
            ]
        )
    out.append(markdown_table(["mix", *names], body))

    out.append("\n## All cells\n")
    out.append(
        markdown_table(
            [
                "server",
                "mix",
                "N",
                "req",
                "err",
                "MB/s",
                "req/s",
                "p50 ms",
                "p99 ms",
                "CPU s/req",
                "client CPU s/req",
                "server peak RSS MiB",
                "RSS growth MiB",
                "tree peak RSS MiB",
                "other load %",
            ],
            [
                (
                    r.server,
                    r.mix,
                    r.concurrency,
                    r.requests,
                    r.errors,
                    r.mb_per_s,
                    r.requests_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.cpu_seconds_per_request,
                    r.client_cpu_seconds_per_request,
                    "-" if r.server_peak_rss_mib is None else r.server_peak_rss_mib,
                    "-" if r.server_rss_growth_mib is None else r.server_rss_growth_mib,
                    r.tree_peak_rss_mib,
                    r.foreign_cpu_percent,
                )
                for r in rows
            ],
        )
    )
    return "\n".join(out)


def describe_machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = status_line_kib(Path("/proc/meminfo"), "MemTotal")

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "not installed"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else "?"
        )

    nginx, fcgiwrap = find_tool("nginx"), find_tool("fcgiwrap")
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "git": version([GIT, "--version"]),
        "python": sys.version.split()[0],
        "nginx": version([nginx, "-v"]) if nginx else "not installed",
        "fcgiwrap": "installed" if fcgiwrap else "not installed",
    }


def status_line_kib(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _os_name() -> str:
    with suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


# --- main --------------------------------------------------------------------------------------------


def prepare(work: Path, size: Size, seed: int) -> tuple[Path, dict[str, object]]:
    """Generate, sync and capture once per work dir; a later run with the same size and seed reuses it."""
    stamp = work / "fixtures.json"
    wanted = {"version": FIXTURE_VERSION, "size": size.name, "seed": seed}
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == wanted:
            log(f"reusing fixtures in {work}")
            return work / "cccatalog.yaml", saved["info"]
    for sub in ("upstream", "mirrors", "state", "captures", "client-before.git", "nginx"):
        shutil.rmtree(work / sub, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    for sub in ("home", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    info = make_upstreams(work, size, seed)
    config = write_config(work)
    info |= sync_mirrors(work, config)
    return config, info


def wait_for_quiet(max_busy_percent: float, seconds: float) -> float:
    """Wait up to `seconds` for a 3 s window in which the machine is at most this busy; the last reading."""
    deadline = time.monotonic() + seconds
    while True:
        before = machine_busy_seconds()
        time.sleep(3)
        busy = 100 * (machine_busy_seconds() - before) / 3 / (os.cpu_count() or 1)
        if busy <= max_busy_percent or time.monotonic() > deadline:
            return round(busy, 1)
        log(f"machine {busy:.0f}% busy with other work; waiting for <= {max_busy_percent:.0f}%")


def ensure_tools(install: bool) -> None:
    if find_tool("nginx") and find_tool("fcgiwrap"):
        return
    if not install:
        raise SystemExit(
            f"nginx and fcgiwrap are needed: apt-get install {' '.join(APT_PACKAGES)} "
            "(or pass --apt-install, or --server to leave nginx-fcgiwrap out)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], check=True, env=env, timeout=900)


@contextmanager
def work_dir(path: Path | None, keep: bool, *, prefix: str = "bench-serving-") -> Iterator[Path]:
    """`path` (kept), or a temporary directory removed afterwards unless `keep`."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            log(f"kept the work dir {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `cccatalog serve` against nginx+fcgiwrap+git http-backend, git daemon and "
        "raw git upload-pack on the same generated mirrors.",
        epilog="example: python benchmarks/serving/bench_serving.py --size smoke --json-out serving.json",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke", help="fixture and load size")
    parser.add_argument(
        "--work-dir", type=Path, help="keep fixtures here and reuse them (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    parser.add_argument(
        "--json-out", "--output", type=Path, help="result file (default: ./bench-serving-<size>.json)"
    )
    parser.add_argument("--seed", type=int, default=20240607, help="seed of the generated repo")
    parser.add_argument(
        "--server", action="append", choices=SERVERS, help="run only this server (repeatable)"
    )
    parser.add_argument(
        "--mix", action="append", choices=[m.name for m in MIXES], help="only this mix (repeatable)"
    )
    parser.add_argument("--concurrency", type=int, action="append", help="only this concurrency (repeatable)")
    parser.add_argument(
        "--compare-src",
        action="append",
        metavar="LABEL=PATH",
        help="also run `cccatalog serve` from the source tree PATH as cccatalog[LABEL], to A/B a change",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long for the machine to be idle (default 0)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="what idle means for --quiet-wait: at most this %% of all CPUs busy (default 10)",
    )
    parser.add_argument(
        "--apt-install", action="store_true", help=f"apt-get install {' '.join(APT_PACKAGES)} if missing"
    )
    return parser.parse_args(argv)


def start_servers(
    work: Path, size: Size, names: Sequence[str], ccc: Server, stack: ExitStack, *, compare: Sequence[str]
) -> list[Server]:
    servers = []
    for name in names:
        if name == "cccatalog":
            servers.append(ccc)
            for spec in compare:  # LABEL=PATH: the same server from another source tree, right after it
                label, _, src = spec.partition("=")
                config = server_config(work, name)  # the same settings: only the source differs
                servers.append(
                    start_cccatalog(work, config, name=f"cccatalog[{label}]", src=Path(src).resolve())
                )
                stack.callback(stop_server, servers[-1])
        elif name.startswith("cccatalog-"):
            servers.append(start_cccatalog(work, server_config(work, name), name=name))
            stack.callback(stop_server, servers[-1])
        elif name == "nginx-fcgiwrap":
            servers.append(start_nginx(work, max(size.concurrency)))
            stack.callback(stop_server, servers[-1])
        elif name == "git-daemon":
            servers.append(start_daemon(work))
            stack.callback(stop_server, servers[-1])
        else:
            servers.append(Server("raw-upload-pack", "raw"))
    return servers


def measure(bench: Bench, servers: Sequence[Server], mixes: Sequence[Mix]) -> list[Row]:
    rows = []
    for mix in mixes:
        for n in bench.size.concurrency:
            for row in run_cell(bench, servers, mix, n):
                rows.append(row)
                log(
                    f"{row.server:16} {mix.name:19} N={n:<2} {row.mb_per_s:9.2f} MB/s"
                    f" p50 {row.p50_ms:8.2f} ms p99 {row.p99_ms:8.2f} ms err {row.errors}"
                    f" cpu/req {row.cpu_seconds_per_request:.4f} other load {row.foreign_cpu_percent:.0f}%"
                )
    return rows


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: the servers this run started are stopped


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    size = SIZES[args.size]
    if args.concurrency:
        size = replace(size, concurrency=tuple(args.concurrency))
    servers_wanted = tuple(args.server or SERVERS)
    mixes = [m for m in MIXES if not args.mix or m.name in args.mix]
    if "nginx-fcgiwrap" in servers_wanted:
        ensure_tools(args.apt_install)
    json_out = (args.json_out or Path(f"bench-serving-{size.name}.json")).resolve()
    command = " ".join(
        ["python", "benchmarks/serving/bench_serving.py", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.monotonic()
    with work_dir(args.work_dir, args.keep) as work, ExitStack() as stack:
        _, info = prepare(work, size, args.seed)
        ccc = start_cccatalog(work, server_config(work, "cccatalog"))
        stack.callback(stop_server, ccc)
        captures_dir = work / "captures"
        if not (work / "fixtures.json").exists():
            save_captures(capture_requests(work, ccc.port), captures_dir)
            key = {"version": FIXTURE_VERSION, "size": size.name, "seed": args.seed}
            (work / "fixtures.json").write_text(json.dumps({"key": key, "info": info}, default=str))
        bench = Bench(work, size, load_captures(captures_dir))
        servers = start_servers(work, size, servers_wanted, ccc, stack, compare=args.compare_src or [])
        log("servers up: " + ", ".join(f"{s.name}{':' + str(s.port) if s.port else ''}" for s in servers))
        for server in servers:  # warm-up: page cache, lazy imports, and a check that every mix works
            for mix in mixes:
                if mix.runs_on(server.name):
                    do_request(bench, server, mix)
        busy_at_start = wait_for_quiet(args.quiet_below, args.quiet_wait) if args.quiet_wait > 0 else None
        rows = measure(bench, servers, mixes)
    targets = evaluate_targets(rows, size)
    text = report(rows, targets, size)
    print(text)
    result = {
        "benchmark": "serving",
        "size": size.name,
        "command": command,
        "machine": describe_machine(),
        "fixtures": info,
        "machine_busy_percent_at_start": busy_at_start,
        "seconds": round(time.monotonic() - started, 1),
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(t) for t in targets],
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {json_out} ({result['seconds']}s)")
    errors = sum(r.errors for r in rows)
    if errors:
        log(f"{errors} requests failed; first: {next(r.first_error for r in rows if r.errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
