"""A real PostgreSQL server for tests: Debian's server binaries (`tools/install-test-deps` installs
them), a data directory in a temporary directory, started as the unprivileged `postgres` user when the
tests run as root (initdb refuses root), on a free loopback port, with password authentication over
TCP so the password really travels in the URL. Text sorts by an ICU collation, as on most servers, so a
test that relied on SQLite's code-point order would notice.

One server per session (`pg_server`), a fresh database per test (`pg_database`); a test that stops
its server starts one of its own (`PgServer.start`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import psycopg
import pytest

BINDIR = Path(os.environ.get("CCCATALOG_TEST_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
USER = "postgres"
PASSWORD = "pg-Test-Secret-7"  # distinctive, so a test can look for it where it must not be
_names = count(1)


def _as_postgres() -> dict[str, object]:
    """subprocess arguments that drop root to the postgres user (initdb and postgres refuse root)."""
    if os.getuid() != 0:
        return {}
    return {"user": USER, "group": USER, "extra_groups": []}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    root: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls) -> PgServer:
        if not (BINDIR / "initdb").exists():
            pytest.fail(
                f"PostgreSQL server binaries not found in {BINDIR}: run tools/install-test-deps "
                "(Debian package postgresql-15), or set CCCATALOG_TEST_PG_BINDIR"
            )
        root = Path(tempfile.mkdtemp(prefix="cccatalog-pg-"))
        os.chmod(root, 0o755)  # noqa: S103 - the server runs as another user
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD)
        if os.getuid() == 0:
            shutil.chown(root, USER, USER)
            shutil.chown(pwfile, USER, USER)
        subprocess.run(
            [
                str(BINDIR / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale-provider=icu",
                "--icu-locale=en-US",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
            **_as_postgres(),  # type: ignore[call-overload]
        )
        pwfile.unlink()
        return cls(root)

    def start(self) -> None:
        """Start (or start again) the server on its port; returns once it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server writes to it
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [
                str(BINDIR / "postgres"),
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **_as_postgres(),
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (self.root / "server.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, no new connections), as a restart or an outage does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            yield conn

    def create_database(self) -> str:
        """A new empty database; its URL (with the password)."""
        name = f"t{os.getpid()}_{next(_names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_postgres() -> Iterator[PgServer]:
    server = PgServer.create()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A plain connection to a test database, for looking at what cccatalog wrote."""
    return psycopg.connect(url, autocommit=True)
