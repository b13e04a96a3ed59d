"""The state database behind the `Store` class: one SQLite file, or a PostgreSQL database shared by
replicas. `Store.open` is the one way in. The SQL of the catalog lives here, image mirroring's in
`mirroring_state` (the engines in `sqlite_engine` and `postgres_engine`, what they share in
`backends`, the schema in `migrations`); rows are read by column name.

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

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

from cccatalog.catalog.backends import Conn, Database, T
from cccatalog.catalog.migrations import (
    MIGRATIONS,
    check_is_state_file,
    check_not_newer,
    migrate,
    user_version,
)
from cccatalog.catalog.mirroring_state import MirroringState
from cccatalog.catalog.models import (
    CatalogPointers,
    CollectionRecord,
    ImageRefRecord,
    ImageSyncStatus,
    JobRecord,
    MirrorStatus,
    from_db_time,
    to_db_time,
)
from cccatalog.catalog.pointers import has_image, pointers
from cccatalog.catalog.postgres_engine import PostgresDatabase
from cccatalog.catalog.sqlite_engine import MEMORY, SqliteDatabase
from cccatalog.config import CodeCollection, Config, StateConfig
from cccatalog.errors import StateError, StateUnavailable
from cccatalog.redact import mask_url_password
from cccatalog.timestamps import parse_rfc3339

# Values always travel as `?` parameters, never inside the SQL text. Lists are sorted in Python, not by
# ORDER BY: PostgreSQL sorts text by its collation, SQLite by code point, and answers must not differ.
# A mirror's status is kept per mirror volume (`Store.volume`); rows under the empty volume (an SQLite
# state's only one, and what an older schema or the predecessor recorded) answer where a volume has none.
_SELECT_MIRRORS = (
    "SELECT slug, upstream_url, head_commit, default_branch, refs_fingerprint, last_action, "
    "last_attempt_at, last_success_at, last_error, volume FROM cccatalog_git_mirrors "
    "WHERE volume IN ('', ?)"
)
_UPSERT_MIRROR_SUCCESS = """
    INSERT INTO cccatalog_git_mirrors (volume, slug, upstream_url, head_commit, default_branch,
        refs_fingerprint, last_action, last_attempt_at, last_success_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (volume, slug) DO UPDATE SET upstream_url = excluded.upstream_url,
        head_commit = excluded.head_commit, default_branch = excluded.default_branch,
        refs_fingerprint = excluded.refs_fingerprint, last_action = excluded.last_action,
        last_attempt_at = excluded.last_attempt_at, last_success_at = excluded.last_success_at,
        last_error = NULL
"""
_UPSERT_MIRROR_FAILURE = """
    INSERT INTO cccatalog_git_mirrors (volume, slug, upstream_url, last_action, last_attempt_at, last_error)
        VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (volume, slug) DO UPDATE SET upstream_url = excluded.upstream_url,
        last_action = excluded.last_action, last_attempt_at = excluded.last_attempt_at,
        last_error = excluded.last_error
"""
_SELECT_COLLECTIONS = (
    "SELECT slug, source, name, git_url, image_registry, default_ref, visibility, updated_at "
    "FROM cccatalog_collections"
)
_UPSERT_COLLECTION = """
    INSERT INTO cccatalog_collections (slug, source, name, git_url, image_registry, default_ref, visibility,
        updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET source = excluded.source, name = excluded.name,
        git_url = excluded.git_url, image_registry = excluded.image_registry,
        default_ref = excluded.default_ref, visibility = excluded.visibility,
        updated_at = excluded.updated_at
"""
_IMAGE_COLUMNS = (
    "slug, ref, ref_type, image_registry, image_tag, image_digest, commit_hash, rt_revision, "
    "image_built_at, built_at_source, is_latest, is_prerelease, is_active, synced_at, is_stable"
)
_UPSERT_IMAGE_REF = """
    INSERT INTO cccatalog_image_refs (slug, ref, ref_type, image_registry, image_tag, image_digest,
        commit_hash, rt_revision, image_built_at, built_at_source, is_latest, is_prerelease, is_active,
        synced_at, is_stable)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
    ON CONFLICT (slug, ref) DO UPDATE SET ref_type = excluded.ref_type,
        image_registry = excluded.image_registry, image_tag = excluded.image_tag,
        image_digest = excluded.image_digest, commit_hash = excluded.commit_hash,
        rt_revision = excluded.rt_revision, image_built_at = excluded.image_built_at,
        built_at_source = excluded.built_at_source, is_latest = excluded.is_latest,
        is_prerelease = excluded.is_prerelease, is_active = 1, synced_at = excluded.synced_at,
        is_stable = excluded.is_stable
"""


_UPSERT_POINTERS = """
    INSERT INTO cccatalog_catalog_pointers (slug, latest_ref, stable_ref, has_image) VALUES (?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET latest_ref = excluded.latest_ref, stable_ref = excluded.stable_ref,
        has_image = excluded.has_image
"""
# One row per collection the state knows images of: the catalog list in one query.
_SELECT_POINTERS = """
    SELECT k.slug, p.has_image, l.image_tag AS latest_tag, l.image_registry AS latest_registry,
        s.image_tag AS stable_tag, s.image_registry AS stable_registry, y.succeeded_at
    FROM (SELECT slug FROM cccatalog_catalog_pointers UNION SELECT slug FROM cccatalog_image_syncs) k
    LEFT JOIN cccatalog_catalog_pointers p ON p.slug = k.slug
    LEFT JOIN cccatalog_image_refs l ON l.slug = p.slug AND l.ref = p.latest_ref
    LEFT JOIN cccatalog_image_refs s ON s.slug = p.slug AND s.ref = p.stable_ref
    LEFT JOIN cccatalog_image_syncs y ON y.slug = k.slug
"""
_JOB_COLUMNS = "id, kind, state, replica, started_at, finished_at, result, error, lock"
_UPSERT_JOB = f"""
    INSERT INTO cccatalog_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at,
        result = excluded.result, error = excluded.error
"""  # noqa: S608 - column names only
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


class Store(MirroringState):
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
            config.state, volume=mirror_volume(config, replica_id(config)),
            secrets=config.state.secrets(environ or {}), connect_later=connect_later,
        )  # fmt: skip

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

    # -- collections and image refs --

    def upsert_collections(self, collections: Iterable[CodeCollection]) -> None:
        """Insert or update each collection by slug, all in one transaction."""
        now = to_db_time(datetime.now(UTC))
        rows = [
            (c.slug, c.source, c.name, c.git_url, c.image_registry, c.default_ref, c.visibility, now)
            for c in collections
        ]
        self._write("save collections in", lambda conn: conn.executemany(_UPSERT_COLLECTION, rows))

    def list_collections(self) -> list[CollectionRecord]:
        """Every collection in the state, ordered by slug."""
        rows = self._read("read collections from", lambda conn: conn.execute(_SELECT_COLLECTIONS).fetchall())
        return sorted((_collection(row) for row in rows), key=lambda c: c.slug)

    def replace_image_refs(
        self, slug: str, refs: Iterable[ImageRefRecord], *, synced_at: datetime, deactivate_missing: bool
    ) -> tuple[int, int]:
        """Upsert the newest build of each ref; refs not given become inactive when `deactivate_missing`.

        One transaction, so readers never see a collection with no latest; the collection's
        latest/stable pointers are decided in it. Returns (upserted, deactivated).
        """
        when = to_db_time(synced_at)
        rows = [
            (slug, r.ref, r.ref_type, r.image_registry, r.image_tag, r.image_digest, r.commit_hash,
             r.rt_revision, to_db_time(r.image_built_at) if r.image_built_at else None, r.built_at_source,
             int(r.is_latest), int(r.is_prerelease), when, int(r.is_stable))
            for r in refs
        ]  # fmt: skip

        def write(conn: Conn) -> int:
            if rows:  # an empty (transient) listing must not take the pointers away
                conn.execute(
                    "UPDATE cccatalog_image_refs SET is_latest = 0, is_stable = 0 WHERE slug = ?", (slug,)
                )
            conn.executemany(_UPSERT_IMAGE_REF, rows)
            deactivated = 0
            if deactivate_missing:
                kept = [row[1] for row in rows]
                marks = ",".join("?" * len(kept)) or "NULL"
                cur = conn.execute(
                    f"UPDATE cccatalog_image_refs SET is_active = 0, is_latest = 0, is_stable = 0 "  # noqa: S608
                    f"WHERE slug = ? AND is_active = 1 AND ref NOT IN ({marks})",
                    (slug, *kept),
                )
                deactivated = cur.rowcount
            _refresh_pointers(conn, slug)
            conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, succeeded_at, error) "
                "VALUES (?, ?, ?, NULL) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "succeeded_at = excluded.succeeded_at, error = NULL",
                (slug, when, when),
            )
            return deactivated

        return len(rows), self._write("save image refs in", write)

    def record_image_failure(self, slug: str, *, error: str, attempted_at: datetime) -> None:
        """A poll that failed as a whole: the refs stay as they were; `error` must be redacted."""
        self._write(
            "record an image poll failure in",
            lambda conn: conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, error) VALUES (?, ?, ?) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "error = excluded.error",
                (slug, to_db_time(attempted_at), error),
            ),
        )

    def list_image_refs(self, slug: str, *, include_inactive: bool = False) -> list[ImageRefRecord]:
        """The refs of a collection, ordered by ref."""
        where = "slug = ?" if include_inactive else "slug = ? AND is_active = 1"
        rows = self._read(
            "read image refs from",
            lambda conn: conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM cccatalog_image_refs WHERE {where}",  # noqa: S608
                (slug,),
            ).fetchall(),
            key=("refs", slug, include_inactive),
        )
        return sorted((_image_ref(row) for row in rows), key=lambda r: r.ref)

    def catalog_pointers(self) -> dict[str, CatalogPointers]:
        """Latest, stable and last poll of every collection the state knows images of, in one query."""
        rows = self._read(
            "read the catalog from",
            lambda conn: conn.execute(_SELECT_POINTERS).fetchall(),
            key=("pointers",),
        )
        return {row.slug: _pointers(row) for row in rows}

    def catalog_pointer(self, slug: str) -> CatalogPointers:
        """Latest, stable and last poll of one collection (empty when the state knows none)."""
        rows = self._read(
            "read the catalog from",
            lambda conn: conn.execute(_SELECT_POINTERS + " WHERE k.slug = ?", (slug,)).fetchall(),
            key=("pointers", slug),
        )
        return _pointers(rows[0]) if rows else CatalogPointers(slug)

    def get_image_sync(self, slug: str) -> ImageSyncStatus | None:
        row = self._read(
            "read image poll status from",
            lambda conn: conn.execute(
                "SELECT slug, attempted_at, succeeded_at, error FROM cccatalog_image_syncs WHERE slug = ?",
                (slug,),
            ).fetchone(),
            key=("image-sync", slug),
        )
        if row is None:
            return None
        return ImageSyncStatus(
            row.slug, from_db_time(row.attempted_at), from_db_time(row.succeeded_at), row.error
        )

    # -- git mirrors --

    def get_mirror(self, slug: str) -> MirrorStatus | None:
        rows = self._read(
            "read mirror status from",
            lambda conn: conn.execute(_SELECT_MIRRORS + " AND slug = ?", (self.volume, slug)).fetchall(),
            key=("mirror", slug),
        )
        found = _own_volume_first(rows)
        return found[0] if found else None

    def list_mirrors(self) -> list[MirrorStatus]:
        """Every mirror the state knows on this store's volume, ordered by slug."""
        rows = self._read(
            "read mirror status from",
            lambda conn: conn.execute(_SELECT_MIRRORS, (self.volume,)).fetchall(),
            key=("mirrors",),
        )
        return _own_volume_first(rows)

    def record_mirror_success(
        self,
        slug: str,
        *,
        upstream_url: str,
        action: str,
        head_commit: str,
        default_branch: str,
        refs_fingerprint: str,
        attempted_at: datetime,
        finished_at: datetime,
    ) -> None:
        """Remember a successful clone/fetch: the new head and fingerprint; clears the last error."""
        attempted, finished = to_db_time(attempted_at), to_db_time(finished_at)
        row = (self.volume, slug, upstream_url, head_commit, default_branch, refs_fingerprint, action,
               attempted, finished)  # fmt: skip
        self._write("record a mirror sync in", lambda conn: conn.execute(_UPSERT_MIRROR_SUCCESS, row))

    def record_mirror_failure(
        self, slug: str, *, upstream_url: str, action: str, error: str, attempted_at: datetime
    ) -> None:
        """Remember a failed attempt; what the last success recorded (head, time) is kept.

        `error` must already be redacted: it is served by the unauthenticated status API.
        """
        row = (self.volume, slug, upstream_url, action, to_db_time(attempted_at), error)
        self._write("record a mirror sync failure in", lambda conn: conn.execute(_UPSERT_MIRROR_FAILURE, row))

    def backfill_mirror(self, slug: str, *, upstream_url: str, head_commit: str, default_branch: str) -> bool:
        """Record the head of a mirror found on disk (baked, or synced under another config) unless
        the state already knows one; the rest of a known row (its errors, its times) stays. True if
        recorded."""
        cur = self._write(
            "record a baked mirror in",
            lambda conn: conn.execute(
                "INSERT INTO cccatalog_git_mirrors (volume, slug, upstream_url, head_commit, default_branch, "
                "last_action) VALUES (?, ?, ?, ?, ?, 'baked') "
                "ON CONFLICT (volume, slug) DO UPDATE SET head_commit = excluded.head_commit, "
                "default_branch = excluded.default_branch "
                "WHERE cccatalog_git_mirrors.head_commit IS NULL",
                (self.volume, slug, upstream_url, head_commit, default_branch),
            ),
        )
        return cur.rowcount == 1

    def correct_mirror_head(self, slug: str, *, head_commit: str, default_branch: str) -> bool:
        """Set the head the state knows for `slug` to the one on disk when they differ (a run that
        moved the refs was killed before it wrote the state). True if corrected."""
        cur = self._write(
            "correct a mirror's head in",
            lambda conn: conn.execute(
                "UPDATE cccatalog_git_mirrors SET head_commit = ?, default_branch = ? "
                "WHERE volume = ? AND slug = ? AND head_commit IS NOT NULL "
                "AND (head_commit <> ? OR default_branch IS NULL OR default_branch <> ?)",
                (head_commit, default_branch, self.volume, slug, head_commit, default_branch),
            ),
        )
        return cur.rowcount == 1

    # -- jobs --

    def record_job(self, job: JobRecord) -> None:
        """Insert or update a job (its state, end, result and error)."""
        row = (
            job.id, job.kind, job.state, job.replica, to_db_time(job.started_at),
            to_db_time(job.finished_at) if job.finished_at else None,
            None if job.result is None else json.dumps(job.result), job.error, job.lock,
        )  # fmt: skip
        self._write("record a job in", lambda conn: conn.execute(_UPSERT_JOB, row))

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._read(
            "read a job from",
            lambda conn: conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM cccatalog_jobs WHERE id = ?",  # noqa: S608
                (job_id,),
            ).fetchone(),
        )
        return None if row is None else _job(row)

    def prune_jobs(self, *, keep: int) -> None:
        """Forget all but the newest `keep` finished jobs."""
        self._write(
            "forget old jobs in",
            lambda conn: conn.execute(
                "DELETE FROM cccatalog_jobs WHERE state <> 'running' AND id NOT IN "
                "(SELECT id FROM cccatalog_jobs ORDER BY started_at DESC LIMIT ?)",
                (keep,),
            ),
        )


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


def _refresh_pointers(conn: Conn, slug: str) -> None:
    """Decide a collection's latest and stable from its rows, inside the transaction that wrote them."""
    refs = [
        _image_ref(row)
        for row in conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM cccatalog_image_refs WHERE slug = ? AND is_active = 1",  # noqa: S608
            (slug,),
        ).fetchall()
    ]
    refs.sort(key=lambda r: r.ref)
    latest, stable = pointers(refs)
    conn.execute(
        _UPSERT_POINTERS,
        (slug, latest.ref if latest else None, stable.ref if stable else None, int(has_image(refs))),
    )


def _own_volume_first(rows: list[Any]) -> list[MirrorStatus]:
    """One status per slug: the store's own volume's row where there is one, else the shared one."""
    by_slug: dict[str, Any] = {}
    for row in rows:
        if row.slug not in by_slug or row.volume != "":
            by_slug[row.slug] = row
    return [_mirror(by_slug[slug]) for slug in sorted(by_slug)]


def _pointers(row: Any) -> CatalogPointers:
    return CatalogPointers(
        slug=row.slug,
        has_image=bool(row.has_image),
        latest_tag=row.latest_tag,
        latest_registry=row.latest_registry,
        stable_tag=row.stable_tag,
        stable_registry=row.stable_registry,
        last_synced=from_db_time(row.succeeded_at),
    )


def _job(row: Any) -> JobRecord:
    started_at = from_db_time(row.started_at)
    assert started_at is not None
    return JobRecord(
        id=row.id,
        kind=row.kind,
        state=row.state,
        replica=row.replica,
        started_at=started_at,
        finished_at=from_db_time(row.finished_at),
        result=None if row.result is None else json.loads(row.result),
        error=row.error,
        lock=row.lock,
    )


def _mirror(row: Any) -> MirrorStatus:
    return MirrorStatus(
        slug=row.slug,
        upstream_url=row.upstream_url,
        head_commit=row.head_commit,
        default_branch=row.default_branch,
        refs_fingerprint=row.refs_fingerprint,
        last_action=row.last_action,
        last_attempt_at=from_db_time(row.last_attempt_at),
        last_success_at=from_db_time(row.last_success_at),
        last_error=row.last_error,
    )


def _collection(row: Any) -> CollectionRecord:
    return CollectionRecord(
        slug=row.slug,
        source=row.source,
        name=row.name,
        git_url=row.git_url,
        image_registry=row.image_registry,
        default_ref=row.default_ref,
        visibility=row.visibility,
        updated_at=parse_rfc3339(row.updated_at),
    )


def _image_ref(row: Any) -> ImageRefRecord:
    return ImageRefRecord(
        slug=row.slug,
        ref=row.ref,
        ref_type=row.ref_type,
        image_registry=row.image_registry,
        image_tag=row.image_tag,
        image_digest=row.image_digest,
        commit_hash=row.commit_hash,
        rt_revision=row.rt_revision,
        image_built_at=from_db_time(row.image_built_at),
        built_at_source=row.built_at_source,
        is_latest=bool(row.is_latest),
        is_prerelease=bool(row.is_prerelease),
        is_active=bool(row.is_active),
        synced_at=from_db_time(row.synced_at),
        is_stable=bool(row.is_stable),
    )
