"""The state database: one SQLite file behind the `Store` class. The only module that contains SQL.

The file is opened in WAL mode so `serve` can read while `sync` writes, and migrated on open (see
`migrations`). Every write is one `BEGIN IMMEDIATE ... COMMIT` transaction. Times are stored as
RFC 3339 UTC strings with `Z` and come back as timezone-aware UTC datetimes. sqlite3 errors leave
this module as `StateError` with the path and a hint, never with row data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cccatalog.catalog.migrations import (
    MIGRATIONS,
    check_is_state_file,
    check_not_newer,
    migrate,
    user_version,
)
from cccatalog.catalog.models import (
    CollectionRecord,
    ImageRefRecord,
    ImageSyncStatus,
    MirrorStatus,
    from_db_time,
    to_db_time,
)
from cccatalog.config import CodeCollection
from cccatalog.errors import StateError

# Values always travel as `?` parameters, never inside the SQL text.
_SELECT_MIRRORS = (
    "SELECT slug, upstream_url, head_commit, default_branch, refs_fingerprint, last_action, "
    "last_attempt_at, last_success_at, last_error FROM cccatalog_git_mirrors"
)
_UPSERT_MIRROR_SUCCESS = """
    INSERT INTO cccatalog_git_mirrors (slug, upstream_url, head_commit, default_branch, refs_fingerprint,
        last_action, last_attempt_at, last_success_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET upstream_url = excluded.upstream_url,
        head_commit = excluded.head_commit, default_branch = excluded.default_branch,
        refs_fingerprint = excluded.refs_fingerprint, last_action = excluded.last_action,
        last_attempt_at = excluded.last_attempt_at, last_success_at = excluded.last_success_at,
        last_error = NULL
"""
_UPSERT_MIRROR_FAILURE = """
    INSERT INTO cccatalog_git_mirrors (slug, upstream_url, last_action, last_attempt_at, last_error)
        VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET upstream_url = excluded.upstream_url,
        last_action = excluded.last_action, last_attempt_at = excluded.last_attempt_at,
        last_error = excluded.last_error
"""
_SELECT_COLLECTIONS = (
    "SELECT slug, source, name, git_url, image_registry, default_ref, visibility, updated_at "
    "FROM cccatalog_collections ORDER BY slug"
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
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                version = user_version(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _state_error(path, "read", exc) from None
    if version > len(MIGRATIONS):
        raise StateError(
            f"state file {path} was written by a newer cccatalog (schema version {version}; "
            f"this cccatalog knows up to {len(MIGRATIONS)})"
        )
    return version


class Store:
    """An open state file. Safe to share across threads; several processes may open the same file."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an autocommit connection that is already migrated; prefer `Store.open`."""
        self._conn = conn
        self.path = path
        # One connection serves every thread: a transaction must not interleave with another
        # thread's statements, so reads and writes alike take this lock.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, busy_timeout_s: float = 30.0) -> Store:
        """Open (creating if needed) and migrate the state file at `path`."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the directory for state file {path}: {exc.strerror or exc}; "
                "check that the parent path is a writable directory"
            ) from None
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _state_error(path, "open", exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
            # Before anything writes: a newer cccatalog's file must stay byte-for-byte untouched.
            check_not_newer(conn)
            check_is_state_file(conn)
            _enable_wal(conn, deadline=time.monotonic() + busy_timeout_s)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _state_error(path, "open", exc) from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def memory(cls) -> Store:
        """A state that lives only in this process (serve's fallback when the state file is unusable)."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(conn)
        return cls(conn, Path(":memory:"))

    @classmethod
    def open_readonly(cls, path: Path) -> Store | None:
        """Open the state file at `path` for reading only (`cccatalog status`); None when there is none.

        Nothing is created or written: not the file, not a migration, not the -wal/-shm files a
        read-only connection makes when they are missing. With both present (a writer has the file
        open) they are used, so its latest commits are seen; without them the file holds every commit
        and is read as it is, immutable. A file of an older schema is refused with what to run.
        """
        version = state_file_version(path)
        if version is None:
            return None
        if version < len(MIGRATIONS):
            raise StateError(
                f"state file {path} has schema version {version}, older than this cccatalog's "
                f"{len(MIGRATIONS)}; run `cccatalog sync` (or start `serve`) once to upgrade it"
            )
        sidecars = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        uri = f"{path.absolute().as_uri()}?mode=ro" + ("" if sidecars else "&immutable=1")
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise _state_error(path, "open", exc) from None
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._reading("read the schema version from") as conn:
            return user_version(conn)

    def upsert_collections(self, collections: Iterable[CodeCollection]) -> None:
        """Insert or update each collection by slug, all in one transaction."""
        now = to_db_time(datetime.now(UTC))
        rows = [
            (c.slug, c.source, c.name, c.git_url, c.image_registry, c.default_ref, c.visibility, now)
            for c in collections
        ]
        with self._writing("save collections in") as conn:
            conn.executemany(_UPSERT_COLLECTION, rows)

    def list_collections(self) -> list[CollectionRecord]:
        """Every collection in the state file, ordered by slug."""
        with self._reading("read collections from") as conn:
            rows = conn.execute(_SELECT_COLLECTIONS).fetchall()
        return [_collection(row) for row in rows]

    def get_mirror(self, slug: str) -> MirrorStatus | None:
        with self._reading("read mirror status from") as conn:
            row = conn.execute(_SELECT_MIRRORS + " WHERE slug = ?", (slug,)).fetchone()
        return None if row is None else _mirror(row)

    def list_mirrors(self) -> list[MirrorStatus]:
        """Every mirror the state file knows, ordered by slug."""
        with self._reading("read mirror status from") as conn:
            rows = conn.execute(_SELECT_MIRRORS + " ORDER BY slug").fetchall()
        return [_mirror(row) for row in rows]

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
        row = (slug, upstream_url, head_commit, default_branch, refs_fingerprint, action, attempted, finished)
        with self._writing("record a mirror sync in") as conn:
            conn.execute(_UPSERT_MIRROR_SUCCESS, row)

    def record_mirror_failure(
        self, slug: str, *, upstream_url: str, action: str, error: str, attempted_at: datetime
    ) -> None:
        """Remember a failed attempt; what the last success recorded (head, time) is kept.

        `error` must already be redacted: it is served by the unauthenticated status API.
        """
        row = (slug, upstream_url, action, to_db_time(attempted_at), error)
        with self._writing("record a mirror sync failure in") as conn:
            conn.execute(_UPSERT_MIRROR_FAILURE, row)

    def replace_image_refs(
        self, slug: str, refs: Iterable[ImageRefRecord], *, synced_at: datetime, deactivate_missing: bool
    ) -> tuple[int, int]:
        """Upsert the newest build of each ref; refs not given become inactive when `deactivate_missing`.

        One transaction, so readers never see a collection with no latest. Returns (upserted, deactivated).
        """
        when = to_db_time(synced_at)
        rows = [
            (slug, r.ref, r.ref_type, r.image_registry, r.image_tag, r.image_digest, r.commit_hash,
             r.rt_revision, to_db_time(r.image_built_at) if r.image_built_at else None, r.built_at_source,
             int(r.is_latest), int(r.is_prerelease), when, int(r.is_stable))
            for r in refs
        ]  # fmt: skip
        with self._writing("save image refs in") as conn:
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
            conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, succeeded_at, error) "
                "VALUES (?, ?, ?, NULL) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "succeeded_at = excluded.succeeded_at, error = NULL",
                (slug, when, when),
            )
        return len(rows), deactivated

    def record_image_failure(self, slug: str, *, error: str, attempted_at: datetime) -> None:
        """A poll that failed as a whole: the refs stay as they were; `error` must be redacted."""
        with self._writing("record an image poll failure in") as conn:
            conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, error) VALUES (?, ?, ?) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "error = excluded.error",
                (slug, to_db_time(attempted_at), error),
            )

    def list_image_refs(self, slug: str, *, include_inactive: bool = False) -> list[ImageRefRecord]:
        """The refs of a collection, ordered by ref."""
        where = "slug = ?" if include_inactive else "slug = ? AND is_active = 1"
        with self._reading("read image refs from") as conn:
            rows = conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM cccatalog_image_refs WHERE {where} ORDER BY ref",  # noqa: S608
                (slug,),
            ).fetchall()
        return [_image_ref(row) for row in rows]

    def get_image_sync(self, slug: str) -> ImageSyncStatus | None:
        with self._reading("read image poll status from") as conn:
            row = conn.execute(
                "SELECT slug, attempted_at, succeeded_at, error FROM cccatalog_image_syncs WHERE slug = ?",
                (slug,),
            ).fetchone()
        if row is None:
            return None
        return ImageSyncStatus(row[0], from_db_time(row[1]), from_db_time(row[2]), row[3])

    def backfill_mirror(self, slug: str, *, upstream_url: str, head_commit: str, default_branch: str) -> bool:
        """Record the head of a mirror found on disk (baked, or synced under another config) unless
        the state already knows one; the rest of a known row (its errors, its times) stays. True if
        recorded."""
        with self._writing("record a baked mirror in") as conn:
            cur = conn.execute(
                "INSERT INTO cccatalog_git_mirrors (slug, upstream_url, head_commit, default_branch, "
                "last_action) VALUES (?, ?, ?, ?, 'baked') "
                "ON CONFLICT (slug) DO UPDATE SET head_commit = excluded.head_commit, "
                "default_branch = excluded.default_branch "
                "WHERE cccatalog_git_mirrors.head_commit IS NULL",
                (slug, upstream_url, head_commit, default_branch),
            )
            return cur.rowcount == 1

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise _state_error(self.path, what, exc) from None

    @contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the database write lock up front; rolled back on any error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    # Some errors (disk full, I/O) already ended the transaction.
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _state_error(self.path, what, exc) from None


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
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _is_busy(exc: sqlite3.Error) -> bool:
    # Errors raised by the sqlite3 module itself (e.g. "closed database") carry no SQLite code.
    return bool((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY)


def _state_error(path: Path, what: str, exc: sqlite3.Error) -> StateError:
    if _is_busy(exc):
        hint = "another process kept it locked for longer than the busy timeout; try again"
    else:
        hint = "is the directory writable, the disk not full, and the file a cccatalog state file?"
    return StateError(f"cannot {what} state file {path}: {exc}; {hint}")


def _mirror(row: tuple[Any, ...]) -> MirrorStatus:
    slug, upstream, head, branch, fingerprint, action, attempt, success, error = row
    return MirrorStatus(
        slug, upstream, head, branch, fingerprint, action, from_db_time(attempt), from_db_time(success), error
    )


def _collection(row: tuple[Any, ...]) -> CollectionRecord:
    slug, source, name, git_url, registry, default_ref, visibility, updated_at = row
    updated = datetime.fromisoformat(updated_at).astimezone(UTC)
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
