"""Cross-process locks (`fcntl.flock`) on files in the data directory; released on any exit path.

flock locks belong to the open file description, so they hold across processes and replicas sharing a
volume, and the kernel drops them when a process dies: no stale lock files to clean up. The holder
writes its pid into the file, so that whoever waits can say for whom.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cccatalog.errors import LockBusy

_POLL_SECONDS = 0.1


@contextmanager
def file_lock(
    path: Path,
    *,
    timeout: float | None,
    what: str,
    on_wait: Callable[[int | None], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on `path`. `timeout=0`: do not wait; `None`: wait forever.

    `on_wait` is called once, with the holder's pid when known, when the lock is busy and we wait.
    Raises LockBusy naming `what` (and the holder) when the lock is not had in time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    holder = lock_holder(fd)
                    by = f" (pid {holder})" if holder else ""
                    waited = "" if not timeout else f" after waiting {timeout:.0f}s"
                    raise LockBusy(f"{what} is locked by another cccatalog process{by}{waited}") from None
                if on_wait is not None and not told:
                    told = True
                    on_wait(lock_holder(fd))
                time.sleep(_POLL_SECONDS)
        with contextlib.suppress(OSError):  # a read-only lock file still locks; the pid is a courtesy
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def shared_file_lock(path: Path) -> Iterator[None]:
    """Hold a shared lock on `path`, beside any other shared holder; waits only while someone holds
    it exclusively (`try_file_lock`), which is brief by design: a sweep of what no holder uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def lock_holder(fd: int) -> int | None:
    """The pid the current holder wrote into the lock file (None when it has not, or not yet)."""
    first = _written(fd)[:1]
    return int(first[0]) if first and first[0].isdigit() else None


def _written(fd: int) -> list[str]:
    """What the holder wrote: its pid, and the owner it named (`try_file_lock`)."""
    try:
        return os.pread(fd, 256, 0).decode("ascii").split()
    except (OSError, UnicodeDecodeError):
        return []


def try_file_lock(path: Path, *, owner: str | None = None) -> int | None:
    """Take the lock on `path` without waiting (writing our pid into it, as `file_lock` does, and
    `owner`, a word naming what holds it): the open descriptor holding it (close it to release the
    lock), or None when another process holds it."""
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
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {owner or ''}".strip().encode() + b"\n", 0)
    return fd


def file_lock_holder(path: Path) -> int | None:
    """The pid the holder of the lock on `path` wrote into it, if any."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return lock_holder(fd)
    finally:
        os.close(fd)


def file_lock_owner(path: Path) -> str | None:
    """The owner the holder of the lock on `path` named (`try_file_lock`), if any."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        words = _written(fd)
    finally:
        os.close(fd)
    return words[1] if len(words) > 1 else None


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
