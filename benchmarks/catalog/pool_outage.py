"""What a PostgreSQL outage costs `serve`'s reads, with the state store's own pool (a breaker in front)
and with psycopg_pool's `ConnectionPool`, the library a user would reach for, on the same server:

- the first read after the database went away: how long until it fails, and whether it says why;
- the reads after it (a server answering the catalog from its last good read must not wait);
- after the database is back: how long until a read succeeds again.

    pip install psycopg-pool   # only for this comparison: cccatalog does not depend on it
    python -m benchmarks.catalog.pool_outage --size full    # down 20 s, 10 s pool wait; ~1 min
    python -m benchmarks.catalog.pool_outage --size smoke   # down 2 s, 1 s pool wait (CI)

The library pool is given the store's settings (16 connections, the same wait, 5 s connect timeout,
no minimum kept open) and used the plain way: `with pool.connection() as conn`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import machine
from cccatalog.catalog.postgres_engine import CONNECT_TIMEOUT_SECONDS, POOL_WAIT_SECONDS, PostgresDatabase

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.pgfixtures import BINDIR, PgServer  # noqa: E402


@dataclass(frozen=True)
class Size:
    outage: float  # seconds the server stays down
    wait: float  # how long a read waits for a pooled connection, both pools
    next_reads: int  # reads timed after the first failure, at most (as many as the outage allows)


SIZES = {"smoke": Size(2.0, 1.0, 3), "full": Size(20.0, POOL_WAIT_SECONDS, 10)}


@dataclass(frozen=True)
class Outage:
    pool: str
    first_failure_s: float  # the first read after the server stopped, until it raised
    said_why: bool  # its error names the cause (the server is not there), not only a timeout
    next_failures_ms: float  # median of the reads after it, during the outage
    back_after_s: float  # from the server accepting connections again to the first read that succeeds


def _read_ours(db: PostgresDatabase) -> None:
    db.read("read", lambda conn: conn.execute("SELECT 1").fetchone())


def measure(name: str, read: Callable[[], None], server: PgServer, size: Size) -> Outage:
    read()  # warm: a pooled connection exists
    server.stop()
    t0 = time.monotonic()
    why = ""
    try:
        read()
    except Exception as exc:  # any failure is what is measured
        why = str(exc)
    first = time.monotonic() - t0
    next_ms: list[float] = []
    # the server comes back `outage` seconds after it went (the reads here are the outage's, not more)
    while len(next_ms) < size.next_reads and (not next_ms or time.monotonic() - t0 < size.outage):
        t = time.monotonic()
        with suppress(Exception):
            read()
        next_ms.append((time.monotonic() - t) * 1000)
    time.sleep(max(0.0, size.outage - (time.monotonic() - t0)))
    server.start()  # returns once the server accepts connections
    back = time.monotonic()
    while True:
        try:
            read()
            break
        except Exception:  # not back yet
            time.sleep(0.05)
    said = any(word in why.lower() for word in ("refused", "connect", "no such file", "server"))
    said = said and "couldn't get a connection" not in why
    return Outage(
        name, round(first, 3), said, round(statistics.median(next_ms), 3), round(time.monotonic() - back, 2)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--output", type=Path, default=Path("bench-pool-outage.json"))
    args = parser.parse_args()
    size = SIZES[args.size]
    try:
        from psycopg_pool import ConnectionPool
    except ImportError:
        raise SystemExit("needs psycopg_pool: pip install psycopg-pool") from None
    if not (BINDIR / "postgres").exists():
        raise SystemExit(f"needs PostgreSQL's server binaries in {BINDIR} (tools/install-test-deps)")
    import cccatalog.catalog.postgres_engine as engine

    engine.POOL_WAIT_SECONDS = size.wait
    server = PgServer.create()
    try:
        server.start()
        url = server.create_database()
        ours = PostgresDatabase(url)
        rows = [measure("cccatalog's pool and breaker", lambda: _read_ours(ours), server, size)]
        ours.close()
        settings = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
        pool: Any = ConnectionPool(
            url, min_size=0, max_size=16, timeout=size.wait, kwargs=settings, open=True
        )

        def read_library() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        rows.append(measure("psycopg_pool.ConnectionPool", read_library, server, size))
        pool.close()
    finally:
        server.remove()
    print(f"PostgreSQL down for {size.outage:.0f} s, pool wait {size.wait:.0f} s:\n")
    print("| pool | first read fails after s | says why | next reads ms (median) | reads again after s |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        said = "yes" if r.said_why else "no"
        print(f"| {r.pool} | {r.first_failure_s} | {said} | {r.next_failures_ms} | {r.back_after_s} |")
    result = {
        "size": args.size,
        "sizes": asdict(size),
        "machine": machine({"postgresql": [str(BINDIR / "postgres"), "--version"]}),
        "rows": [asdict(r) for r in rows],
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
