"""The state of image mirroring to destinations (the predecessor's mirror jobs): the destinations
configured, the builds each one holds, and the queue of copies to make, claimed by one replica each.

A part of `Store` (its SQL, through the store's `_read` and `_write`), kept apart from the catalog's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cccatalog.catalog.backends import Conn, T
from cccatalog.catalog.models import (
    DestinationRecord,
    MirrorJobRecord,
    MirrorTargetRecord,
    NewMirrorJob,
    from_db_time,
    to_db_time,
)

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


class MirroringState:
    """The mirroring half of `Store`."""

    if TYPE_CHECKING:

        def _read(self, what: str, fn: Callable[[Conn], T], key: Hashable | None = None) -> T: ...

        def _write(self, what: str, fn: Callable[[Conn], T]) -> T: ...

    def save_destinations(self, destinations: Iterable[tuple[str, str, str]]) -> None:
        """Insert or update (name, type, config JSON without secrets) of each configured destination."""
        now = to_db_time(datetime.now(UTC))
        rows = [(name, type_, config, now, now) for name, type_, config in destinations]
        self._write("save destinations in", lambda conn: conn.executemany(_UPSERT_DESTINATION, rows))

    def list_destinations(self) -> dict[str, DestinationRecord]:
        """Every destination the state knows, by name, with the number of tags it holds."""

        def read(conn: Conn) -> list[Any]:
            return conn.execute(
                "SELECT d.name, d.type, d.enabled, d.last_synced, d.last_sync_error, "
                "(SELECT count(*) FROM cccatalog_mirror_targets t WHERE t.destination = d.name) AS held "
                "FROM cccatalog_destinations d"
            ).fetchall()

        return {
            row.name: DestinationRecord(
                name=row.name,
                type=row.type,
                enabled=bool(row.enabled),
                last_synced=from_db_time(row.last_synced),
                last_sync_error=row.last_sync_error,
                mirrored_tag_count=int(row.held),
            )
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
                job_id = conn.execute("SELECT last_id FROM cccatalog_mirror_job_ids").fetchone().last_id
                conn.execute(
                    "INSERT INTO cccatalog_mirror_jobs (id, cc_slug, destination, source_image_ref, "
                    "source_image_tag, target_image_ref, status, attempts, max_attempts, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (
                        int(job_id),
                        job.cc_slug,
                        job.destination,
                        job.source_image_ref,
                        job.source_image_tag,
                        job.target_image_ref,
                        max_attempts,
                        now,
                    ),
                )
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
                    (now, row.id, stale),
                )
                if cur.rowcount == 1:
                    job = _mirror_job(row)
                    claimed.append(
                        replace(
                            job,
                            status="running",
                            attempts=job.attempts + 1,
                            started_at=from_db_time(now),
                            finished_at=None,
                        )
                    )
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
                conn.execute(
                    _UPSERT_TARGET,
                    (
                        job.destination,
                        job.cc_slug,
                        job.source_image_tag,
                        job.target_image_ref,
                        target_digest,
                        now,
                    ),
                )
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

        def read(conn: Conn) -> tuple[int, list[Any]]:
            total = (
                conn.execute(
                    f"SELECT count(*) AS total FROM cccatalog_mirror_jobs{clause}",  # noqa: S608
                    args,
                )
                .fetchone()
                .total
            )
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


def _target_row(row: Any) -> MirrorTargetRecord:
    mirrored_at = from_db_time(row.mirrored_at)
    assert mirrored_at is not None
    return MirrorTargetRecord(
        destination=row.destination,
        slug=row.slug,
        source_image_tag=row.source_image_tag,
        target_image_ref=row.target_image_ref,
        target_digest=row.target_digest,
        mirrored_at=mirrored_at,
    )


def _mirror_job(row: Any) -> MirrorJobRecord:
    created_at = from_db_time(row.created_at)
    assert created_at is not None
    return MirrorJobRecord(
        id=int(row.id),
        cc_slug=row.cc_slug,
        destination=row.destination,
        source_image_ref=row.source_image_ref,
        source_image_tag=row.source_image_tag,
        target_image_ref=row.target_image_ref,
        status=row.status,
        attempts=int(row.attempts),
        max_attempts=int(row.max_attempts),
        last_error=row.last_error,
        created_at=created_at,
        started_at=from_db_time(row.started_at),
        finished_at=from_db_time(row.finished_at),
        log_text=row.log_text,
    )
