"""The PostgreSQL engine of the state store: a database shared by replicas (psycopg 3, the `postgres`
extra), read-write or read-only (`cccatalog status`: the server enforces it), reached through a small
pool of connections with a breaker in front of it, and the session-level advisory locks `runlocks`
takes in it.

The breaker is what keeps `serve` fast while the database is down: after a connection fails, calls
fail at once with `StateUnavailable` (the store answers reads from its last good read) and one
attempt a second lets the database back in. A pooled connection the server dropped (a restart, a
failover) is retried once on a fresh one, so a restart costs no request anything.

The pool is this module's own, not psycopg_pool's `ConnectionPool`, because of what an outage does to
the library's (`python -m benchmarks.catalog.pool_outage --size full`: the server stopped for 20 s,
both pools given 16 connections and a 10 s wait; 2 shared vCPUs, PostgreSQL 15, psycopg_pool 3.3.3):
with it, every read while the database is down waits the whole 10 s for a connection its background
workers cannot make, and reads come back only when their backoff (1 s, doubling) next tries: 8.0 s
after the server accepted connections again (11.0 s in another run); with this pool and its breaker,
those reads fail in 0.005 ms (the store answers from its last good read) and the first read after the
restart succeeds within 0.02 s. A breaker in front of the library's pool would stop the waiting, not
the late return.

psycopg is imported only when a PostgreSQL state is opened: SQLite users need not install it. Its
messages can quote the connection string, so every error leaving this module is scrubbed of the
password and shows the URL with its credentials masked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from cccatalog.catalog.backends import (
    MIGRATION_LOCK,
    Conn,
    Cursor,
    Database,
    Dialect,
    T,
    lock_key,
    row_maker,
)
from cccatalog.errors import StateError, StateUnavailable
from cccatalog.redact import Redactor, mask_url_password, url_password

# How long a call waits for a pooled connection when every one is busy, and for a new one to connect.
POOL_WAIT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5
# After a failed connection, calls fail at once (the store answers from its last good read) and the
# database is tried again this often.
RETRY_SECONDS = 1.0


def _placeholders(sql: str, has_params: bool) -> str:
    # psycopg reads `%` only when there are parameters; our SQL has no `?` inside literals.
    return sql.replace("%", "%%").replace("?", "%s") if has_params else sql


def _named_rows(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    """psycopg's row factory, giving the rows SQLite's gives (`backends.row_maker`)."""
    return row_maker(tuple(column.name for column in cursor.description or ()))


class PostgresDialect(Dialect):
    name = "postgresql"
    noun = "database"

    def execute(self, raw: Any, sql: str, params: tuple[object, ...]) -> Cursor:
        cursor: Cursor = raw.execute(_placeholders(sql, bool(params)), params or None)
        return cursor

    def executemany(self, raw: Any, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with raw.cursor() as cursor:
            cursor.executemany(_placeholders(sql, True), rows)

    def in_transaction(self, raw: Any) -> bool:
        from psycopg import pq

        return bool(raw.info.transaction_status != pq.TransactionStatus.IDLE)

    def schema_version(self, conn: Conn) -> int:
        if conn.execute("SELECT to_regclass('cccatalog_schema') AS found").fetchone().found is None:
            return 0
        row = conn.execute("SELECT max(version) AS version FROM cccatalog_schema").fetchone()
        return int(row.version or 0)

    def set_schema_version(self, conn: Conn, version: int) -> None:
        conn.execute("UPDATE cccatalog_schema SET version = ?", (version,))

    def begin_migration(self, conn: Conn) -> None:
        conn.execute("BEGIN")
        # Held until COMMIT or ROLLBACK: any number of replicas may start at once, one migrates.
        conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(MIGRATION_LOCK),))
        # Created only by a migrator (a newer database was refused before anything was written).
        conn.execute("CREATE TABLE IF NOT EXISTS cccatalog_schema (version INTEGER NOT NULL)")
        conn.execute(
            "INSERT INTO cccatalog_schema (version) "
            "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM cccatalog_schema)"
        )

    def tables(self, conn: Conn) -> set[str]:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        ).fetchall()
        return {str(row.table_name) for row in rows} - {"cccatalog_schema"}

    def columns(self, conn: Conn, table: str) -> frozenset[str]:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return frozenset(str(row.column_name) for row in rows)


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database, shared by every thread of this process."""

    dialect = PostgresDialect()
    shared = True

    def __init__(
        self, url: str, *, pool_size: int = 16, secrets: Sequence[str] = (), read_only: bool = False
    ) -> None:
        self._url = url
        self._read_only = read_only
        self.location = mask_url_password(url)
        password = url_password(url)
        # psycopg and libpq may quote the connection string in an error: never let it out
        self._scrub = Redactor([s for s in (password, url, *secrets) if s])
        self._size = pool_size
        self._slots = threading.BoundedSemaphore(pool_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._down_since: float | None = None
        self._down_reason = ""
        self._retry_at = 0.0
        self._probing = False

    # -- connections --

    def connect(self) -> Any:
        """A new connection in autocommit mode (transactions are explicit), or StateUnavailable."""
        try:
            import psycopg
        except ImportError:
            raise StateError(
                f"the state database {self.location} is PostgreSQL, but psycopg is not installed: "
                "install cccatalog with the postgres extra (pip install 'cccatalog[postgres]')"
            ) from None
        try:
            conninfo = self._url
            if self._read_only:
                # a reader that must change nothing (`cccatalog status`): the server enforces it
                given = psycopg.conninfo.conninfo_to_dict(conninfo).get("options") or ""
                options = f"{given} -c default_transaction_read_only=on".strip()
                conninfo = psycopg.conninfo.make_conninfo(conninfo, options=options)
            return psycopg.connect(
                conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name="cccatalog",
                row_factory=_named_rows,
                # a peer that vanished (no RST) is noticed in seconds, not after TCP's two hours
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
            )
        except psycopg.OperationalError as exc:
            raise self._unavailable("connect to", exc) from None
        except psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the state database {self.location}: {self.scrub(exc)}"
            ) from None

    def scrub(self, exc: BaseException) -> str:
        """What went wrong, without row data (a server error's DETAIL quotes the failing row) and
        without the password (libpq may quote the connection string)."""
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        lines = str(exc).strip().splitlines()
        return self._scrub(primary or (lines[0] if lines else type(exc).__name__))

    def _unavailable(self, what: str, exc: BaseException) -> StateUnavailable:
        reason = self.scrub(exc)
        now = time.monotonic()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
            self._down_reason = reason
            self._retry_at = now + RETRY_SECONDS
            stale, self._idle = self._idle, []
        for raw in stale:
            _close_quietly(raw)
        return StateUnavailable(
            f"cannot {what} the state database {self.location}: {reason}; "
            "is the PostgreSQL server up and reachable from here?"
        )

    def _recovered(self) -> None:
        if self._down_since is not None:
            with self._lock:
                self._down_since = None

    def unreachable(self) -> str | None:
        with self._lock:
            if self._down_since is None:
                return None
            seconds = time.monotonic() - self._down_since
            return f"unreachable for {seconds:.0f}s: {self._down_reason}"

    @contextmanager
    def _connection(self, what: str) -> Iterator[tuple[Any, bool]]:
        """A pooled connection (and whether it was reused); broken ones are not put back."""
        with self._lock:
            if self._closed:
                raise StateError(f"cannot {what} the state database {self.location}: the store is closed")
            if self._down_since is not None:
                # one call at a time finds out whether it is back; the others answer at once
                if self._probing or time.monotonic() < self._retry_at:
                    raise StateUnavailable(
                        f"cannot {what} the state database {self.location}: {self._down_reason} "
                        f"(tried again every {RETRY_SECONDS:.0f}s)"
                    )
                self._probing = True
        try:
            if not self._slots.acquire(timeout=POOL_WAIT_SECONDS):
                raise StateUnavailable(
                    f"cannot {what} the state database {self.location}: all {self._size} connections "
                    f"stayed busy for {POOL_WAIT_SECONDS:.0f}s"
                )
        except BaseException:
            with self._lock:
                self._probing = False
            raise
        try:
            with self._lock:
                raw = self._idle.pop() if self._idle else None
            reused = raw is not None
            if raw is None:
                try:
                    raw = self.connect()
                finally:
                    with self._lock:
                        self._probing = False
                self._recovered()
            try:
                yield raw, reused
            finally:
                if raw.closed or raw.broken or self.dialect.in_transaction(raw) or self._closed:
                    _close_quietly(raw)
                else:
                    with self._lock:
                        self._idle.append(raw)
        finally:
            self._slots.release()

    def _run(self, what: str, fn: Callable[[Conn], T], *, transaction: bool) -> T:
        import psycopg

        for attempt in (1, 2):
            with self._connection(what) as (raw, reused):
                conn = Conn(raw, self.dialect)
                try:
                    if not transaction:
                        result = fn(conn)
                    else:
                        raw.execute("BEGIN")
                        try:
                            result = fn(conn)
                            raw.execute("COMMIT")
                        except BaseException:
                            if not raw.broken and self.dialect.in_transaction(raw):
                                raw.execute("ROLLBACK")
                            raise
                except psycopg.Error as exc:
                    if raw.broken or raw.closed:
                        # the server dropped a pooled connection (a restart): once more, on a new one;
                        # the writes are idempotent, so a COMMIT that was lost in flight is safe to redo
                        if reused and attempt == 1:
                            continue
                        raise self._unavailable(what, exc) from None
                    raise StateError(
                        f"cannot {what} the state database {self.location}: {self.scrub(exc)}"
                    ) from None
                self._recovered()
                return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def read(self, what: str, fn: Callable[[Conn], T]) -> T:
        return self._run(what, fn, transaction=False)

    def write(self, what: str, fn: Callable[[Conn], T]) -> T:
        return self._run(what, fn, transaction=True)

    def migrate_with(self, fn: Callable[[Conn], T]) -> T:
        import psycopg

        with self._connection("migrate") as (raw, _):
            try:
                result = fn(Conn(raw, self.dialect))
            except psycopg.Error as exc:
                if raw.broken or raw.closed:
                    raise self._unavailable("migrate", exc) from None
                raise StateError(
                    f"cannot migrate the state database {self.location}: {self.scrub(exc)}"
                ) from None
        self._recovered()
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for raw in idle:
            _close_quietly(raw)

    # -- session locks --

    def try_lock(self, name: str, *, owner: str | None = None) -> Any | None:
        """Take the session-level advisory lock `name` on a connection of its own (not from the pool:
        the lock lives as long as that connection). The connection, or None when another session
        holds the lock. Close the connection to release it. `owner` becomes the connection's
        application_name before the lock is taken, so `lock_owner` never reads an older one."""
        import psycopg

        raw = self.connect()
        try:
            if owner:
                raw.execute("SELECT set_config('application_name', %s, false)", (_owned(owner),))
            held = bool(
                raw.execute("SELECT pg_try_advisory_lock(%s) AS held", (lock_key(name),)).fetchone().held
            )
        except psycopg.Error as exc:
            _close_quietly(raw)
            raise self._unavailable("take a lock in", exc) from None
        if not held:
            _close_quietly(raw)
            return None
        self._recovered()
        return raw

    def unlock(self, name: str, raw: Any) -> None:
        """Release the session lock `name` held on `raw` and close it. Unlocking first makes the
        release take effect now: a closed connection's locks go only once its server process ends."""
        import psycopg

        try:
            raw.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
        except psycopg.Error:
            pass  # a broken connection: the server drops its locks as it notices
        finally:
            _close_quietly(raw)

    def lock_is_alive(self, raw: Any) -> bool:
        """True while the connection holding a session lock still answers (so the lock is still held)."""
        import psycopg

        try:
            raw.execute("SELECT 1")
            return True
        except psycopg.Error:
            _close_quietly(raw)
            return False

    def lock_owner(self, name: str) -> str | None:
        """The owner the session holding the advisory lock `name` named (`try_lock`), if any."""
        classid, objid = _lock_ids(name)
        row = self.read(
            "read the locks of",
            lambda conn: conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid::bigint = ? AND l.objid::bigint = ? AND l.objsubid = 1",
                (classid, objid),
            ).fetchone(),
        )
        name_ = str(row.application_name) if row and row.application_name else ""
        return name_.removeprefix(_OWNER_PREFIX) if name_.startswith(_OWNER_PREFIX) else None

    def lock_is_held(self, name: str) -> bool:
        """Whether any session holds the advisory lock `name` (read from pg_locks, taking nothing)."""
        classid, objid = _lock_ids(name)
        row = self.read(
            "read the locks of",
            lambda conn: conn.execute(
                "SELECT count(*) AS holders FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid::bigint = ? AND objid::bigint = ? AND objsubid = 1",
                (classid, objid),
            ).fetchone(),
        )
        return bool(row.holders)


_OWNER_PREFIX = "cccatalog-lock "


def _owned(owner: str) -> str:
    return (_OWNER_PREFIX + owner)[:63]  # application_name keeps 63 bytes


def _lock_ids(name: str) -> tuple[int, int]:
    """A bigint advisory key as pg_locks shows it: its high and low 32 bits."""
    key = lock_key(name) & 0xFFFFFFFFFFFFFFFF
    return key >> 32, key & 0xFFFFFFFF


def _close_quietly(raw: Any) -> None:
    # a connection that cannot even close is already gone
    with suppress(Exception):
        raw.close()
