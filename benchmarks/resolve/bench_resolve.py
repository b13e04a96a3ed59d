"""Benchmark `resolve-latest` against what users would run instead, on real local registries.

On a real distribution 2.8 registry (anonymous, and token auth with anonymous pull as on ghcr.io) holding
REFS refs x TAGS tags with shuffled `created` dates, the newest build of every ref is found by:

- `cccatalog resolve-latest --all-refs --json` as a subprocess, with a cold and a warm cache directory;
- the library (`resolve_repository` with a fresh `RegistryClient`), cold and warm, without process start-up;
- a skopeo loop: `skopeo list-tags`, then `skopeo inspect --config` per candidate tag (what users script);
- the predecessor's algorithm, re-implemented: no token cache (every call is answered 401, a token is
  minted and the call repeated), a GET manifest and a GET config blob per tag, one after another.

Beside them, reference rows that are not ways to answer the question: the library with the old defaults
(4 requests per host, 8 workers), and the floor: a bare Python start-up, `import httpx` with one client,
and a bare httpx script making the same requests as cccatalog cold and warm (no cache, no logic).

Wall times are measured straight against the registry. Requests are counted in a separate pass through a
counting loopback proxy (plus the token server's own log), so the proxy never slows the timed runs.
Every approach must agree on the newest tag of every ref, or the benchmark fails.

    python -m benchmarks.resolve.bench_resolve --size full
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script as well as with `python -m`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402
from cccatalog.oci.cache import BlobCache  # noqa: E402
from cccatalog.oci.client import DEFAULT_PER_HOST, MANIFEST_ACCEPT, RegistryClient  # noqa: E402
from cccatalog.oci.reference import Repository  # noqa: E402
from cccatalog.oci.resolve import DEFAULT_WORKERS, parse_created, resolve_repository  # noqa: E402
from cccatalog.oci.tags import group_by_ref  # noqa: E402
from tests.registry import (  # noqa: E402
    LyingProxy,
    Mode,
    RunningRegistry,
    parse_challenge,
    push_image,
    start_registry,
)

REPO = "bench/codecollection"
WIDE = "what-if: library 16/host"  # the defaults now: a second measurement of the library rows
OLD = "library, old defaults 4/host"
REF_NAMES = (
    "main",
    "develop",
    "v1.2.0",
    "v1.3.0-rc1",
    "pr-42",
    "pr-108",
    "fix-login",
    "feature-oci-index",
    "release-2024",
    "renovate-deps",
)
MODES: tuple[Mode, ...] = ("anonymous", "token")
RESULT = Path(__file__).with_name("results-full.json")
SKOPEO_TIMEOUT = 60


@dataclass(frozen=True)
class Size:
    refs: int
    tags_per_ref: int
    reps: int


SIZES = {"smoke": Size(refs=3, tags_per_ref=4, reps=1), "full": Size(refs=10, tags_per_ref=20, reps=3)}


@dataclass
class Row:
    mode: str
    approach: str
    seconds: float  # median wall time
    requests: int  # registry + token server requests
    detail: dict[str, int] = field(default_factory=dict)
    vs_skopeo: float = 0.0  # how many times faster than the skopeo loop
    vs_predecessor: float = 0.0


Newest = dict[str, str]  # ref -> newest tag
Approach = Callable[[str], Newest]  # registry host[:port] -> answer


# --- the registry content ------------------------------------------------------------------------------


def plan_tags(size: Size) -> dict[str, datetime]:
    """`<ref>-<sha7>-<sha7>` -> created, deterministic; dates shuffled so tag order says nothing."""
    rng = random.Random(7)  # noqa: S311 - deterministic test data, not crypto
    base = datetime(2025, 1, 1, tzinfo=UTC)
    tags: dict[str, datetime] = {}
    for ref in REF_NAMES[: size.refs]:
        minutes = rng.sample(range(1, 500_000), size.tags_per_ref)
        for i, minute in enumerate(minutes):
            cc = hashlib.sha1(f"{ref}/{i}/cc".encode()).hexdigest()[:7]  # noqa: S324 - fake commit ids
            rt = hashlib.sha1(f"{ref}/{i}/rt".encode()).hexdigest()[:7]  # noqa: S324
            tags[f"{ref}-{cc}-{rt}"] = base + timedelta(minutes=minute)
    return tags


def expected_newest(tags: dict[str, datetime]) -> Newest:
    best: dict[str, tuple[datetime, str]] = {}
    for ref, group in group_by_ref(tags).items():
        best[ref] = max((tags[t.tag], t.tag) for t in group)
    return {ref: tag for ref, (_, tag) in best.items()}


def populate(registry: RunningRegistry, tags: dict[str, datetime]) -> None:
    def push(item: tuple[str, datetime]) -> None:
        tag, created = item
        push_image(registry, REPO, tag, created=created.strftime("%Y-%m-%dT%H:%M:%SZ"), kind="oci")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(push, sorted(tags.items())))


# --- the approaches ------------------------------------------------------------------------------------


def cccatalog_argv() -> list[str]:
    """The installed entry point (as a user runs it), else `python -m cccatalog`."""
    script = Path(sys.executable).with_name("cccatalog")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cccatalog"]


def clean_env(home: Path, cache: Path) -> dict[str, str]:
    """No logins of the user, a cache directory of our choosing, and this checkout's code first on the
    path (an installed entry point may point at another copy)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(cache), XDG_RUNTIME_DIR=str(home / "run"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return env


class CLIRunner:
    """`cccatalog resolve-latest --all-refs --json` in a subprocess; `requests` is what it reported."""

    def __init__(self, home: Path, cache: Path) -> None:
        self.home, self.cache = home, cache
        self.last_requests = 0

    def __call__(self, host: str) -> Newest:
        argv = [*cccatalog_argv(), "resolve-latest", f"{host}/{REPO}", "--all-refs", "--json"]
        result = subprocess.run(
            argv,
            env=clean_env(self.home, self.cache),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"cccatalog failed ({result.returncode}): {result.stderr[-2000:]}")
        payload = json.loads(result.stdout)
        self.last_requests = int(payload["requests"])
        return {r["ref"]: r["newest"]["tag"] for r in payload["refs"]}


class LibraryRunner:
    """`resolve_repository` with a fresh `RegistryClient` on a disk cache; `counts` from the client.

    `per_host` and `workers` are the library's own knobs (the old defaults were 4 and 8)."""

    def __init__(
        self, cache: Path, *, per_host: int = DEFAULT_PER_HOST, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.cache = cache
        self.per_host, self.workers = per_host, workers
        self.counts: dict[str, int] = {}

    def __call__(self, host: str) -> Newest:
        with RegistryClient(cache=BlobCache(self.cache), per_host=self.per_host) as client:
            repo = Repository(host, REPO, plain_http=True)
            resolutions = resolve_repository(client, repo, workers=self.workers)
            self.counts = dict(client.counts)
        return {r.ref: r.newest.tag.tag for r in resolutions}


def skopeo(*args: str) -> str:
    result = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=SKOPEO_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def skopeo_loop(host: str) -> Newest:
    """What users script today: list the tags, then `inspect --config` each candidate, one by one."""
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{REPO}"))
    newest: Newest = {}
    for ref, group in group_by_ref(listed["Tags"]).items():
        if len(group) == 1:
            newest[ref] = group[0].tag
            continue
        dated = []
        for candidate in group:
            config = json.loads(
                skopeo("inspect", "--config", "--tls-verify=false", f"docker://{host}/{REPO}:{candidate.tag}")
            )
            dated.append(
                (parse_created(config.get("created")) or datetime.min.replace(tzinfo=UTC), candidate.tag)
            )
        newest[ref] = max(dated)[1]
    return newest


class Predecessor:
    """The predecessor's algorithm: every call goes out bare, meets a 401, mints a token and is repeated
    (no token cache); each tag costs a GET manifest and a GET config blob; one call at a time."""

    accept = (
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    )

    def __call__(self, host: str) -> Newest:
        base = f"http://{host}/v2/{REPO}"
        with httpx.Client(timeout=30) as http:
            tags = self._get(http, f"{base}/tags/list").json()["tags"]
            newest: Newest = {}
            for ref, group in group_by_ref(tags).items():
                dated = []
                for candidate in group:
                    manifest = self._get(http, f"{base}/manifests/{candidate.tag}", self.accept).json()
                    config = self._get(http, f"{base}/blobs/{manifest['config']['digest']}").json()
                    created = parse_created(config.get("created")) or datetime.min.replace(tzinfo=UTC)
                    dated.append((created, candidate.tag))
                newest[ref] = max(dated)[1]
        return newest

    @staticmethod
    def _get(http: httpx.Client, url: str, accept: str | None = None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        response = http.get(url, headers=headers)
        if response.status_code == 401:
            scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if scheme == "bearer":
                query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
                minted = http.get(params["realm"], params=query)
                minted.raise_for_status()
                token = minted.json().get("token") or minted.json()["access_token"]
                response = http.get(url, headers={**headers, "Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response


# --- the floor: what any Python client pays, without cccatalog ------------------------------------------

# The same requests as cccatalog makes, from a bare httpx script: the listing (with one token mint when
# challenged), then per candidate a HEAD (warm) or a GET manifest by tag and a GET config blob (cold),
# FLOOR_WORKERS at once. Prints how many requests it made. Nothing is cached, verified or answered.
FLOOR_CLIENT = r"""
import re, sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import httpx
host, repo, phase, workers, accept = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
base, canonical = f"http://{host}/v2/{repo}", re.compile(r"(.+)-[0-9a-f]{7,40}-[0-9a-f]{7,40}")
with httpx.Client(limits=httpx.Limits(max_keepalive_connections=workers)) as http:
    listing, sent = http.get(f"{base}/tags/list?n=1000"), 1
    if listing.status_code == 401:
        params = dict(re.findall(r'(\w+)="([^"]*)"', listing.headers["WWW-Authenticate"]))
        query = {k: params[k] for k in ("service", "scope") if k in params}
        token = http.get(params["realm"], params=query).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        listing, sent = http.get(f"{base}/tags/list?n=1000"), sent + 2
    tags = [m for t in listing.json()["tags"] if (m := canonical.fullmatch(t))]
    refs = Counter(m[1] for m in tags)
    candidates = [m[0] for m in tags if refs[m[1]] > 1]

    def warm(tag):
        http.head(f"{base}/manifests/{tag}", headers={"Accept": accept}).raise_for_status()
        return 1

    def cold(tag):
        manifest = http.get(f"{base}/manifests/{tag}", headers={"Accept": accept})
        manifest.raise_for_status()
        http.get(f"{base}/blobs/{manifest.json()['config']['digest']}").raise_for_status()
        return 2

    with ThreadPoolExecutor(workers) as pool:
        sent += sum(pool.map(warm if phase == "warm" else cold, candidates))
print(sent)
"""
FLOOR_WORKERS = 16  # as many as cccatalog's defaults
FLOOR_STARTUP = {
    "floor: python start-up": "pass",
    "floor: python + import httpx + one Client": "import httpx; httpx.Client()",
}


class FloorRunner:
    """A bare Python process: `code` alone, or the bare httpx client in `phase` (cold or warm)."""

    def __init__(self, *, phase: str | None = None, code: str | None = None) -> None:
        self.phase, self.code = phase, code
        self.last_requests = 0

    def __call__(self, host: str) -> Newest:
        args = [self.code or "pass"] if self.phase is None else [FLOOR_CLIENT, host, REPO, self.phase]
        if self.phase is not None:
            args += [str(FLOOR_WORKERS), MANIFEST_ACCEPT]
        result = subprocess.run(
            [sys.executable, "-c", *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"floor client failed: {result.stderr[-2000:]}")
        self.last_requests = int(result.stdout) if self.phase is not None else 0
        return {}


# --- measuring -----------------------------------------------------------------------------------------


class DelayingProxy(LyingProxy):
    """A registry `delay` seconds away: every request waits that long before it is forwarded."""

    def __init__(self, upstream_url: str, delay: float) -> None:
        super().__init__(upstream_url, lambda _path: None)
        self.delay = delay

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(self.delay)
        super().forward(handler)


def timed(approach: Approach, host: str, expected: Newest, name: str) -> float:
    started = time.perf_counter()
    answer = approach(host)
    seconds = time.perf_counter() - started
    if isinstance(approach, FloorRunner):
        return seconds  # answers nothing: only its request count is checked
    if answer != expected:
        wrong = sorted(ref for ref in expected if answer.get(ref) != expected[ref])
        raise RuntimeError(f"{name} picked the wrong newest tag for {wrong}")
    return seconds


def proxied_requests(
    proxy: LyingProxy, registry: RunningRegistry, approach: Approach, expected: Newest, name: str
) -> int:
    """How many requests `approach` makes: registry requests through a counting proxy, plus token mints.

    One proxy serves the whole counting pass: cccatalog remembers tags per registry host[:port], so a
    warm run through a new proxy (a new port) would look like a first visit."""
    before = len(proxy.requests)
    if registry.token_server is not None:
        registry.token_server.clear()
    timed(approach, proxy.host, expected, name)
    tokens = len(registry.token_server.requests) if registry.token_server is not None else 0
    return len(proxy.requests) - before + tokens


@contextmanager
def scratch(parent: Path, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


Measured = tuple[list[Row], list[Row]]  # the approaches, and the reference rows


def bench_mode(mode: Mode, size: Size, work: Path, rtt: float) -> Measured:
    tags = plan_tags(size)
    expected = expected_newest(tags)
    registry = start_registry(work / f"registry-{mode}", mode)
    try:
        populate(registry, tags)
        if not rtt:
            return measure(registry, registry.host, size, expected, work)
        with DelayingProxy(registry.url, rtt) as remote:
            return measure(registry, remote.host, size, expected, work)
    finally:
        registry.stop()


def measure(registry: RunningRegistry, host: str, size: Size, expected: Newest, work: Path) -> Measured:
    """Time every approach and reference against `host` (the registry, or a delaying proxy to it)."""
    mode = registry.mode
    times: dict[str, list[float]] = {}
    home = work / f"home-{mode}"
    (home / "run").mkdir(parents=True, exist_ok=True)

    def record(name: str, approach: Approach) -> None:
        times.setdefault(name, []).append(timed(approach, host, expected, name))

    for _ in range(size.reps):  # approaches interleaved, so drift hits them all alike
        with scratch(work, "cli") as cli_cache, scratch(work, "lib") as lib_cache:
            record("cccatalog CLI, cold cache", CLIRunner(home, cli_cache))
            record("cccatalog CLI, warm cache", CLIRunner(home, cli_cache))
            record("cccatalog library, cold cache", LibraryRunner(lib_cache))
            record("cccatalog library, warm cache", LibraryRunner(lib_cache))
        with scratch(work, "wide") as wide_cache:
            record(f"{WIDE}, cold cache", LibraryRunner(wide_cache, per_host=16, workers=16))
            record(f"{WIDE}, warm cache", LibraryRunner(wide_cache, per_host=16, workers=16))
        record("skopeo loop", skopeo_loop)
        record("predecessor algorithm", Predecessor())
        with scratch(work, "old") as old_cache:
            record(f"{OLD}, cold cache", LibraryRunner(old_cache, per_host=4, workers=8))
            record(f"{OLD}, warm cache", LibraryRunner(old_cache, per_host=4, workers=8))
        for name, code in FLOOR_STARTUP.items():
            record(name, FloorRunner(code=code))
        for phase in ("cold", "warm"):
            record(f"floor: bare httpx, {phase} requests", FloorRunner(phase=phase))

    counts: dict[str, int] = {}
    details: dict[str, dict[str, int]] = {}
    with (
        LyingProxy(registry.url, lambda _path: None) as proxy,
        scratch(work, "cli") as cli_cache,
        scratch(work, "lib") as lib_cache,
    ):
        cli = CLIRunner(home, cli_cache)
        for name in ("cccatalog CLI, cold cache", "cccatalog CLI, warm cache"):
            counts[name] = proxied_requests(proxy, registry, cli, expected, name)
            if cli.last_requests != counts[name]:
                raise RuntimeError(
                    f"{name}: reported {cli.last_requests} requests, the proxy saw {counts[name]}"
                )
        for prefix, library in (
            ("cccatalog library", LibraryRunner(lib_cache)),
            (WIDE, LibraryRunner(lib_cache / "wide", per_host=16, workers=16)),
            (OLD, LibraryRunner(lib_cache / "old", per_host=4, workers=8)),
        ):
            for name in (f"{prefix}, cold cache", f"{prefix}, warm cache"):
                counts[name] = proxied_requests(proxy, registry, library, expected, name)
                details[name] = library.counts
                if sum(library.counts.values()) != counts[name]:
                    raise RuntimeError(f"{name}: client.counts {library.counts} disagree with the proxy")
        counts["skopeo loop"] = proxied_requests(proxy, registry, skopeo_loop, expected, "skopeo loop")
        counts["predecessor algorithm"] = proxied_requests(
            proxy, registry, Predecessor(), expected, "predecessor"
        )
        for name in FLOOR_STARTUP:
            counts[name] = 0
        for phase in ("cold", "warm"):
            name, floor = f"floor: bare httpx, {phase} requests", FloorRunner(phase=phase)
            counts[name] = proxied_requests(proxy, registry, floor, expected, name)
            if floor.last_requests != counts[name]:
                raise RuntimeError(
                    f"{name}: made {floor.last_requests} requests, the proxy saw {counts[name]}"
                )

    medians = {name: statistics.median(values) for name, values in times.items()}
    every = [
        Row(
            mode=mode,
            approach=name,
            seconds=round(seconds, 4),
            requests=counts[name],
            detail=details.get(name, {}),
            vs_skopeo=round(medians["skopeo loop"] / seconds, 2),
            vs_predecessor=round(medians["predecessor algorithm"] / seconds, 2),
        )
        for name, seconds in medians.items()
    ]
    references = {f"{OLD}, cold cache", f"{OLD}, warm cache", *(n for n in medians if n.startswith("floor"))}
    return [r for r in every if r.approach not in references], [r for r in every if r.approach in references]


# --- reporting -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    value: str
    met: bool


def targets(rows: Sequence[Row], size: Size) -> list[Target]:
    candidates = size.refs * size.tags_per_ref  # every ref has several tags: all are candidates
    found: list[Target] = []
    for mode in MODES:
        by_name = {r.approach: r for r in rows if r.mode == mode}
        cold, warm = by_name["cccatalog CLI, cold cache"], by_name["cccatalog CLI, warm cache"]
        found.append(
            Target(f"{mode}: CLI cold vs skopeo loop", ">= 5x", f"{cold.vs_skopeo}x", cold.vs_skopeo >= 5)
        )
        found.append(
            Target(f"{mode}: CLI warm vs skopeo loop", ">= 20x", f"{warm.vs_skopeo}x", warm.vs_skopeo >= 20)
        )
        detail = by_name["cccatalog library, warm cache"].detail
        # The auth handshake (one 401 and one token mint per run) is not registry work: counted apart.
        handshake = detail.get("GET token", 0) * 2
        work = sum(detail.values()) - handshake
        bound = 1 + candidates
        found.append(
            Target(
                f"{mode}: warm requests <= 1 listing + 1 HEAD per candidate",
                f"<= {bound}",
                f"{work} (+{handshake} auth handshake): {detail}",
                work <= bound and set(detail) <= {"GET tags", "HEAD manifest-head", "GET token"},
            )
        )
    return found


def print_report(rows: Sequence[Row], references: Sequence[Row], found: Sequence[Target]) -> None:
    for title, table in (("approach", rows), ("reference (not an answer)", references)):
        header = (
            f"{'mode':<10} {title:<44} {'seconds':>9} {'requests':>9} {'x vs skopeo':>12} {'x vs pred.':>11}"
        )
        print(header)
        print("-" * len(header))
        for r in table:
            print(
                f"{r.mode:<10} {r.approach:<44} {r.seconds:>9.3f} {r.requests:>9} "
                f"{r.vs_skopeo:>11.2f}x {r.vs_predecessor:>10.2f}x"
            )
        print()
    for t in found:
        print(f"{'MET ' if t.met else 'MISS'} {t.name}: {t.value} (target {t.wanted})")


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the registry processes and the token server are stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--output", type=Path, help=f"JSON result [default for full: {RESULT.name}]")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="time the runs through a proxy that delays every registry request this long (a remote registry)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    default = RESULT.with_name(f"results-full-rtt{args.rtt_ms:g}ms.json") if args.rtt_ms else RESULT
    output: Path | None = args.output or (default if args.size == "full" else None)
    rows: list[Row] = []
    references: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-resolve-") as tmp:
        for mode in MODES:
            measured, referenced = bench_mode(mode, size, Path(tmp), args.rtt_ms / 1000)
            rows += measured
            references += referenced
    found = targets(rows, size)
    print_report(rows, references, found)
    result = {
        "benchmark": "resolve-latest",
        "size": args.size,
        "parameters": {**asdict(size), "rtt_ms": args.rtt_ms},
        "machine": machine({"skopeo": ["skopeo", "--version"], "registry": ["docker-registry", "--version"]}),
        "rows": [asdict(r) for r in rows],
        "references": [asdict(r) for r in references],
        "targets": [asdict(t) for t in found],
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 1 if args.check and not all(t.met for t in found) else 0


if __name__ == "__main__":
    sys.exit(main())
