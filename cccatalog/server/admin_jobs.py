"""Background sync jobs for the admin API and serve's scheduler: one job of a kind at a time, across
processes, by the same run lock the `sync` command takes.

The predecessor ran a sync inside the request for up to 15 minutes per repo; here a request starts
a job and answers 202 with its id at once (or waits, when asked to, as the predecessor did).
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cccatalog.errors import CCCatalogError, LockBusy
from cccatalog.gitmirror.locks import file_lock

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


class JobRunner:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, kind: str, lock: Path, work: Callable[[], dict[str, Any]]) -> Job:
        """Start `work` in a thread holding `lock`. Raises LockBusy when a job of `kind` runs anywhere."""
        with self._lock:
            if kind in self._running:
                raise LockBusy(f"a {kind} job is already running (job {self._running[kind]})")
        stack = ExitStack()
        stack.enter_context(file_lock(lock, timeout=0, what=f"the {kind} run"))  # another process?
        with self._lock:
            job = Job(id=f"{kind}-{next(self._ids)}", kind=kind)
            self._jobs[job.id] = job
            self._running[kind] = job.id
            for old in list(self._jobs)[:-_MAX_KEPT]:
                if self._jobs[old].done.is_set():
                    del self._jobs[old]

        def body() -> None:
            try:
                with stack:
                    job.result = work()
                job.state = "succeeded"
            except CCCatalogError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # a job must never die silently
                job.state, job.error = "failed", f"internal error: {type(exc).__name__}"
                log.error("job %s crashed:\n%s", job.id, "".join(traceback.format_exception(exc)))
            finally:
                job.finished_at = datetime.now(UTC)
                with self._lock:
                    self._running.pop(kind, None)
                job.done.set()

        threading.Thread(target=body, name=f"job-{job.id}", daemon=True).start()
        return job
