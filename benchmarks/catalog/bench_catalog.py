"""The catalog API as the catalog grows, and spread over replicas.

    python -m benchmarks.catalog.bench_catalog --size full    # 2,000 collections x 50 refs; 3 replicas
    python -m benchmarks.catalog.bench_catalog --size smoke   # 50 x 10; a few seconds (CI)

Part 1, scaling (in-process, through the API's routing function and the JSON encoding, no socket): `GET
/api/v1/catalog/codecollections` and one collection's `GET .../{slug}`, on an SQLite file and on a
PostgreSQL database holding the same rows. "today" is the previous implementation, kept here (and only
here) for the comparison: every collection's refs loaded and ranked per request, plus one query per
collection for its last poll. "now" is the API as it is: one query returning the pointers kept with
the rows.

Part 2, replicas (real `cccatalog serve` processes over loopback): catalog reads (the list, one
collection, a resolve) from client processes, against 1 replica on SQLite and 3 replicas on one
PostgreSQL database behind a round-robin, as a Kubernetes Service spreads them. Latency p50/p99 and
requests/s. Client and servers share the machine's CPUs: more replicas than cores add no throughput
here, and the table shows what one replica costs against another, not a cluster's capacity.

PostgreSQL is Debian's server (tests/pgfixtures.py starts it in a temporary directory, fsync off).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.machine import machine
from cccatalog.catalog import views
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.store import Store
from cccatalog.config import Config, load_config
from cccatalog.redact import Redactor
from cccatalog.server.api import ApiContext, handle
from cccatalog.server.service import build_service

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.hafixtures import Replica, start_replica  # noqa: E402
from tests.pgfixtures import BINDIR, PgServer  # noqa: E402

CATALOG = "/api/v1/catalog/codecollections"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Size:
    collections: int  # part 1: the catalog's collections, refs each, timed runs of each request
    refs: int
    list_runs: int
    one_runs: int
    ha_collections: int  # part 2: the catalog's collections, client processes, seconds per setup
    clients: int
    seconds: float


SIZES = {
    "smoke": Size(50, 10, 5, 50, ha_collections=10, clients=2, seconds=1.5),
    "full": Size(2000, 50, 15, 400, ha_collections=200, clients=6, seconds=10.0),
}


def log(message: str) -> None:
    print(f"[catalog {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the catalog -----------------------------------------------------------------------------------


def write_config(path: Path, collections: int, *, replica: str | None = None) -> Path:
    """A config with `collections` collections on a static source; git on, no mirror on disk."""
    data: dict[str, Any] = {
        "git": {"enabled": True, "data_dir": "mirrors", "public_base_url": "https://catalog.example/git"},
        "sources": [
            {
                "name": "offline",
                "type": "static",
                "codecollections": [
                    {
                        "slug": slug(i),
                        "git_url": f"https://github.com/org/{slug(i)}",
                        "image_registry": f"ghcr.io/org/{slug(i)}",
                    }
                    for i in range(collections)
                ],
            }
        ],
    }
    if replica:
        data["serve"] = {"replica_id": replica}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def slug(i: int) -> str:
    return f"cc-{i:05d}"


def rows(name: str, count: int) -> list[ImageRefRecord]:
    """A collection's refs as a sync writes them: main is latest, the highest release is stable,
    the rest are branches and older releases."""
    found = []
    releases = max(1, count // 3)
    for j in range(count):
        if j == 0:
            ref = "main"
        elif j <= releases:
            ref = f"v1.{j}.0"
        else:
            ref = f"feature/f{j:03d}"
        found.append(
            ImageRefRecord(
                name,
                ref,
                "tag" if ref.startswith("v") else "branch",
                f"ghcr.io/org/{name}",
                f"{ref.replace('/', '-')}-{j:07x}-1111111",
                "sha256:" + f"{j:064x}",
                f"{j:07x}",
                "1111111",
                T0 + timedelta(minutes=j),
                "registry",
                is_latest=ref == "main",
                is_prerelease=not ref.startswith("v"),
                is_stable=ref == f"v1.{releases}.0",
            )
        )
    return found


def fill(store: Store, collections: int, refs: int) -> None:
    for i in range(collections):
        store.replace_image_refs(slug(i), rows(slug(i), refs), synced_at=T0, deactivate_missing=True)


# --- part 1: the list and one collection, today's way and now ---------------------------------------


def list_today(ctx: ApiContext) -> list[dict[str, Any]]:
    """GET /api/v1/catalog/codecollections as cccatalog answered it before the pointers were kept."""
    config = ctx.config
    servable = ctx.servable(config)
    entries = []
    for cc in sorted(config.codecollections, key=lambda c: c.slug):
        refs = ctx.store.list_image_refs(cc.slug)
        if not any(r.image_tag for r in refs):
            continue
        status = ctx.store.get_image_sync(cc.slug)
        entries.append(
            views.catalog_entry(config, cc, refs, status.succeeded_at if status else None, servable)
        )
    return entries


def one_today(ctx: ApiContext, name: str) -> dict[str, Any]:
    config = ctx.config
    cc = config.collection(name)
    assert cc is not None
    refs = [r for r in ctx.store.list_image_refs(cc.slug) if r.image_tag]
    status = ctx.store.get_image_sync(cc.slug)
    entry = views.catalog_entry(
        config, cc, refs, status.succeeded_at if status else None, ctx.servable(config)
    )
    return {**entry, "refs": [views.image_ref(r) for r in refs]}


def api_get(ctx: ApiContext, path: str) -> Any:
    answer = handle(ctx, "GET", path, "", None)
    assert answer is not None
    assert answer.status == 200, answer.body
    return answer.body


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm: caches, prepared statements
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@dataclass
class ScaleRow:
    engine: str
    request: str
    implementation: str
    runs: int
    median_ms: float
    p90_ms: float
    speedup_vs_today: float | None = None


def _row(engine: str, request: str, impl: str, samples: list[float]) -> ScaleRow:
    samples.sort()
    return ScaleRow(
        engine,
        request,
        impl,
        len(samples),
        round(statistics.median(samples), 3),
        round(samples[min(len(samples) - 1, int(len(samples) * 0.9))], 3),
    )


def scaling(config: Config, state: Path | str, engine: str, size: Size) -> list[ScaleRow]:
    environ = (
        {"CCCATALOG_STATE_URL": state} if isinstance(state, str) else {"CCCATALOG_STATE_FILE": str(state)}
    )
    config = load_config(config.path, environ=environ)
    service = build_service(config, environ=environ, redactor=Redactor())
    try:
        ctx = service.api
        middle = slug(size.collections // 2)
        # the same answers, or the comparison means nothing
        assert api_get(ctx, CATALOG) == list_today(ctx)
        assert api_get(ctx, f"{CATALOG}/{middle}") == one_today(ctx, middle)
        # each answer as the server sends it: built, then encoded
        found = [
            _row(engine, "list", "today", timed(lambda: json.dumps(list_today(ctx)), size.list_runs)),
            _row(engine, "list", "now", timed(lambda: json.dumps(api_get(ctx, CATALOG)), size.list_runs)),
            _row(
                engine,
                "one collection",
                "today",
                timed(lambda: json.dumps(one_today(ctx, middle)), size.one_runs),
            ),
            _row(
                engine,
                "one collection",
                "now",
                timed(lambda: json.dumps(api_get(ctx, f"{CATALOG}/{middle}")), size.one_runs),
            ),
        ]
    finally:
        service.close()
    for row in found:
        today = next(r for r in found if r.request == row.request and r.implementation == "today")
        row.speedup_vs_today = round(today.median_ms / row.median_ms, 2)
    return found


# --- part 2: replicas ------------------------------------------------------------------------------


def _client(urls: Sequence[str], paths: Sequence[str], seconds: float, ready: Any, out: Any) -> None:
    latencies: list[float] = []
    errors = 0
    clients = [httpx.Client(base_url=u, timeout=30) for u in urls]
    i = os.getpid()
    ready.wait()  # every client started and imported: all begin together
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client = clients[i % len(clients)]  # round-robin over the replicas, as a Service does
        path = paths[i % len(paths)]
        i += 1
        began = time.perf_counter()
        answer = client.get(path)
        latencies.append((time.perf_counter() - began) * 1000)
        errors += answer.status_code != 200
    out.put((latencies, errors))


@dataclass
class HaRow:
    setup: str
    replicas: int
    clients: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    vs_sqlite_1: float | None = None


def load(setup: str, urls: Sequence[str], paths: Sequence[str], size: Size) -> HaRow:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(size.clients)
    procs = [
        ctx.Process(target=_client, args=(urls, paths, size.seconds, ready, out)) for _ in range(size.clients)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=size.seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    latencies = sorted(x for lat, _ in results for x in lat)
    return HaRow(
        setup,
        len(urls),
        size.clients,
        len(latencies),
        sum(e for _, e in results),
        round(len(latencies) / size.seconds, 1),
        round(statistics.median(latencies), 2),
        round(latencies[int(len(latencies) * 0.99)], 2),
    )


@contextmanager
def serving(configs: Sequence[Path], state: Path | str) -> Iterator[list[Replica]]:
    env = {"CCCATALOG_STATE_FILE": str(state)} if isinstance(state, Path) else {}
    url = state if isinstance(state, str) else ""
    started = []
    try:
        for config in configs:
            started.append(start_replica(config, state_url=url, env=env))
        yield started
    finally:
        for replica in started:
            replica.stop()


def replicas(root: Path, sqlite_state: Path, pg_url: str, size: Size) -> list[HaRow]:
    n = size.ha_collections
    paths = [CATALOG, f"{CATALOG}/{slug(n // 2)}", f"{CATALOG}/{slug(n // 3)}/resolve?pointer=latest"]
    found = []
    one = write_config(root / "ha-sqlite" / "config.yaml", n, replica="sqlite-0")
    with serving([one], sqlite_state) as running:
        found.append(load("1 replica, SQLite", [r.url for r in running], paths, size))
    three = [write_config(root / f"ha-pg-{i}" / "config.yaml", n, replica=f"pg-{i}") for i in range(3)]
    with serving(three[:1], pg_url) as running:
        found.append(load("1 replica, PostgreSQL", [r.url for r in running], paths, size))
    with serving(three, pg_url) as running:
        found.append(load("3 replicas, PostgreSQL", [r.url for r in running], paths, size))
    base = found[0].requests_per_s
    for row in found:
        row.vs_sqlite_1 = round(row.requests_per_s / base, 2) if base else None
    return found


# --- report ----------------------------------------------------------------------------------------


def report(scale: list[ScaleRow], ha: list[HaRow], size: Size) -> str:
    lines = [
        f"Catalog of {size.collections} collections x {size.refs} refs, in-process:",
        "",
        "| engine | request | implementation | median ms | p90 ms | x faster than today |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in scale:
        lines.append(
            f"| {r.engine} | {r.request} | {r.implementation} | {r.median_ms:.2f} | {r.p90_ms:.2f} "
            f"| {r.speedup_vs_today:.2f}x |"
        )
    lines += [
        "",
        f"Catalog reads over HTTP ({size.ha_collections} collections; list, one collection, resolve "
        f"in turns), {size.clients} client processes, {size.seconds:.0f} s each:",
        "",
        "| setup | replicas | requests | errors | req/s | p50 ms | p99 ms | req/s vs 1 on SQLite |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in ha:
        lines.append(
            f"| {h.setup} | {h.replicas} | {h.requests} | {h.errors} | {h.requests_per_s:.0f} "
            f"| {h.p50_ms:.1f} | {h.p99_ms:.1f} | {h.vs_sqlite_1:.2f}x |"
        )
    return "\n".join(lines)


def targets(scale: list[ScaleRow]) -> list[dict[str, object]]:
    found = []
    for engine in sorted({r.engine for r in scale}):
        now = {r.request: r for r in scale if r.engine == engine and r.implementation == "now"}
        found += [
            {
                "name": f"{engine}: list <= 100 ms at the median",
                "measured_ms": now["list"].median_ms,
                "met": now["list"].median_ms <= 100,
            },
            {
                "name": f"{engine}: one collection <= 5 ms at the median",
                "measured_ms": now["one collection"].median_ms,
                "met": now["one collection"].median_ms <= 5,
            },
        ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--output", "--json-out", type=Path, default=Path("bench-catalog.json"))
    parser.add_argument("--no-replicas", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if not (BINDIR / "postgres").exists():
        raise SystemExit(f"needs PostgreSQL's server binaries in {BINDIR} (tools/install-test-deps)")

    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        server = PgServer.create()
        stack.callback(server.remove)
        server.start()
        pg_url = server.create_database()
        config = load_config(write_config(root / "scale" / "config.yaml", size.collections))
        sqlite_state = root / "scale" / "state.sqlite3"
        log(f"writing {size.collections} x {size.refs} refs to SQLite and PostgreSQL")
        for state in (sqlite_state, pg_url):
            with Store.open(state) as store:
                fill(store, size.collections, size.refs)
        scale = []
        for engine, state in (("SQLite", sqlite_state), ("PostgreSQL", pg_url)):
            log(f"timing the list and one collection on {engine}")
            scale += scaling(config, state, engine, size)
        ha: list[HaRow] = []
        if not args.no_replicas:
            ha_sqlite, ha_pg = root / "ha" / "state.sqlite3", server.create_database()
            for state in (ha_sqlite, ha_pg):
                with Store.open(state) as store:
                    fill(store, size.ha_collections, size.refs)
            log("loading 1 replica on SQLite, 1 and 3 replicas on PostgreSQL")
            ha = replicas(root, ha_sqlite, ha_pg, size)

    print(report(scale, ha, size))
    result = {
        "size": args.size,
        "sizes": asdict(size),
        "machine": machine({"postgresql": [str(BINDIR / "postgres"), "--version"]}),
        "scaling": [asdict(r) for r in scale],
        "replicas": [asdict(h) for h in ha],
        "targets": targets(scale),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
