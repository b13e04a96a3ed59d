"""Fleet benchmark: a burst of runner pods, each running the platform's fetcher against one repository.

What one run builds and measures, all on 127.0.0.1 and all on the same bare mirror:

- the repository: a generated CodeCollection shaped like rw-cli-codecollection (109 heads and tags;
  the answer to `git fetch --depth=2 --tags` is ~5.5 MB at `--size full`), made with `git fast-import`
  from a seed and mirrored by the real `cccatalog sync`;
- the fleet: N real `git fetch --depth=2 --tags origin` into N new repositories started at once
  (what the platform's fetcher does for a new runner), N = 16 and 64, three rounds, the servers taking
  turns in each round;
- the servers: `cccatalog serve` with the pack cache (its default) and without, both with 8 git slots
  and the default queue; nginx + fcgiwrap + `git http-backend` with 8 fcgiwrap children; the same with
  a pack cache behind git's `uploadpack.packObjectsHook` (`pack_objects_hook.sh`, a prototype of the
  design serve did not take); optionally `cccatalog serve` from another tree (`--compare-src`);
- the replay: the fleet's fetch request, recorded from a real client, sent by N connections at once
  (twice each) that count the answer and drop it: what the server delivers when no client spends CPU
  indexing the pack on the same two cores;
- slow readers: two clients reading a fetch's answer at 16 KiB/s while 16 others fetch, 8 slots;
- the hook alone: one cache hit of `pack_objects_hook.sh`, timed without git around it.

Per cell: failed fetches, MB/s of packs delivered and fetches/s (both over the batch's wall time),
server CPU per fetch (the server's whole process tree, from a cgroup of its own), client CPU per fetch,
p50/p99 latency of a fetch, and the CPU the machine spent on anything else.

    python -m benchmarks.fleet.bench_fleet --size smoke
    python -m benchmarks.fleet.bench_fleet --size full --json-out benchmarks/fleet/results-full.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script as well as with `python -m`
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import bench_serving as bs  # noqa: E402

HERE = Path(__file__).resolve().parent
HOOK = HERE / "pack_objects_hook.sh"
SLUG = "fleet-codecollection"
SERVERS = (
    "cccatalog",
    "cccatalog-second-sight",
    "cccatalog-nocache",
    "nginx-fcgiwrap",
    "nginx-fcgiwrap-hook",
)
# Three git versions in one fleet, as mid-upgrade: each sends its own agent= (GIT_USER_AGENT)
AGENTS = ("git/2.39.5", "git/2.43.0", "git/2.47.1")
EPOCH = 1_600_000_000
FIXTURE_VERSION = 1
BUNDLE_FILES = ("runbook.robot", "sli.robot", "README.md", "meta.yaml")


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    files: int  # paths in the tree, four per codebundle
    commits: int  # on main
    changes: int  # files rewritten per commit
    branches: int  # feature branches off the last 50 commits, one commit each
    tags: int  # annotated tags on main's last commits
    file_kib: int  # mean size of a file's text
    concurrency: tuple[int, ...]
    rounds: int
    slots: int  # serve.max_concurrent_upload_packs, and fcgiwrap's children
    slow_fetchers: int  # fetches beside the slow readers
    slow_readers: int
    slow_rate: int  # bytes/s each slow reader reads
    one_offs: int  # distinct requests, each asked once (the one-off cell)
    timeout: float


SIZES = {
    "full": Size(
        name="full",
        files=400,
        commits=1000,
        changes=2,
        branches=59,
        tags=49,
        file_kib=14,
        concurrency=(16, 64),
        rounds=3,
        slots=8,
        slow_fetchers=16,
        slow_readers=2,
        slow_rate=16 * 1024,
        one_offs=50,
        timeout=600.0,
    ),
    "smoke": Size(
        name="smoke",
        files=40,
        commits=60,
        changes=2,
        branches=6,
        tags=5,
        file_kib=4,
        concurrency=(2, 4),
        rounds=1,
        slots=2,
        slow_fetchers=2,
        slow_readers=2,
        slow_rate=16 * 1024,
        one_offs=4,
        timeout=120.0,
    ),
}


# --- the repository ----------------------------------------------------------------------------------


def _text(rng: random.Random, words: Sequence[str], size: int) -> bytes:
    out, total = [], 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()


def _commit(
    out: IO[bytes], ref: str, mark: int, index: int, *, parent: int, blobs: list[tuple[bytes, bytes]]
) -> None:
    ts = EPOCH + index * 3600
    message = b"change %d" % index
    out.write(b"commit %s\nmark :%d\n" % (ref.encode(), mark))
    out.write(b"author Bench <bench@example.invalid> %d +0000\n" % ts)
    out.write(b"committer Bench <bench@example.invalid> %d +0000\n" % ts)
    out.write(b"data %d\n%s\n" % (len(message), message))
    if parent:
        out.write(b"from :%d\n" % parent)
    for path, blob in blobs:
        out.write(b"M 100644 inline %s\ndata %d\n%s\n" % (path, len(blob), blob))
    out.write(b"\n")


def make_upstream(work: Path, size: Size, seed: int) -> Path:
    """Codebundles of seeded text; tags on main's last commits and branches off them, as in a real
    CodeCollection, so a depth-2 fetch of every head and tag is a fraction of the history."""
    repo = work / "upstream" / f"{SLUG}.git"
    env = bs.git_env(work / "home")
    bs.run([bs.GIT, "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], env=env, timeout=60)
    rng = random.Random(seed)  # noqa: S311 - reproducible fixture data, not cryptography
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4000)]
    paths = [f"codebundles/cb{k // 4:03d}/{BUNDLE_FILES[k % 4]}".encode() for k in range(size.files)]
    mean = size.file_kib * 1024

    def blobs(chosen: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        return [(p, _text(rng, words, rng.randint(mean // 2, mean * 3 // 2))) for p in chosen]

    def write(out: IO[bytes]) -> None:
        _commit(out, "refs/heads/main", 1, 0, parent=0, blobs=blobs(paths))
        for i in range(1, size.commits):
            _commit(out, "refs/heads/main", i + 1, i, parent=i, blobs=blobs(rng.sample(paths, size.changes)))
        mark = size.commits
        for b in range(size.branches):
            mark += 1
            base = rng.randint(max(1, size.commits - 50), size.commits)
            ref = f"refs/heads/feature/{b:03d}"
            _commit(
                out, ref, mark, size.commits + b, parent=base, blobs=blobs(rng.sample(paths, size.changes))
            )
        for t in range(size.tags):
            message = b"release 0.%d.0\n" % t
            out.write(b"tag v0.%d.0\nfrom :%d\n" % (t, size.commits - 2 * t))
            out.write(b"tagger Bench <bench@example.invalid> %d +0000\n" % (EPOCH + t * 3600))
            out.write(b"data %d\n%s\n" % (len(message), message))

    bs._fast_import(repo, env, write)
    return repo


def write_config(work: Path, size: Size, upstream: Path) -> Path:
    path = work / "cccatalog.yaml"
    path.write_text(
        "git:\n"
        "  enabled: true\n"
        f"  data_dir: {work / 'mirrors'}\n"
        "serve:\n"
        f"  max_concurrent_upload_packs: {size.slots}\n"
        "state:\n"
        f"  path: {work / 'state' / 'state.sqlite3'}\n"
        "sources:\n"
        "  - name: bench\n"
        "    type: static\n"
        "    codecollections:\n"
        f"      - slug: {SLUG}\n"
        f"        git_url: file://{upstream}\n"
    )
    return path


def prepare(work: Path, size: Size, seed: int) -> tuple[Path, dict[str, object]]:
    """Generate and sync once per work dir; a later run with the same size and seed reuses it."""
    stamp = work / "fixtures.json"
    wanted = {"version": FIXTURE_VERSION, "size": size.name, "seed": seed}
    if stamp.exists() and (saved := json.loads(stamp.read_text())).get("key") == wanted:
        bs.log(f"reusing fixtures in {work}")
        return work / "cccatalog.yaml", saved["info"]
    for sub in ("upstream", "mirrors", "state"):
        shutil.rmtree(work / sub, ignore_errors=True)
    for sub in ("home", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    upstream = make_upstream(work, size, seed)
    config = write_config(work, size, upstream)
    env = {**os.environ, "HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    bs.run(bs.cccatalog_argv("sync", "-c", str(config), "--no-images", "-q"), env=env, timeout=1800)
    mirror = work / "mirrors" / f"{SLUG}.git"
    refs = bs.run([bs.GIT, "-C", str(mirror), "for-each-ref", "--format=x"], env=bs.git_env(work), timeout=60)
    pack_bytes = sum(p.stat().st_size for p in (mirror / "objects" / "pack").glob("*.pack"))
    info: dict[str, object] = {
        "seed": seed,
        "refs": len(refs.splitlines()),
        "pack_bytes": pack_bytes,
        "prepare_seconds": round(time.monotonic() - started, 1),
    }
    stamp.write_text(json.dumps({"key": wanted, "info": info}))
    bs.log(f"fixture: {info['refs']} refs, {pack_bytes / 1e6:.1f} MB pack")
    return config, info


# --- servers -----------------------------------------------------------------------------------------


def serve_config(work: Path, name: str, settings: str) -> Path:
    path = work / f"serve-{name}.yaml"
    path.write_text((work / "cccatalog.yaml").read_text().replace("serve:\n", "serve:\n" + settings))
    return path


def start_servers(
    work: Path, size: Size, names: Sequence[str], compare: Sequence[str], stack: ExitStack
) -> list[bs.Server]:
    servers = []
    for name in names:
        if name in ("cccatalog", "cccatalog-second-sight"):
            cache = work / f"{name}-cache"
            shutil.rmtree(cache, ignore_errors=True)  # every run starts cold
            sight = "true" if name == "cccatalog-second-sight" else "false"
            settings = f"  pack_cache_dir: {cache}\n  pack_cache_second_sight: {sight}\n"
            server = bs.start_cccatalog(work, serve_config(work, name, settings), name=name)
        elif name == "cccatalog-nocache":
            server = bs.start_cccatalog(work, serve_config(work, name, "  pack_cache_mb: 0\n"), name=name)
        elif name == "nginx-fcgiwrap":
            server = bs.start_nginx(work, size.slots, probe_repo=SLUG)
        else:
            cache = work / "hook-cache"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            hook_env = {
                "GIT_CONFIG_COUNT": "1",  # command-line scope: the only scopes git takes this hook from
                "GIT_CONFIG_KEY_0": "uploadpack.packObjectsHook",
                "GIT_CONFIG_VALUE_0": str(HOOK),
                "PACK_HOOK_CACHE": str(cache),
            }
            server = bs.start_nginx(work, size.slots, name=name, cgi_env=hook_env, probe_repo=SLUG)
        stack.callback(bs.stop_server, server)
        servers.append(server)
    for spec in compare:  # LABEL=PATH: serve from another tree, set as cccatalog-second-sight (the default)
        label, _, src = spec.partition("=")
        cache = work / f"compare-{label}-cache"  # a cache of its own: no answer made by another server
        shutil.rmtree(cache, ignore_errors=True)
        settings = f"  pack_cache_dir: {cache}\n  pack_cache_second_sight: true\n"
        server = bs.start_cccatalog(
            work,
            serve_config(work, f"compare-{label}", settings),
            name=f"cccatalog[{label}]",
            src=Path(src).resolve(),
        )
        stack.callback(bs.stop_server, server)
        servers.append(server)
    return servers


# --- the fleet ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetch:
    ok: bool
    seconds: float
    pack_bytes: int
    error: str = ""


def new_clients(folder: Path, url: str, count: int, env: dict[str, str]) -> list[Path]:
    """`count` new repositories with `origin` pointing at `url`, as a runner starts."""
    shutil.rmtree(folder, ignore_errors=True)
    repos = []
    for i in range(count):
        repo = folder / f"r{i:03d}"
        bs.run([bs.GIT, "init", "-q", str(repo)], env=env, timeout=60)
        bs.run([bs.GIT, "-C", str(repo), "remote", "add", "origin", url], env=env, timeout=60)
        repos.append(repo)
    return repos


def fetch_all(
    repos: Sequence[Path], env: dict[str, str], timeout: float, *, agents: Sequence[str] = ()
) -> tuple[list[Fetch], float]:
    """The platform's fetcher in every repo at once (the i-th as `agents[i % len(agents)]` when given);
    each fetch's result and the batch's wall time."""
    argv = [bs.GIT, "fetch", "-q", "--depth=2", "--tags", "origin"]
    envs = [{**env, "GIT_USER_AGENT": agents[i % len(agents)]} if agents else env for i in range(len(repos))]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, cwd=repo, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for repo, e in zip(repos, envs, strict=True)
    ]
    ends: dict[int, float] = {}

    def wait(i: int, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ends[i] = time.perf_counter()

    waiters = [threading.Thread(target=wait, args=(i, p)) for i, p in enumerate(procs)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join()
    results = []
    for i, (repo, proc) in enumerate(zip(repos, procs, strict=True)):
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        pack = sum(p.stat().st_size for p in (repo / ".git" / "objects" / "pack").glob("*.pack"))
        ok = proc.returncode == 0 and pack > 0
        results.append(
            Fetch(ok, ends[i] - started, pack, "" if ok else (err.splitlines() or ["?"])[-1][:300])
        )
    return results, max(ends.values()) - started


class SlowReader:
    """A client reading a fetch's answer at `rate` bytes/s (a runner on a thin link), until stopped."""

    def __init__(self, port: int, request: bytes, rate: int) -> None:
        self.port = port
        self.request = request
        self.rate = rate
        self.received = 0
        self.error = ""
        self.started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: a thin link
                sock.settimeout(5)
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(self.request)
                begun = time.monotonic()
                while not self._stop.is_set():
                    with suppress(TimeoutError):
                        data = sock.recv(4096)
                        if not data:
                            return
                        self.received += len(data)
                        self.started.set()
                    ahead = self.received / self.rate - (time.monotonic() - begun)
                    if ahead > 0:
                        self._stop.wait(ahead)
        except OSError as exc:
            self.error = str(exc)
        finally:
            self.started.set()


def fetch_request(work: Path, server: bs.Server, env: dict[str, str]) -> bs.Captured:
    """The platform fetcher's last POST (the one whose answer is the pack), recorded from a real run."""
    recorder = bs._Recorder(server.port)
    thread = threading.Thread(target=recorder.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{recorder.server_address[1]}/git/{SLUG}.git"
        [repo] = new_clients(work / "capture", url, 1, env)
        bs.run([bs.GIT, "fetch", "-q", "--depth=2", "--tags", "origin"], env=env, timeout=300, cwd=repo)
    finally:
        recorder.shutdown()
        recorder.server_close()
    return [p for p in recorder.posts if b"command=fetch" in p.plain or b"done" in p.plain][-1]


def raw_request(post: bs.Captured) -> bytes:
    head = [f"POST {post.path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in post.headers)]
    head.append(f"Content-Length: {len(post.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + post.body


def replay_all(
    port: int, post: bs.Captured, n: int, count: int, timeout: float, *, distinct: bool = False
) -> tuple[list[Fetch], float]:
    """`count` replays of the fetch's POST over `n` connections at once, answers counted and dropped:
    what the server can deliver when no client spends CPU on indexing the pack. `distinct`: each a
    request of its own (a `have` nobody has), for the same pack: one-off clones."""
    results: list[Fetch] = []
    lock = threading.Lock()
    left = [count]

    def worker() -> None:
        while True:
            with lock:
                if not left[0]:
                    return
                left[0] -= 1
            started = time.perf_counter()
            try:
                body = bs.distinct_body(post) if distinct else post.body
                answer = bs.http_request(port, "POST", post.path, post.headers, body, timeout=timeout)
                ok, size, error = answer.tail == b"0000", answer.nbytes, ""
            except (OSError, ValueError) as exc:
                ok, size, error = False, 0, f"{type(exc).__name__}: {exc}"
            with lock:
                results.append(Fetch(ok, time.perf_counter() - started, size, error[:300]))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


# --- cells -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    server: str
    cell: str  # fleet, replay, slow-readers, or beside-slow-readers (the same fleet without them)
    concurrency: int
    fetches: int
    failures: int
    mb_per_s: float
    fetches_per_s: float
    p50_s: float
    p99_s: float
    server_cpu_per_fetch: float
    client_cpu_per_fetch: float
    other_load_percent: float
    pack_bytes: int
    slow_reader_bytes: int = 0
    git_answers: int = -1  # pack answers git made (the pack cache's `made`); -1: not a cccatalog with a cache
    # MB per fetch the server process wrote to the page cache for storage (`write_bytes`), and that
    # less what was dropped before it reached the disk (`cancelled_write_bytes`); None: unknown
    disk_dirtied_per_fetch: float | None = None
    disk_written_per_fetch: float | None = None
    first_error: str = ""


@dataclass(slots=True)
class Batch:
    fetches: list[Fetch] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    busy: float = 0.0
    slow_bytes: int = 0
    git_answers: int = -1
    disk: tuple[int, int] | None = None  # bytes dirtied, bytes cancelled


def run_batch(
    work: Path,
    size: Size,
    server: bs.Server,
    n: int,
    *,
    slow: bytes | None,
    env: dict[str, str],
    replay: bs.Captured | None = None,
    agents: Sequence[str] = (),
    distinct: int = 0,
) -> Batch:
    url = f"http://127.0.0.1:{server.port}/git/{SLUG}.git"
    safe = "".join(c if c.isalnum() else "-" for c in server.name)
    repos = [] if replay is not None else new_clients(work / "clients" / safe, url, n, env)
    batch = Batch()
    with ExitStack() as stack:
        readers = []
        if slow is not None:
            for _ in range(size.slow_readers):
                readers.append(stack.enter_context(SlowReader(server.port, slow, size.slow_rate)))
            for reader in readers:
                reader.started.wait(30)
        table = bs._quiesce(server) if slow is None else bs.proc_table()
        cpu_before = bs._tree_cpu(server, table)
        client_before = _client_cpu()
        busy_before = bs.machine_busy_seconds()
        made_before, disk_before = pack_answers_made(server), disk_written(server)
        if replay is not None:
            count = distinct or n * 2
            batch.fetches, batch.wall = replay_all(
                server.port, replay, n, count, size.timeout, distinct=bool(distinct)
            )
        else:
            batch.fetches, batch.wall = fetch_all(repos, env, size.timeout, agents=agents)
        batch.busy = bs.machine_busy_seconds() - busy_before
        made_after, disk_after = pack_answers_made(server), disk_written(server)
        if made_before >= 0 and made_after >= 0:
            batch.git_answers = made_after - made_before
        if disk_before is not None and disk_after is not None:
            batch.disk = (disk_after[0] - disk_before[0], disk_after[1] - disk_before[1])
        batch.client_cpu = _client_cpu() - client_before
        batch.slow_bytes = sum(r.received for r in readers)
    batch.server_cpu = bs._tree_cpu(server, bs._quiesce(server)) - cpu_before
    shutil.rmtree(work / "clients" / safe, ignore_errors=True)
    return batch


def pack_answers_made(server: bs.Server) -> int:
    """The pack cache's `made` counter from /metrics (answers git made); -1 when there is none."""
    if not server.name.startswith("cccatalog"):
        return -1
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("cccatalog_pack_cache_made_total "):
            return int(float(line.split()[1]))
    return -1


def disk_written(server: bs.Server) -> tuple[int, int] | None:
    """Bytes the server's main process wrote for storage (`/proc/<pid>/io`: the pages it dirtied) and
    those dropped before they were written back (a spool deleted in time); None when unknown. The pack
    cache writes from serve's own process, so this is its disk traffic."""
    if not server.name.startswith("cccatalog") or not server.procs:
        return None
    try:
        fields = dict(
            line.split(": ") for line in Path(f"/proc/{server.procs[0].pid}/io").read_text().splitlines()
        )
    except OSError:
        return None
    return int(fields["write_bytes"]), int(fields["cancelled_write_bytes"])


def _client_cpu() -> float:
    """CPU of the clients: the git fetches (children, counted once reaped) and the replaying threads."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def merge(server: str, cell: str, n: int, batches: Sequence[Batch]) -> Row:
    fetches = [f for b in batches for f in b.fetches]
    done = [f for f in fetches if f.ok]
    lat = sorted(f.seconds for f in done)
    wall = sum(b.wall for b in batches)
    server_cpu, client_cpu = sum(b.server_cpu for b in batches), sum(b.client_cpu for b in batches)
    other = max(0.0, sum(b.busy for b in batches) - server_cpu - client_cpu)
    failures = [f for f in fetches if not f.ok]
    return Row(
        server=server,
        cell=cell,
        concurrency=n,
        fetches=len(fetches),
        failures=len(failures),
        mb_per_s=round(sum(f.pack_bytes for f in done) / wall / 1e6, 2) if wall else 0.0,
        fetches_per_s=round(len(done) / wall, 2) if wall else 0.0,
        p50_s=round(bs.percentile(lat, 0.5), 3),
        p99_s=round(bs.percentile(lat, 0.99), 3),
        server_cpu_per_fetch=round(server_cpu / max(1, len(fetches)), 4),
        client_cpu_per_fetch=round(client_cpu / max(1, len(fetches)), 4),
        other_load_percent=round(100 * other / (wall * (os.cpu_count() or 1)), 1) if wall else 0.0,
        pack_bytes=max((f.pack_bytes for f in done), default=0),
        slow_reader_bytes=sum(b.slow_bytes for b in batches),
        git_answers=sum(b.git_answers for b in batches) if all(b.git_answers >= 0 for b in batches) else -1,
        disk_dirtied_per_fetch=_per_fetch([b.disk[0] for b in batches if b.disk], len(batches), fetches),
        disk_written_per_fetch=_per_fetch(
            [b.disk[0] - b.disk[1] for b in batches if b.disk], len(batches), fetches
        ),
        first_error=failures[0].error if failures else "",
    )


def _per_fetch(values: Sequence[int], batches: int, fetches: Sequence[Fetch]) -> float | None:
    """MB per fetch, when every batch was measured."""
    if len(values) != batches:
        return None
    return round(sum(values) / max(1, len(fetches)) / 1e6, 3)


def measure(
    work: Path, size: Size, servers: Sequence[bs.Server], post: bs.Captured, env: dict[str, str]
) -> list[Row]:
    rows = []
    top = size.concurrency[-1]
    # (cell, N, its variants): variants are measured in the same rounds, so drift in the machine's load
    # cannot pass for their effect: the slow readers' cell beside the same fleet without them, the
    # fleet of three git versions beside the uniform one
    cells: list[tuple[str, int, tuple[str, ...]]] = [
        ("fleet", n, ("fleet", "fleet-agents") if n == top else ("fleet",)) for n in size.concurrency
    ]
    cells += [("replay", n, ("replay",)) for n in size.concurrency]
    cells.append(("slow-readers", size.slow_fetchers, ("beside-slow-readers", "slow-readers")))
    cells.append(("one-off", 4, ("one-off",)))  # distinct requests, each asked once: what a cache costs
    slow = raw_request(post)
    for cell, n, variants in cells:
        batches: dict[tuple[str, str], list[Batch]] = {}
        for _ in range(size.rounds):
            for server in servers:
                if cell == "one-off" and not server.name.startswith("cccatalog"):
                    continue  # no cache to write: nothing to measure
                for variant in variants:
                    batches.setdefault((server.name, variant), []).append(
                        run_batch(
                            work,
                            size,
                            server,
                            n,
                            env=env,
                            slow=slow if variant == "slow-readers" else None,
                            replay=post if cell in ("replay", "one-off") else None,
                            agents=AGENTS if variant == "fleet-agents" else (),
                            distinct=size.one_offs if cell == "one-off" else 0,
                        )
                    )
        for (name, variant), measured in batches.items():
            row = merge(name, variant, n, measured)
            rows.append(row)
            bs.log(
                f"{row.server:22} {variant:19} N={n:<3} fail {row.failures:3} {row.mb_per_s:7.2f} MB/s"
                f" {row.fetches_per_s:6.2f} fetch/s p50 {row.p50_s:6.2f}s p99 {row.p99_s:6.2f}s"
                f" cpu/fetch {row.server_cpu_per_fetch:.4f} git answers {row.git_answers}"
                f" disk/fetch {row.disk_dirtied_per_fetch}/{row.disk_written_per_fetch} MB"
                f" other load {row.other_load_percent:.0f}%"
            )
    return rows


def time_hook_hit(work: Path, repeats: int) -> dict[str, float] | None:
    """One cache hit of the hook alone (no git around it), as upload-pack would run it: wall and CPU."""
    cache = work / "hook-cache"
    args, stdin = cache / "last-args", cache / "last-input"
    if not args.exists() or not stdin.exists():
        return None
    argv = [str(HOOK), *args.read_text().splitlines()]
    env = {**bs.git_env(work / "home"), "PACK_HOOK_CACHE": str(cache)}
    mirror = work / "mirrors" / f"{SLUG}.git"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    for _ in range(repeats):
        with stdin.open("rb") as feed:
            subprocess.run(argv, stdin=feed, stdout=subprocess.DEVNULL, cwd=mirror, env=env, check=True)
    wall = (time.perf_counter() - started) / repeats
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / repeats
    return {"wall_ms": round(wall * 1000, 2), "cpu_ms": round(cpu * 1000, 2)}


# --- report ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None


def _row(rows: Sequence[Row], server: str, cell: str, n: int) -> Row | None:
    return next((r for r in rows if (r.server, r.cell, r.concurrency) == (server, cell, n)), None)


def evaluate(rows: Sequence[Row], size: Size, hook: dict[str, float] | None) -> list[Target]:
    targets = []
    top = size.concurrency[-1]
    ccc = _row(rows, "cccatalog", "fleet", top)
    if ccc:
        targets.append(
            Target(f"failed fetches at N={top}, cccatalog", str(ccc.failures), "0", ccc.failures == 0)
        )
    for cell in ("fleet", "replay"):
        for n in size.concurrency:
            a, b = _row(rows, "cccatalog", cell, n), _row(rows, "nginx-fcgiwrap", cell, n)
            r = bs._ratio(a.mb_per_s, b.mb_per_s) if a and b else None
            targets.append(
                Target(
                    f"{cell} MB/s at N={n}: cccatalog / nginx+fcgiwrap",
                    bs._fmt_ratio(r),
                    ">= 3.00x",
                    None if r is None else r >= 3.0,
                )
            )
    for cell in ("fleet", "replay"):
        a, b = _row(rows, "cccatalog", cell, top), _row(rows, "nginx-fcgiwrap", cell, top)
        r = bs._ratio(a.server_cpu_per_fetch, b.server_cpu_per_fetch) if a and b else None
        targets.append(
            Target(
                f"{cell} server CPU per fetch at N={top}: cccatalog / nginx+fcgiwrap",
                bs._fmt_ratio(r),
                "<= 0.30x",
                None if r is None else r <= 0.3,
            )
        )
    for server in ("cccatalog", "cccatalog-nocache"):
        slow = _row(rows, server, "slow-readers", size.slow_fetchers)
        base = _row(rows, server, "beside-slow-readers", size.slow_fetchers)
        r = bs._ratio(slow.fetches_per_s, base.fetches_per_s) if slow and base else None
        name = f"fetches/s of {size.slow_fetchers} others with {size.slow_readers} slow readers / without"
        targets.append(
            Target(f"{name}, {server}", bs._fmt_ratio(r), ">= 0.90x", None if r is None else r >= 0.9)
        )
    mixed, uniform = _row(rows, "cccatalog", "fleet-agents", top), _row(rows, "cccatalog", "fleet", top)
    if mixed and uniform:
        targets.append(
            Target(
                f"failed fetches at N={top}, three git agents in one burst, cccatalog",
                str(mixed.failures),
                "0",
                mixed.failures == 0,
            )
        )
        r = bs._ratio(mixed.mb_per_s, uniform.mb_per_s)
        targets.append(
            Target(
                f"fleet MB/s at N={top}, three agents / one agent, cccatalog",
                bs._fmt_ratio(r),
                ">= 0.90x",
                None if r is None else r >= 0.9,
            )
        )
        targets.append(
            Target(
                f"git answers for {mixed.fetches} fetches of three agents (after the uniform fleet's)",
                str(mixed.git_answers),
                "0",
                mixed.git_answers == 0,
            )
        )
    if hook:
        targets.append(
            Target(
                "packObjectsHook prototype, one hit of the hook alone (wall)",
                f"{hook['wall_ms']:.1f} ms",
                "<= 3 ms",
                hook["wall_ms"] <= 3.0,
            )
        )
    return targets


def report(rows: Sequence[Row], targets: Sequence[Target], hook: dict[str, float] | None) -> str:
    status = {True: "met", False: "MISSED", None: "not measured"}
    judged = [(t.name, t.measured, t.goal, status[t.met]) for t in targets]
    out = ["## Targets\n", bs.markdown_table(["target", "measured", "goal", ""], judged)]
    out.append("\n## Every cell\n")
    out.append(
        bs.markdown_table(
            [
                "server",
                "cell",
                "N",
                "fetches",
                "failed",
                "MB/s",
                "fetches/s",
                "p50 s",
                "p99 s",
                "server CPU s/fetch",
                "client CPU s/fetch",
                "other load %",
                "first error",
            ],
            [
                (
                    r.server,
                    r.cell,
                    r.concurrency,
                    r.fetches,
                    r.failures,
                    r.mb_per_s,
                    r.fetches_per_s,
                    r.p50_s,
                    r.p99_s,
                    r.server_cpu_per_fetch,
                    r.client_cpu_per_fetch,
                    r.other_load_percent,
                    r.first_error[:60],
                )
                for r in rows
            ],
        )
    )
    out.append("\n## Pack cache: git answers and disk written per served fetch\n")
    out.append(
        bs.markdown_table(
            [
                "server",
                "cell",
                "N",
                "fetches",
                "git answers",
                "hit rate",
                "MB/fetch written",
                "MB/fetch to disk",
            ],
            [
                (
                    r.server,
                    r.cell,
                    r.concurrency,
                    r.fetches,
                    r.git_answers,
                    f"{1 - r.git_answers / r.fetches:.3f}" if r.fetches else "-",
                    r.disk_dirtied_per_fetch,
                    r.disk_written_per_fetch,
                )
                for r in rows
                if r.git_answers >= 0
            ],
        )
    )
    nginx = {(r.cell, r.concurrency): r for r in rows if r.server == "nginx-fcgiwrap"}
    out.append("\n## Against nginx+fcgiwrap in the same cell (MB/s ratio; server CPU per fetch ratio)\n")
    body = []
    for r in rows:
        base = nginx.get((r.cell, r.concurrency))
        if base is None or r.server == "nginx-fcgiwrap":
            continue
        mbs = bs._fmt_ratio(bs._ratio(r.mb_per_s, base.mb_per_s))
        cpu = bs._fmt_ratio(bs._ratio(r.server_cpu_per_fetch, base.server_cpu_per_fetch))
        body.append((r.server, r.cell, r.concurrency, mbs, cpu))
    out.append(bs.markdown_table(["server", "cell", "N", "MB/s", "server CPU/fetch"], body))
    if hook:
        out.append(
            f"\nOne hit of the packObjectsHook prototype alone: {hook['wall_ms']} ms wall, "
            f"{hook['cpu_ms']} ms CPU (sh, mktemp, cat, sha256sum, cut, cat)."
        )
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A fleet of `git fetch --depth=2 --tags` against cccatalog serve (pack cache on and "
        "off), nginx+fcgiwrap+git http-backend, and the same with a packObjectsHook pack cache.",
        epilog="example: python -m benchmarks.fleet.bench_fleet --size smoke --json-out fleet.json",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument(
        "--work-dir", type=Path, help="keep fixtures here and reuse them (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    parser.add_argument(
        "--json-out", "--output", type=Path, help="result file (default: ./bench-fleet-<size>.json)"
    )
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument(
        "--server", action="append", choices=SERVERS, help="run only this server (repeatable)"
    )
    parser.add_argument(
        "--compare-src",
        action="append",
        metavar="LABEL=PATH",
        default=[],
        help="also run `cccatalog serve` from the tree PATH as cccatalog[LABEL]",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long for the machine to be idle",
    )
    parser.add_argument("--quiet-below", type=float, default=10.0, metavar="PERCENT")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: the servers this run started are stopped


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    size = SIZES[args.size]
    names = tuple(args.server or SERVERS)
    if any(n.startswith("nginx") for n in names):
        bs.ensure_tools(install=False)
    json_out = (args.json_out or Path(f"bench-fleet-{size.name}.json")).resolve()
    started = time.monotonic()
    with bs.work_dir(args.work_dir, args.keep, prefix="bench-fleet-") as work, ExitStack() as stack:
        _, info = prepare(work, size, args.seed)
        env = bs.git_env(work / "home")
        servers = start_servers(work, size, names, args.compare_src, stack)
        bs.log("servers up: " + ", ".join(f"{s.name}:{s.port}" for s in servers))
        # recorded through a server that is not measured for its cache, so every cache starts cold
        post = fetch_request(
            work,
            next(
                (s for s in servers if "nocache" in s.name or not s.name.startswith("cccatalog")), servers[0]
            ),
            env,
        )
        busy = bs.wait_for_quiet(args.quiet_below, args.quiet_wait) if args.quiet_wait > 0 else None
        rows = measure(work, size, servers, post, env)
        hook = time_hook_hit(work, 20) if "nginx-fcgiwrap-hook" in names else None
    targets = evaluate(rows, size, hook)
    print(report(rows, targets, hook))
    result = {
        "benchmark": "fleet",
        "size": size.name,
        "command": " ".join(
            ["python -m benchmarks.fleet.bench_fleet", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": bs.describe_machine(),
        "fixture": info,
        "machine_busy_percent_at_start": busy,
        "seconds": round(time.monotonic() - started, 1),
        "rows": [asdict(r) for r in rows],
        "hook_hit": hook,
        "targets": [asdict(t) for t in targets],
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    bs.log(f"wrote {json_out} ({result['seconds']}s)")
    failed = [r for r in rows if r.failures and r.server in ("cccatalog", "cccatalog-nocache")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
