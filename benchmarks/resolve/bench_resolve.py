"""Benchmark `resolve-latest` against what users would run instead, on real local registries.

On a real distribution 2.8 registry (anonymous, and token auth with anonymous pull as on ghcr.io) holding
REFS refs x TAGS tags with shuffled `created` dates, the newest build of every ref is found by:

- `cccatalog resolve-latest --all-refs --json` as a subprocess, with a cold and a warm cache directory;
- the library (`resolve_repository` with a fresh `RegistryClient`), cold and warm, without process start-up;
- a skopeo loop: `skopeo list-tags`, then `skopeo inspect --config` per candidate tag (what users script);
- the predecessor's algorithm, re-implemented: no token cache (every call is answered 401, a token is
  minted and the call repeated), a GET manifest and a GET config blob per tag, one after another.

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
from cccatalog.oci.client import RegistryClient  # noqa: E402
from cccatalog.oci.reference import Repository  # noqa: E402
from cccatalog.oci.resolve import parse_created, resolve_repository  # noqa: E402
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
WIDE = "what-if: library 16/host"
REF_NAMES = (
    "main", "develop", "v1.2.0", "v1.3.0-rc1", "pr-42", "pr-108",
    "fix-login", "feature-oci-index", "release-2024", "renovate-deps",
)  # fmt: skip
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
    """No logins of the user, a cache directory of our choosing."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(cache), XDG_RUNTIME_DIR=str(home / "run"))
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

    `per_host` and `workers` are the library's own knobs: the what-if rows run them wider than the
    defaults (4 requests at once per host) to show what a higher default would buy."""

    def __init__(self, cache: Path, *, per_host: int = 4, workers: int = 8) -> None:
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
    if answer != expected:
        wrong = sorted(ref for ref in expected if answer.get(ref) != expected[ref])
        raise RuntimeError(f"{name} picked the wrong newest tag for {wrong}")
    return seconds


def proxied_requests(registry: RunningRegistry, approach: Approach, expected: Newest, name: str) -> int:
    """How many requests `approach` makes: registry requests through a counting proxy, plus token mints."""
    with LyingProxy(registry.url, lambda _path: None) as proxy:
        if registry.token_server is not None:
            registry.token_server.clear()
        timed(approach, proxy.host, expected, name)
        tokens = len(registry.token_server.requests) if registry.token_server is not None else 0
        return len(proxy.requests) + tokens


@contextmanager
def scratch(parent: Path, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_mode(mode: Mode, size: Size, work: Path, rtt: float) -> list[Row]:
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


def measure(registry: RunningRegistry, host: str, size: Size, expected: Newest, work: Path) -> list[Row]:
    """Time every approach against `host` (the registry, or a delaying proxy in front of it)."""
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

    counts: dict[str, int] = {}
    details: dict[str, dict[str, int]] = {}
    with scratch(work, "cli") as cli_cache, scratch(work, "lib") as lib_cache:
        cli = CLIRunner(home, cli_cache)
        for name in ("cccatalog CLI, cold cache", "cccatalog CLI, warm cache"):
            counts[name] = proxied_requests(registry, cli, expected, name)
            if cli.last_requests != counts[name]:
                raise RuntimeError(
                    f"{name}: reported {cli.last_requests} requests, the proxy saw {counts[name]}"
                )
        for prefix, library in (
            ("cccatalog library", LibraryRunner(lib_cache)),
            (WIDE, LibraryRunner(lib_cache / "wide", per_host=16, workers=16)),
        ):
            for name in (f"{prefix}, cold cache", f"{prefix}, warm cache"):
                counts[name] = proxied_requests(registry, library, expected, name)
                details[name] = library.counts
                if sum(library.counts.values()) != counts[name]:
                    raise RuntimeError(f"{name}: client.counts {library.counts} disagree with the proxy")
    counts["skopeo loop"] = proxied_requests(registry, skopeo_loop, expected, "skopeo loop")
    counts["predecessor algorithm"] = proxied_requests(registry, Predecessor(), expected, "predecessor")

    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = [
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
    return rows


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


def print_report(rows: Sequence[Row], found: Sequence[Target]) -> None:
    header = (
        f"{'mode':<10} {'approach':<36} {'seconds':>9} {'requests':>9} {'x vs skopeo':>12} {'x vs pred.':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.mode:<10} {r.approach:<36} {r.seconds:>9.3f} {r.requests:>9} "
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
    with tempfile.TemporaryDirectory(prefix="bench-resolve-") as tmp:
        rows = [row for mode in MODES for row in bench_mode(mode, size, Path(tmp), args.rtt_ms / 1000)]
    found = targets(rows, size)
    print_report(rows, found)
    result = {
        "benchmark": "resolve-latest",
        "size": args.size,
        "parameters": {**asdict(size), "rtt_ms": args.rtt_ms},
        "machine": machine({"skopeo": ["skopeo", "--version"], "registry": ["docker-registry", "--version"]}),
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(t) for t in found],
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 1 if args.check and not all(t.met for t in found) else 0


if __name__ == "__main__":
    sys.exit(main())
