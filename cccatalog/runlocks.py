"""The locks that keep two runs of one kind apart, whoever starts them (a cron `sync`, serve's
scheduler, an admin job, another replica), and that make one replica the scheduler's leader.

One interface, two implementations, chosen by where the state lives (`Locks.for_state`):

- an SQLite state: `flock` on files in the `locks/` directory beside the state file. Every process
  that can open the state file can open those files; the kernel drops a lock when its process dies.
- a PostgreSQL state: session-level advisory locks (`pg_try_advisory_lock`), each held by a
  connection of its own for as long as the run. Replicas reach the database, not each other's disks;
  the server drops a lock when the connection holding it ends (the process died, the network broke).

What is locked where: image polls write only the state, so every replica shares one `sync-images`
lock and one `scheduler-images` leader; image mirroring (`sync-mirror`, `scheduler-mirror`) too.
Git runs write a mirror volume, so their locks are named after the volume (`sync-git:<volume>`):
replicas with a disk each sync their own, replicas sharing one ReadWriteMany volume take turns. The
per-repo locks inside a git run stay `flock` on the volume itself (see `gitmirror.locks`), whichever
the state.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cccatalog.errors import LockBusy
from cccatalog.gitmirror.locks import file_lock_holder, file_lock_is_held, file_lock_owner, try_file_lock

if TYPE_CHECKING:
    from cccatalog.catalog.postgres_engine import PostgresDatabase
    from cccatalog.catalog.store import Store
    from cccatalog.config import Config

_POLL_SECONDS = 0.2


class Held(ABC):
    """A lock this process holds until `release`."""

    @abstractmethod
    def release(self) -> None: ...

    def alive(self) -> bool:
        """Still held? (A database lock is lost with its connection.)"""
        return True


class RunLock(ABC):
    """A named lock over every process (and replica) that shares one state."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name  # what `Locks.held` takes: the lock's file, or its advisory lock name
        self.what = what  # for messages: "the images sync"

    @abstractmethod
    def try_acquire(self, *, owner: str | None = None) -> Held | None:
        """Take the lock without waiting; None when another process holds it. `owner` (one word: a
        job's id) is published with the lock while it is held, for `owner()` to read."""

    @abstractmethod
    def is_held(self) -> bool:
        """Whether anyone holds the lock now (this process included)."""

    def holder(self) -> int | None:
        """The pid of the process holding the lock, where the lock says (a lock file does)."""
        return None

    @abstractmethod
    def owner(self) -> str | None:
        """The `owner` its holder published (None: not held, or held without one)."""

    def acquire(
        self,
        *,
        timeout: float | None,
        on_wait: Callable[[int | None], None] | None = None,
        owner: str | None = None,
    ) -> Held:
        """Take the lock, waiting up to `timeout` seconds (0: not at all; None: forever). `on_wait` is
        called once, with the holder's pid when known, when the lock is busy and we wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while (held := self.try_acquire(owner=owner)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                holder = self.holder()
                by = f" (pid {holder})" if holder else ""
                waited = "" if not timeout else f" after waiting {timeout:.0f}s"
                raise LockBusy(f"{self.what} is locked by another cccatalog process{by}{waited}")
            if on_wait is not None and not told:
                told = True
                on_wait(self.holder())
            time.sleep(_POLL_SECONDS)
        return held

    @contextmanager
    def hold(
        self, *, timeout: float | None, on_wait: Callable[[int | None], None] | None = None
    ) -> Iterator[None]:
        held = self.acquire(timeout=timeout, on_wait=on_wait)
        try:
            yield
        finally:
            held.release()


class _HeldFile(Held):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:  # a descriptor closed twice could be another file's by then
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


class FileRunLock(RunLock):
    """`flock` on one file (created on first use)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(str(path), what)
        self.path = path

    def try_acquire(self, *, owner: str | None = None) -> Held | None:
        fd = try_file_lock(self.path, owner=owner)
        return None if fd is None else _HeldFile(fd)

    def is_held(self) -> bool:
        return file_lock_is_held(self.path)

    def holder(self) -> int | None:
        return file_lock_holder(self.path)

    def owner(self) -> str | None:
        return file_lock_owner(self.path) if self.is_held() else None


class _HeldAdvisory(Held):
    def __init__(self, db: PostgresDatabase, name: str, conn: Any) -> None:
        self._db, self._name, self._conn = db, name, conn
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._db.unlock(self._name, conn)

    def alive(self) -> bool:
        conn = self._conn
        return conn is not None and self._db.lock_is_alive(conn)


class AdvisoryRunLock(RunLock):
    """A PostgreSQL session-level advisory lock, on a connection of its own while held."""

    def __init__(self, db: PostgresDatabase, name: str, what: str) -> None:
        super().__init__(name, what)
        self.db = db

    def try_acquire(self, *, owner: str | None = None) -> Held | None:
        conn = self.db.try_lock(self.name, owner=owner)
        return None if conn is None else _HeldAdvisory(self.db, self.name, conn)

    def is_held(self) -> bool:
        return self.db.lock_is_held(self.name)

    def owner(self) -> str | None:
        return self.db.lock_owner(self.name)


@dataclass(frozen=True)
class Locks:
    """The run locks (`run`) and scheduler leader locks (`leader`) of one state."""

    directory: Path  # of the lock files of an SQLite state
    database: PostgresDatabase | None = None
    volume: str = ""  # the mirror volume git locks are named after (PostgreSQL)

    @classmethod
    def for_state(cls, config: Config, store: Store | None) -> Locks:
        from cccatalog.catalog.postgres_engine import PostgresDatabase

        directory = config.state.local_dir / "locks"
        if store is not None and isinstance(store.database, PostgresDatabase):
            return cls(directory, store.database, store.volume)
        return cls(directory)

    def _lock(self, name: str, what: str) -> RunLock:
        if self.database is not None:
            return AdvisoryRunLock(self.database, name, what)
        return FileRunLock(self.directory / f"{name}.lock", what)

    def _scoped(self, half: str) -> str:
        return f"{half}:{self.volume}" if half == "git" and self.database is not None else half

    def run(self, half: str) -> RunLock:
        """The lock of one half of a sync: `git` (per mirror volume) or `images` (one for all)."""
        return self._lock(f"sync-{self._scoped(half)}", f"the {half} sync")

    def owner(self, name: str) -> str | None:
        """The owner the holder of the lock `name` published (see `RunLock.try_acquire`)."""
        if self.database is not None:
            return AdvisoryRunLock(self.database, name, name).owner()
        return FileRunLock(Path(name), name).owner()

    def held(self, name: str) -> bool:
        """Whether the lock `name` (a `RunLock.name` of this state) is held by anyone now."""
        if self.database is not None:
            return AdvisoryRunLock(self.database, name, name).is_held()
        return FileRunLock(Path(name), name).is_held()

    def leader(self, half: str) -> RunLock:
        """Whoever holds it runs the scheduled syncs of `half`; the others wait to take over."""
        return self._lock(f"scheduler-{self._scoped(half)}", f"the {half} scheduler")
