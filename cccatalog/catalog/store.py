"""The state database behind the `Store` class: one SQLite file, or a PostgreSQL database shared by
replicas. The SQL of the catalog lives here (the engines' differences in `backends`, the schema in
`migrations`).

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
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cccatalog.catalog.backends import (
    Conn,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    is_busy,
    sqlite_error,
)
from cccatalog.catalog.migrations import (
    MIGRATIONS,
    check_is_state_file,
    check_not_newer,
    migrate,
    user_version,
)
from cccatalog.catalog.models import (
    CatalogPointers,
    CollectionRecord,
    DestinationRecord,
    ImageRefRecord,
    ImageSyncStatus,
    JobRecord,
    MirrorJobRecord,
    MirrorStatus,
    MirrorTargetRecord,
    NewMirrorJob,
    from_db_time,
    to_db_time,
)
from cccatalog.catalog.pointers import has_image, pointers
from cccatalog.config import CodeCollection, Config, StateConfig
from cccatalog.errors import StateError, StateUnavailable
from cccatalog.redact import mask_url_password
from cccatalog.timestamps import parse_rfc3339

T = TypeVar("T")

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
    SELECT k.slug, p.has_image, l.image_tag, l.image_registry, s.image_tag, s.image_registry,
        y.succeeded_at
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
_UPSERT_DESTINATION = """
    INSERT INTO cccatalog_destinations (name, type, enabled, config_json, created_at, updated_at)
        VALUES (?, ?, 1, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET type = excluded.type, enabled = 1, config_json = excluded.config_json,
        updated_at = excluded.updated_at
"""
_TARGET_COLUMNS = "destination, slug, source_image_tag, target_image_ref, target_digest, mirrored_at"
_UPSERT_TARGET = f"""
    INSERT INTO cccatalog_mirror_targets ({_TARGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (destination, slug, source_image_tag) DO UPDATE SET
        target_image_ref = excluded.target_image_ref, target_digest = excluded.target_digest,
        mirrored_at = excluded.mirrored_at
"""  # noqa: S608 - column names only
_MIRROR_JOB_COLUMNS = (
    "id, cc_slug, destination, source_image_ref, source_image_tag, target_image_ref, status, attempts, "
    "max_attempts, last_error, created_at, started_at, finished_at, log_text"
)
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
        try:
            raw = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                version = user_version(SqliteDatabase(raw, path).conn)
            finally:
                raw.close()
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), "read", exc) from None
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


def _target(state: Path | str | StateConfig) -> _Target:
    if isinstance(state, StateConfig):
        return _Target(url=state.url) if state.url else _Target(path=state.path)
    if isinstance(state, str) and state.startswith(("postgresql://", "postgres://")):
        return _Target(url=state)
    return _Target(path=Path(state))


class Store:
    """An open state database. Safe to share across threads; several processes (and, on PostgreSQL,
    several hosts) may open the same database."""

    def __init__(self, db: Database, *, volume: str = "", ready: bool = True) -> None:
        """Wrap a database that is already migrated (or, with `ready=False`, will be on first use);
        prefer `Store.open`. `volume` names the mirror volume whose git status this store records."""
        self._db = db
        self.volume = volume
        self._ready = ready
        self._ready_lock = threading.Lock()
        self._last_good: OrderedDict[Hashable, Any] = OrderedDict()
        self._last_good_lock = threading.Lock()
        self._last_read_at: float | None = None  # time.time() of the last read the database answered

    @classmethod
    def open(
        cls,
        state: Path | str | StateConfig,
        *,
        busy_timeout_s: float = 30.0,
        volume: str = "",
        secrets: Iterable[str] = (),
        connect_later: bool = False,
    ) -> Store:
        """Open (creating if needed) and migrate the state: an SQLite file at a path, or the PostgreSQL
        database of a `postgresql://` URL (a StateConfig says which). `secrets` are masked in errors.

        `connect_later`: a PostgreSQL database that cannot be reached now is connected to and migrated
        on first use instead (serve keeps serving git meanwhile); anything else still raises."""
        target = _target(state)
        if target.url is not None:
            db = PostgresDatabase(target.url, secrets=tuple(secrets))
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
        assert target.path is not None
        return cls(_open_sqlite(target.path, busy_timeout_s), volume=volume)

    @classmethod
    def memory(cls) -> Store:
        """A state that lives only in this process (serve's fallback when the state file is unusable)."""
        raw = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db = SqliteDatabase(raw, Path(":memory:"))
        migrate(db.conn)
        return cls(db)

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
        return self.location == ":memory:"

    @property
    def shared(self) -> bool:
        """True when the state is a database other hosts use too (PostgreSQL)."""
        return self._db.shared

    @property
    def database(self) -> Database:
        """The engine underneath, for the locks that live in it (`cccatalog.runlocks`)."""
        return self._db

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

    @classmethod
    def open_readonly(
        cls, state: Path | StateConfig, *, volume: str = "", secrets: Iterable[str] = ()
    ) -> Store | None:
        """Open the state for reading only (`cccatalog status`); None when there is none yet (no state
        file; a database without cccatalog's schema).

        Nothing is created or written: not the file, not a migration, not the -wal/-shm files a
        read-only connection makes when they are missing. With both present (a writer has the file
        open) they are used, so its latest commits are seen; without them the file holds every commit
        and is read as it is, immutable. A database is read in read-only transactions. A state of an
        older schema is refused with what to run.
        """
        target = _target(state)
        if target.url is not None:
            found = state_database_version(target.url, secrets=secrets)
            if not found:
                return None
            _refuse_older(mask_url_password(target.url), found, "database")
            return cls(PostgresDatabase(target.url, secrets=tuple(secrets), read_only=True), volume=volume)
        path = target.path
        assert path is not None
        version = state_file_version(path)
        if version is None:
            return None
        _refuse_older(str(path), version, "file")
        sidecars = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        uri = f"{path.absolute().as_uri()}?mode=ro" + ("" if sidecars else "&immutable=1")
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), "open", exc) from None
        return cls(SqliteDatabase(conn, path), volume=volume)

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
                # Before anything writes: a newer cccatalog's database must stay untouched.
                check_not_newer(conn, location)
                check_is_state_file(conn, location)
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
        return {row[0]: _pointers(row) for row in rows}

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
        return ImageSyncStatus(row[0], from_db_time(row[1]), from_db_time(row[2]), row[3])

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

    # -- image mirroring to destinations --

    def save_destinations(self, destinations: Iterable[tuple[str, str, str]]) -> None:
        """Insert or update (name, type, config JSON without secrets) of each configured destination."""
        now = to_db_time(datetime.now(UTC))
        rows = [(name, type_, config, now, now) for name, type_, config in destinations]
        self._write("save destinations in", lambda conn: conn.executemany(_UPSERT_DESTINATION, rows))

    def list_destinations(self) -> dict[str, DestinationRecord]:
        """Every destination the state knows, by name, with the number of tags it holds."""

        def read(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT d.name, d.type, d.enabled, d.last_synced, d.last_sync_error, "
                "(SELECT count(*) FROM cccatalog_mirror_targets t WHERE t.destination = d.name) "
                "FROM cccatalog_destinations d"
            ).fetchall()

        return {
            row[0]: DestinationRecord(row[0], row[1], bool(row[2]), from_db_time(row[3]), row[4], int(row[5]))
            for row in self._read("read destinations from", read)
        }

    def mirror_targets(self, *, slug: str | None = None) -> list[MirrorTargetRecord]:
        """The builds destinations hold (of one collection, when given), by destination, slug and tag."""
        sql = f"SELECT {_TARGET_COLUMNS} FROM cccatalog_mirror_targets"  # noqa: S608
        args: tuple[object, ...] = ()
        if slug is not None:
            sql, args = sql + " WHERE slug = ?", (slug,)
        rows = self._read("read mirror targets from", lambda conn: conn.execute(sql, args).fetchall())
        targets = [_target_row(row) for row in rows]
        return sorted(targets, key=lambda t: (t.destination, t.slug, t.source_image_tag))

    def enqueue_mirror_jobs(self, jobs: Iterable[NewMirrorJob], *, max_attempts: int = 3) -> tuple[int, int]:
        """Add a pending job for each copy the destination does not hold yet and no job is already
        doing; returns (jobs enqueued, refs already mirrored). One transaction."""
        wanted = list(jobs)
        now = to_db_time(datetime.now(UTC))

        def write(conn: Conn) -> tuple[int, int]:
            # The lock every job-adder takes first, so ids are handed out once (see migration 8).
            conn.execute("UPDATE cccatalog_mirror_job_ids SET last_id = last_id")
            enqueued = already = 0
            for job in wanted:
                if conn.execute(
                    "SELECT 1 FROM cccatalog_mirror_targets WHERE destination = ? AND slug = ? "
                    "AND source_image_tag = ? AND target_image_ref = ?",
                    (job.destination, job.cc_slug, job.source_image_tag, job.target_image_ref),
                ).fetchone():
                    already += 1
                    continue
                if conn.execute(
                    "SELECT 1 FROM cccatalog_mirror_jobs WHERE destination = ? AND cc_slug = ? "
                    "AND target_image_ref = ? AND status IN ('pending', 'running')",
                    (job.destination, job.cc_slug, job.target_image_ref),
                ).fetchone():
                    continue
                conn.execute("UPDATE cccatalog_mirror_job_ids SET last_id = last_id + 1")
                (job_id,) = conn.execute("SELECT last_id FROM cccatalog_mirror_job_ids").fetchone()
                conn.execute(
                    "INSERT INTO cccatalog_mirror_jobs (id, cc_slug, destination, source_image_ref, "
                    "source_image_tag, target_image_ref, status, attempts, max_attempts, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (int(job_id), job.cc_slug, job.destination, job.source_image_ref, job.source_image_tag,
                     job.target_image_ref, max_attempts, now),
                )  # fmt: skip
                enqueued += 1
            return enqueued, already

        return self._write("add mirror jobs to", write)

    def claim_mirror_jobs(
        self,
        *,
        limit: int,
        stale_before: datetime,
        destination: str | None = None,
        slugs: Iterable[str] = (),
        exclude: Iterable[int] = (),
    ) -> list[MirrorJobRecord]:
        """Mark up to `limit` pending jobs running (oldest first) and return them. A job still running
        since before `stale_before` belongs to a process that stopped: it is taken over. Each job is
        claimed with a conditional UPDATE, so two replicas never run the same one."""
        now = to_db_time(datetime.now(UTC))
        stale = to_db_time(stale_before)
        skipped = sorted(exclude)
        only = sorted(slugs)

        def write(conn: Conn) -> list[MirrorJobRecord]:
            sql = (
                f"SELECT {_MIRROR_JOB_COLUMNS} FROM cccatalog_mirror_jobs WHERE (status = 'pending' "  # noqa: S608
                "OR (status = 'running' AND started_at < ?))"
            )
            args: tuple[object, ...] = (stale,)
            if destination is not None:
                sql, args = sql + " AND destination = ?", (*args, destination)
            if only:
                sql, args = sql + f" AND cc_slug IN ({','.join('?' * len(only))})", (*args, *only)
            if skipped:
                sql, args = sql + f" AND id NOT IN ({','.join('?' * len(skipped))})", (*args, *skipped)
            rows = conn.execute(sql + " ORDER BY created_at, id LIMIT ?", (*args, limit)).fetchall()
            claimed = []
            for row in rows:
                cur = conn.execute(
                    "UPDATE cccatalog_mirror_jobs SET status = 'running', started_at = ?, "
                    "finished_at = NULL, attempts = attempts + 1 WHERE id = ? AND (status = 'pending' OR "
                    "(status = 'running' AND started_at < ?))",
                    (now, row[0], stale),
                )
                if cur.rowcount == 1:
                    job = _mirror_job(row)
                    claimed.append(replace(job, status="running", attempts=job.attempts + 1,
                                           started_at=from_db_time(now), finished_at=None))  # fmt: skip
            return claimed

        return self._write("claim mirror jobs in", write)

    def finish_mirror_job(
        self, job: MirrorJobRecord, *, error: str | None, log_text: str, target_digest: str | None = None
    ) -> str:
        """Record how a claimed job ended; returns its status now. A success records the build as
        held by the destination; a failure goes back to pending until its attempts are used up."""
        now = to_db_time(datetime.now(UTC))

        def write(conn: Conn) -> str:
            if error is None:
                status = "done"
                conn.execute(_UPSERT_TARGET, (job.destination, job.cc_slug, job.source_image_tag,
                                              job.target_image_ref, target_digest, now))  # fmt: skip
                conn.execute(
                    "UPDATE cccatalog_destinations SET last_synced = ?, last_sync_error = NULL "
                    "WHERE name = ?",
                    (now, job.destination),
                )
            else:
                status = "pending" if job.attempts < job.max_attempts else "failed"
                conn.execute(
                    "UPDATE cccatalog_destinations SET last_sync_error = ? WHERE name = ?",
                    (error[:2000], job.destination),
                )
            conn.execute(
                "UPDATE cccatalog_mirror_jobs SET status = ?, finished_at = ?, last_error = ?, log_text = ? "
                "WHERE id = ?",
                (status, now, error, log_text, job.id),
            )
            return status

        return self._write("record a mirror job in", write)

    def list_mirror_jobs(
        self,
        *,
        status: str | None = None,
        destination: str | None = None,
        cc_slug: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[MirrorJobRecord]]:
        """(how many match, one page of them, newest first)."""
        where, args = [], []
        for column, value in (("status", status), ("destination", destination), ("cc_slug", cc_slug)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def read(conn: Conn) -> tuple[int, list[tuple[Any, ...]]]:
            (total,) = conn.execute(f"SELECT count(*) FROM cccatalog_mirror_jobs{clause}", args).fetchone()  # noqa: S608
            rows = conn.execute(
                f"SELECT {_MIRROR_JOB_COLUMNS} FROM cccatalog_mirror_jobs{clause} "  # noqa: S608
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            return int(total), rows

        total, rows = self._read("read mirror jobs from", read)
        return total, [_mirror_job(row) for row in rows]

    def get_mirror_job(self, job_id: int) -> MirrorJobRecord | None:
        row = self._read(
            "read a mirror job from",
            lambda conn: conn.execute(
                f"SELECT {_MIRROR_JOB_COLUMNS} FROM cccatalog_mirror_jobs WHERE id = ?",  # noqa: S608
                (job_id,),
            ).fetchone(),
        )
        return None if row is None else _mirror_job(row)


def _refuse_older(location: str, version: int, what: str) -> None:
    if version < len(MIGRATIONS):
        raise StateError(
            f"state {what} {location} has schema version {version}, older than this cccatalog's "
            f"{len(MIGRATIONS)}; run `cccatalog sync` (or start `serve`) once to upgrade it"
        )


def _open_sqlite(path: Path, busy_timeout_s: float) -> SqliteDatabase:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"cannot create the directory for state file {path}: {exc.strerror or exc}; "
            "check that the parent path is a writable directory"
        ) from None
    try:
        raw = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise sqlite_error(str(path), "open", exc) from None
    db = SqliteDatabase(raw, path)
    try:
        raw.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
        # Before anything writes: a newer cccatalog's file must stay byte-for-byte untouched.
        check_not_newer(db.conn, str(path))
        check_is_state_file(db.conn, str(path))
        _enable_wal(raw, deadline=time.monotonic() + busy_timeout_s)
        raw.execute("PRAGMA synchronous = NORMAL")
        raw.execute("PRAGMA foreign_keys = ON")
        migrate(db.conn, str(path))
    except sqlite3.Error as exc:
        raw.close()
        raise sqlite_error(str(path), "open", exc) from None
    except BaseException:
        raw.close()
        raise
    return db


def _enable_wal(conn: sqlite3.Connection, *, deadline: float) -> None:
    """Switch to WAL, retrying: the switch needs an exclusive lock and may fail fast with SQLITE_BUSY."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    while True:
        try:
            # On a filesystem without shared memory (NFS) this keeps the rollback journal: still correct.
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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


def _own_volume_first(rows: list[tuple[Any, ...]]) -> list[MirrorStatus]:
    """One status per slug: the store's own volume's row where there is one, else the shared one."""
    by_slug: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        if row[0] not in by_slug or row[-1] != "":
            by_slug[row[0]] = row
    return [_mirror(by_slug[slug][:-1]) for slug in sorted(by_slug)]


def _pointers(row: tuple[Any, ...]) -> CatalogPointers:
    slug, has, latest_tag, latest_registry, stable_tag, stable_registry, synced = row
    return CatalogPointers(
        slug, bool(has), latest_tag, latest_registry, stable_tag, stable_registry, from_db_time(synced)
    )


def _job(row: tuple[Any, ...]) -> JobRecord:
    job_id, kind, state, replica, started, finished, result, error, lock = row
    started_at = from_db_time(started)
    assert started_at is not None
    return JobRecord(
        job_id, kind, state, replica, started_at, from_db_time(finished),
        None if result is None else json.loads(result), error, lock,
    )  # fmt: skip


def _mirror(row: tuple[Any, ...]) -> MirrorStatus:
    slug, upstream, head, branch, fingerprint, action, attempt, success, error = row
    return MirrorStatus(
        slug, upstream, head, branch, fingerprint, action, from_db_time(attempt), from_db_time(success), error
    )


def _collection(row: tuple[Any, ...]) -> CollectionRecord:
    slug, source, name, git_url, registry, default_ref, visibility, updated_at = row
    updated = parse_rfc3339(updated_at)
    return CollectionRecord(slug, source, name, git_url, registry, default_ref, visibility, updated)


def _image_ref(row: tuple[Any, ...]) -> ImageRefRecord:
    (
        slug,
        ref,
        ref_type,
        registry,
        tag,
        digest,
        commit,
        rt,
        built_at,
        source,
        latest,
        pre,
        active,
        synced,
        stable,
    ) = row
    return ImageRefRecord(
        slug, ref, ref_type, registry, tag, digest, commit, rt, from_db_time(built_at), source,
        bool(latest), bool(pre), bool(active), from_db_time(synced), bool(stable),
    )  # fmt: skip


def _target_row(row: tuple[Any, ...]) -> MirrorTargetRecord:
    destination, slug, tag, ref, digest, mirrored = row
    mirrored_at = from_db_time(mirrored)
    assert mirrored_at is not None
    return MirrorTargetRecord(destination, slug, tag, ref, digest, mirrored_at)


def _mirror_job(row: tuple[Any, ...]) -> MirrorJobRecord:
    (
        job_id,
        slug,
        destination,
        source,
        tag,
        target,
        status,
        attempts,
        most,
        error,
        created,
        started,
        finished,
        log,
    ) = row
    created_at = from_db_time(created)
    assert created_at is not None
    return MirrorJobRecord(
        int(job_id), slug, destination, source, tag, target, status, int(attempts), int(most), error,
        created_at, from_db_time(started), from_db_time(finished), log,
    )  # fmt: skip
