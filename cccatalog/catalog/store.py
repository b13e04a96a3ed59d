"""The state database behind the `Store` class: one SQLite file, or a PostgreSQL database shared by
replicas. `Store.open` is the one way in. Here: opening, migrating on first use, the last good reads,
and the schema version a state holds. The SQL of each domain is a part of `Store` in its own module:
`catalog_state` (collections, image refs, pointers), `git_state` (mirror status, jobs),
`mirroring_state` (image mirroring to destinations). The engines are `sqlite_engine` and
`postgres_engine`, what they share `backends`, the schema `migrations`; rows are read by column name.

An SQLite file is opened in WAL mode so `serve` can read while `sync` writes; a PostgreSQL database
through a small connection pool. Both are migrated on open (see `migrations`). Every write is one
transaction. Times are stored as RFC 3339 UTC strings with `Z` and come back as timezone-aware UTC
datetimes. Driver errors leave this module as `StateError` naming the database (its password
masked) with a hint, never with row data.

While a PostgreSQL database cannot be reached, the reads `serve` answers the catalog from come from
the last good read of the same question (`StateUnavailable` only when there is none), and
`unreachable()` says why, for /readyz. Writes fail: a sync cannot record what it did.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from cccatalog.catalog.backends import Conn, Database, T
from cccatalog.catalog.catalog_state import CatalogState
from cccatalog.catalog.git_state import GitState
from cccatalog.catalog.migrations import (
    MIGRATIONS,
    check_is_state_file,
    check_not_newer,
    migrate,
    user_version,
)
from cccatalog.catalog.mirroring_state import MirroringState
from cccatalog.catalog.postgres_engine import PostgresDatabase
from cccatalog.catalog.sqlite_engine import MEMORY, SqliteDatabase
from cccatalog.config import Config, StateConfig
from cccatalog.errors import StateError, StateUnavailable
from cccatalog.redact import mask_url_password

# Entries of the last-good-read cache (one per question: a slug's refs, the pointers, the mirrors).
_LAST_GOOD_ENTRIES = 1024


_SQLITE_MAGIC = b"SQLite format 3\x00"
_USER_VERSION_OFFSET = 60  # the header field behind PRAGMA user_version (sqlite.org/fileformat.html)


def state_file_version(path: Path) -> int | None:
    """The schema version of the state file at `path`, read without writing anything (not even the
    -wal/-shm files a connection creates); None when there is no file yet.

    Raises StateError when the file is not a cccatalog state file or was written by a newer cccatalog.
    While a server has the file open, recent changes may sit in its -wal file: then the file is read
    through a read-only connection, which uses the sidecar files that already exist.
    """
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    if len(header) == 0:
        return 0  # an empty file is what SQLite itself makes of a new database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StateError(f"{path} is not a cccatalog state file (not an SQLite database)")
    version = int.from_bytes(header[_USER_VERSION_OFFSET : _USER_VERSION_OFFSET + 4], "big")
    if Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists():
        db = SqliteDatabase.open_read_only(path)
        try:
            version = db.read("read", user_version)
        finally:
            db.close()
    if version > len(MIGRATIONS):
        raise StateError(
            f"state file {path} was written by a newer cccatalog (schema version {version}; "
            f"this cccatalog knows up to {len(MIGRATIONS)})"
        )
    return version


def state_database_version(url: str, *, secrets: Iterable[str] = ()) -> int | None:
    """The schema version of the PostgreSQL state database at `url`, read without writing anything:
    0 for an empty database, None for the predecessor's (adopted on first open).

    Raises StateError when it cannot be reached, is another program's, or is newer than this cccatalog.
    """
    from cccatalog.catalog import adoption

    db = PostgresDatabase(url, pool_size=1, secrets=tuple(secrets))

    def look(conn: Conn) -> int | None:
        version = check_not_newer(conn, db.location)
        check_is_state_file(conn, db.location)
        return None if version == 0 and adoption.detect(conn) is not None else version

    try:
        return db.read("read the schema version of", look)
    finally:
        db.close()


@dataclass(frozen=True, slots=True)
class _Target:
    path: Path | None = None
    url: str | None = None
    memory: bool = False


def _target(state: Path | str | StateConfig) -> _Target:
    if isinstance(state, StateConfig):
        return _Target(url=state.url) if state.url else _Target(path=state.path)
    if isinstance(state, str) and state.startswith(("postgresql://", "postgres://")):
        return _Target(url=state)
    if isinstance(state, str) and state == MEMORY:
        return _Target(memory=True)
    return _Target(path=Path(state))


def _check_untouched(conn: Conn, location: str) -> None:
    """Before anything writes: a newer cccatalog's database, or another program's, stays untouched."""
    check_not_newer(conn, location)
    check_is_state_file(conn, location)


class Store(CatalogState, GitState, MirroringState):
    """An open state database. Safe to share across threads; several processes (and, on PostgreSQL,
    several hosts) may open the same database. Opened by `Store.open` (or `Store.for_config`)."""

    def __init__(self, db: Database, *, volume: str = "", ready: bool = True) -> None:
        """Wrap an open engine, already migrated (or, with `ready=False`, migrated on first use); use
        `Store.open`. `volume` names the mirror volume whose git status this store records."""
        self._db = db
        self.volume = volume
        self._ready = ready
        self._ready_lock = threading.Lock()
        self._last_good: OrderedDict[Hashable, Any] = OrderedDict()
        self._last_good_lock = threading.Lock()
        self._last_read_at: float | None = None  # time.time() of the last read the database answered

    @overload
    @classmethod
    def open(
        cls,
        state: Path | str | StateConfig,
        *,
        read_only: Literal[False] = False,
        busy_timeout_s: float = 30.0,
        volume: str = "",
        secrets: Iterable[str] = (),
        connect_later: bool = False,
    ) -> Store: ...

    @overload
    @classmethod
    def open(
        cls,
        state: Path | str | StateConfig,
        *,
        read_only: Literal[True],
        busy_timeout_s: float = 30.0,
        volume: str = "",
        secrets: Iterable[str] = (),
        connect_later: bool = False,
    ) -> Store | None: ...

    @classmethod
    def open(
        cls,
        state: Path | str | StateConfig,
        *,
        read_only: bool = False,
        busy_timeout_s: float = 30.0,
        volume: str = "",
        secrets: Iterable[str] = (),
        connect_later: bool = False,
    ) -> Store | None:
        """Open the state: an SQLite file at a path, the PostgreSQL database of a `postgresql://` URL
        (a StateConfig says which), or `MEMORY`, a state that lives only in this process (serve's
        fallback when the state file is unusable). `secrets` are masked in errors.

        Opened to write, it is created if needed and migrated. `connect_later`: a PostgreSQL database
        that cannot be reached now is connected to and migrated on first use instead (serve keeps
        serving git meanwhile); anything else still raises.

        `read_only` (`cccatalog status`): nothing is created or written, not the file, not a migration,
        not the -wal/-shm files; a database is read in read-only transactions. None when there is no
        state yet (no state file; a database without cccatalog's schema); a state of an older schema is
        refused with what to run.
        """
        target = _target(state)
        if read_only:
            db = _open_read_only(target, secrets=tuple(secrets))
            return None if db is None else cls(db, volume=volume)
        if target.url is not None:
            db = PostgresDatabase(target.url, secrets=tuple(secrets))
        elif target.memory:
            db = SqliteDatabase.open_memory()
        else:
            assert target.path is not None
            location = str(target.path)
            db = SqliteDatabase.open_file(
                target.path,
                busy_timeout_s=busy_timeout_s,
                check=lambda conn: _check_untouched(conn, location),
            )
        store = cls(db, volume=volume, ready=False)
        try:
            store._ensure_ready()
        except StateUnavailable:
            if not connect_later:
                db.close()
                raise
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def for_config(
        cls, config: Config, *, environ: Mapping[str, str] | None = None, connect_later: bool = False
    ) -> Store:
        """`config`'s state (its file or its database), opened as `open` does, recording git status
        for this host's mirror volume; the database password (`environ`'s PGPASSWORD too) is masked
        in errors."""
        from cccatalog.replica import mirror_volume, replica_id

        return cls.open(
            config.state,
            volume=mirror_volume(config, replica_id(config)),
            secrets=config.state.secrets(environ or {}),
            connect_later=connect_later,
        )

    @property
    def location(self) -> str:
        """The state file, or the database URL with its password masked: for messages."""
        return self._db.location

    @property
    def path(self) -> Path | None:
        """The SQLite state file; None for a PostgreSQL state."""
        return self._db.path if isinstance(self._db, SqliteDatabase) else None

    @property
    def in_memory(self) -> bool:
        return self.location == MEMORY

    @property
    def shared(self) -> bool:
        """True when the state is a database other hosts use too (PostgreSQL)."""
        return self._db.shared

    @property
    def database(self) -> Database:
        """The engine underneath, for the locks that live in it (`cccatalog.runlocks`)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reaching the database --

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            location = self.location

            def prepare(conn: Conn) -> None:
                _check_untouched(conn, location)
                migrate(conn, location)

            self._db.migrate_with(prepare)
            self._ready = True

    def _read(self, what: str, fn: Callable[[Conn], T], key: Hashable | None = None) -> T:
        """`fn` on the database; for a `key`ed question, the last good answer while it is unreachable."""
        try:
            self._ensure_ready()
            result = self._db.read(what, fn)
            self._last_read_at = time.time()
        except StateUnavailable:
            if key is not None:
                with self._last_good_lock:
                    if key in self._last_good:
                        cached: T = self._last_good[key]
                        return cached
            raise
        if key is not None and self._db.shared:
            with self._last_good_lock:
                self._last_good[key] = result
                self._last_good.move_to_end(key)
                while len(self._last_good) > _LAST_GOOD_ENTRIES:
                    self._last_good.popitem(last=False)
        return result

    def _write(self, what: str, fn: Callable[[Conn], T]) -> T:
        self._ensure_ready()
        return self._db.write(what, fn)

    def unreachable(self) -> str | None:
        """Why the database cannot be reached now (answers then come from the last good read), or None."""
        return self._db.unreachable()

    @property
    def last_read_at(self) -> float | None:
        """When the database last answered a read (Unix time), None before the first one. While it is
        unreachable, answers come from the last good read, and this says how old that is."""
        return self._last_read_at

    def ping(self) -> None:
        """One real read of the state; raises StateError (StateUnavailable when unreachable)."""
        self._read("read", lambda conn: conn.execute("SELECT count(*) FROM cccatalog_image_syncs").fetchone())

    @property
    def schema_version(self) -> int:
        return self._read("read the schema version from", user_version)


def _open_read_only(target: _Target, *, secrets: tuple[str, ...]) -> Database | None:
    """The engine of an existing state, read without writing; None when there is none yet."""
    if target.memory:
        return None  # nothing outlives the process that made it
    if target.url is not None:
        found = state_database_version(target.url, secrets=secrets)
        if not found:
            return None
        _refuse_older(mask_url_password(target.url), found, "database")
        return PostgresDatabase(target.url, secrets=secrets, read_only=True)
    assert target.path is not None
    version = state_file_version(target.path)
    if version is None:
        return None
    _refuse_older(str(target.path), version, "file")
    return SqliteDatabase.open_read_only(target.path)


def _refuse_older(location: str, version: int, what: str) -> None:
    if version < len(MIGRATIONS):
        raise StateError(
            f"state {what} {location} has schema version {version}, older than this cccatalog's "
            f"{len(MIGRATIONS)}; run `cccatalog sync` (or start `serve`) once to upgrade it"
        )
