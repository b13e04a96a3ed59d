"""Background sync jobs for the admin API and serve's scheduler: one job of a kind at a time, across
processes and replicas, by the same run lock the `sync` command takes (`cccatalog.runlocks`).

The predecessor ran a sync inside the request for up to 15 minutes per repo; here a request starts
a job and answers 202 with its id at once (or waits, when asked to, as the predecessor did).

Jobs are rows in the state (`cccatalog_jobs`), so `GET /api/v1/admin/jobs/{id}` answers from any
replica, and a job outlives the request that started it. A job's final row is written while its run
lock is still held, and the lock names the job holding it (`owner`): a job whose row says running
while nobody holds its lock, or while another job holds it (another replica's job of the same kind),
was left behind by a replica that stopped, and is reported failed. The replica running a job keeps it
in memory too, so a `wait=true` request and a state database that went away still get their answer.
"""

from __future__ import annotations

import logging
import secrets
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cccatalog.catalog.models import JobRecord
from cccatalog.errors import CCCatalogError, LockBusy, StateError
from cccatalog.logtext import Verbatim
from cccatalog.runlocks import RunLock

if TYPE_CHECKING:
    from cccatalog.catalog.store import Store

log = logging.getLogger("cccatalog.serve")

_MAX_KEPT = 100


@dataclass
class Job:
    id: str
    kind: str
    state: str = "running"  # running | succeeded | failed
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    replica: str | None = None
    lock: str | None = None  # the name of the run lock it holds

    def record(self) -> JobRecord:
        return JobRecord(
            self.id,
            self.kind,
            self.state,
            self.replica,
            self.started_at,
            self.finished_at,
            self.result,
            self.error,
            self.lock,
        )

    @classmethod
    def of(cls, record: JobRecord) -> Job:
        job = cls(
            record.id,
            record.kind,
            record.state,
            record.started_at,
            record.finished_at,
            record.result,
            record.error,
            replica=record.replica,
            lock=record.lock,
        )
        if record.state != "running":
            job.done.set()
        return job


class JobRunner:
    """Starts and answers about jobs. `store` keeps them for every replica (None: this process only);
    `lock_held(name)` says whether a run lock is held, to tell a job left behind by a stopped replica."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        replica: str = "",
        lock_held: Callable[[str], bool] | None = None,
        lock_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, str] = {}
        self._lock = threading.Lock()
        self._store = store
        self._replica = replica
        self._lock_held = lock_held
        self._lock_owner = lock_owner

    def get(self, job_id: str) -> Job | None:
        """The job from this process, else from the state (StateError when it cannot be read)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None or self._store is None:
            return job
        record = self._store.get_job(job_id)
        if record is None:
            return None
        if record.state == "running" and self._left_behind(record):
            record = replace(
                record,
                state="failed",
                finished_at=datetime.now(UTC),
                error=f"the replica running it ({record.replica}) stopped before it finished",
            )
            self._store.record_job(record)
        return Job.of(record)

    def _left_behind(self, record: JobRecord) -> bool:
        if self._lock_held is None or record.lock is None or self._store is None:
            return False
        if self._lock_held(record.lock):
            # held, but by whom? Another job of the kind (another replica's) holds it under its own id
            owner = self._lock_owner(record.lock) if self._lock_owner is not None else None
            if owner is None or owner == record.id:
                return False
        # its replica writes the final row before it lets go of the lock: read it once more
        again = self._store.get_job(record.id)
        return again is not None and again.state == "running"

    def start(self, kind: str, lock: RunLock, work: Callable[[], dict[str, Any]]) -> Job:
        """Start `work` in a thread holding `lock`. Raises LockBusy when a job of `kind` runs anywhere."""
        with self._lock:
            if kind in self._running:
                raise LockBusy(f"a {kind} job is already running (job {self._running[kind]})")
        job_id = f"{kind}-{secrets.token_hex(5)}"
        held = lock.acquire(timeout=0, owner=job_id)  # another process, another replica?
        job = Job(id=job_id, kind=kind, replica=self._replica or None, lock=lock.name)
        try:
            self._save(job)
        except BaseException:
            held.release()
            raise
        with self._lock:
            self._jobs[job.id] = job
            self._running[kind] = job.id
            for old in list(self._jobs)[:-_MAX_KEPT]:
                if self._jobs[old].done.is_set():
                    del self._jobs[old]

        def body() -> None:
            try:
                try:
                    job.result = work()
                    job.state = "succeeded"
                except CCCatalogError as exc:
                    job.state, job.error = "failed", str(exc)
                except Exception as exc:  # a job must never die silently
                    job.state, job.error = "failed", f"internal error: {type(exc).__name__}"
                    log.error(
                        "job %s crashed:\n%s", job.id, Verbatim("".join(traceback.format_exception(exc)))
                    )
                job.finished_at = datetime.now(UTC)
                self._save(job, prune=True)  # still under the lock: see the module's docstring
            finally:
                held.release()
                with self._lock:
                    self._running.pop(kind, None)
                job.done.set()

        threading.Thread(target=body, name=f"job-{job.id}", daemon=True).start()
        return job

    def _save(self, job: Job, *, prune: bool = False) -> None:
        if self._store is None:
            return
        try:
            self._store.record_job(job.record())
            if prune:
                self._store.prune_jobs(keep=_MAX_KEPT)
        except StateError as exc:
            if job.state == "running":
                raise  # the job could not even be recorded: do not start it
            # the job ran; only other replicas miss its answer
            log.warning("job %s finished, but its result could not be recorded: %s", job.id, exc)
