"""The state of git mirrors (each mirror volume's status of each mirror: head, last attempt, last
error) and of jobs (the sync runs replicas record).

A part of `Store` (its SQL, through the store's `_read` and `_write`), recording git status for the
store's mirror volume (`Store.volume`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cccatalog.catalog.backends import Conn, T
from cccatalog.catalog.models import JobRecord, MirrorStatus, from_db_time, to_db_time

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
_JOB_COLUMNS = "id, kind, state, replica, started_at, finished_at, result, error, lock"
_UPSERT_JOB = f"""
    INSERT INTO cccatalog_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at,
        result = excluded.result, error = excluded.error
"""  # noqa: S608 - column names only


class GitState:
    """The git mirrors and jobs half of `Store`."""

    if TYPE_CHECKING:
        volume: str

        def _read(self, what: str, fn: Callable[[Conn], T], key: Hashable | None = None) -> T: ...

        def _write(self, what: str, fn: Callable[[Conn], T]) -> T: ...

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
        row = (
            self.volume,
            slug,
            upstream_url,
            head_commit,
            default_branch,
            refs_fingerprint,
            action,
            attempted,
            finished,
        )
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
            job.id,
            job.kind,
            job.state,
            job.replica,
            to_db_time(job.started_at),
            to_db_time(job.finished_at) if job.finished_at else None,
            None if job.result is None else json.dumps(job.result),
            job.error,
            job.lock,
        )
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


def _own_volume_first(rows: list[Any]) -> list[MirrorStatus]:
    """One status per slug: the store's own volume's row where there is one, else the shared one."""
    by_slug: dict[str, Any] = {}
    for row in rows:
        if row.slug not in by_slug or row.volume != "":
            by_slug[row.slug] = row
    return [_mirror(by_slug[slug]) for slug in sorted(by_slug)]


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
    # by position, in the record's field order, as the catalog's hot builders (`catalog_state`)
    return MirrorStatus(
        row.slug,
        row.upstream_url,
        row.head_commit,
        row.default_branch,
        row.refs_fingerprint,
        row.last_action,
        from_db_time(row.last_attempt_at),
        from_db_time(row.last_success_at),
        row.last_error,
    )
