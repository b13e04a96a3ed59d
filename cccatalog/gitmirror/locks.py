"""Cross-process locks (`fcntl.flock`) on files in the data directory; released on any exit path.

flock locks belong to the open file description, so they hold across processes and replicas sharing a
volume, and the kernel drops them when a process dies: no stale lock files to clean up.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cccatalog.errors import LockBusy

_POLL_SECONDS = 0.1


@contextmanager
def file_lock(path: Path, *, timeout: float | None, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`. `timeout=0`: do not wait; `None`: wait forever.

    Raises LockBusy naming `what` when the lock is not had in time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    waited = "" if not timeout else f" after waiting {timeout:.0f}s"
                    raise LockBusy(f"{what} is locked by another cccatalog process{waited}") from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_file_lock(path: Path) -> int | None:
    """Take the lock on `path` without waiting: the open descriptor holding it (close it to release
    the lock), or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_lock_is_held(path: Path) -> bool:
    """Whether some open file description (this process's included) holds the lock on `path`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False
