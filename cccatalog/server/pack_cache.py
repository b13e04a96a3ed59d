"""The pack cache: each distinct upload-pack answer is made once, written to disk, and sent to every
identical request — those arriving while it is being made and those arriving later.

Key (`pack_key`): the repository, its ref fingerprint (`gitmirror.refstate`), the `Git-Protocol` and
`Content-Type` headers and the request, normalised to what decides the answer. Objects are immutable
and every ref change changes the fingerprint, so an entry never goes stale: nothing invalidates it
but age and size. An answer the cache will not keep (its fingerprint is racy or untrusted, or it was
too big last time) is still written to a file of its own, a *spool* nobody joins: its reader sends it
at its own pace while git, done, has freed its slot.

On disk, under a writable directory of its own (never the mirrors, which may be read-only):

- `tmp/<name>.<random>`: an answer being written, `flock`ed by its writer for as long as it lives.
  A temporary file nobody holds a lock on belongs to a writer that died (SIGKILL, power loss): it is
  deleted by the next sweep and never served.
- `entries/<name>`: finished answers, renamed into place only after the backend exited 0 with a 200.
  Each is `magic, head length, head (status and headers as JSON), body, body length, end magic`; an
  entry whose end does not check out (a crash before the data reached the disk) is deleted, not sent.

The bound (`serve.pack_cache_mb`) covers every byte the directory holds for this process: finished
entries, answers and spools being written, and deleted files that requests still send (evicted, or
never kept), until the last of them is done. A writer reserves room before it writes (evicting least
recently used entries, by file mtime touched on use); when there is none, its answer goes direct
(`pack_entry`) and is not kept. An answer past half the bound is never kept. Two processes sharing
the directory share finished entries (the rename is atomic), not answers in progress.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cccatalog.server.pack_entry import END, TAIL, Entry, Finished, Reader, State, read_entry

log = logging.getLogger("cccatalog.serve")

_BLOCK = 4096  # what the smallest file costs on disk; reservations are in whole blocks
_MAX_STEP = 1024 * 1024  # a writer reserves at most this much ahead
_SWEEP_EVERY = 60.0  # seconds between looks for files of writers that died (another process's)
_WARN_EVERY = 60.0
_REMEMBERED_OVERSIZE = 4096
# Write on second sight (GitLab measured most pack-objects cache entries never read again): a key is
# remembered this long after it was first asked for, and this many keys at most.
_SIGHT_WINDOW = 600.0
_REMEMBERED_SIGHTS = 65536


@dataclass(slots=True)
class _Held:
    """A cache file this process has open: its readers, its size, whether it is listed in `entries/`
    (counted as finished) or not (counted as live), and whether its writer still runs."""

    readers: int
    size: int
    listed: bool
    writing: bool = False


class PackCache:
    """Files on disk under `directory`, at most `max_bytes` of them, and the answers being written."""

    def __init__(self, directory: Path, max_bytes: int, *, second_sight: bool = False) -> None:
        self.directory = directory
        self.entries = directory / "entries"
        self.tmp = directory / "tmp"
        self.entries.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 2
        self._step = max(_BLOCK, min(_MAX_STEP, max_bytes // 32 // _BLOCK * _BLOCK))
        self._lock = threading.Lock()
        self._inflight: dict[str, Entry] = {}
        self._oversize: OrderedDict[str, None] = OrderedDict()
        self.second_sight = second_sight
        self._seen: OrderedDict[str, float] = OrderedDict()  # keys seen once, when (monotonic)
        self._finished_bytes = 0  # listed in entries/ (from the last scan, and publishes since)
        self._live_bytes = 0  # reserved by writers, or files not listed that requests still hold
        self._held: dict[int, _Held] = {}  # by inode
        self.hits = 0  # answered from a finished entry
        self.joined = 0  # joined an answer being written
        self.made = 0  # answers git made into the cache's files (entries and spools)
        self.evicted = 0
        self.bypassed = 0  # answers that went direct: no room within the bound, or a write failed
        self._swept = -_SWEEP_EVERY  # the first make_room sweeps
        self._warned = -_WARN_EVERY
        self.make_room()

    # --- finding and joining ---------------------------------------------------------------------

    def is_oversize(self, name: str) -> bool:
        with self._lock:
            return name in self._oversize

    def open(self, name: str | None, *, keep: bool = True) -> Finished | Reader:
        """A finished entry, or a reader of the answer being written under `name` (a new one if there is
        none, whose `leader` starts the writer). `name` None: a spool of its own, never joined or kept.
        Raises OSError when the directory cannot be written."""
        with self._lock:
            entry = self._inflight.get(name) if name else None
            if entry is not None and not entry.cancelled and not entry.direct:
                if entry.first_sight:  # seen again while it is written: worth keeping after all
                    entry.first_sight = False
                    entry.keep = name not in self._oversize
                entry.readers += 1
                self._held[entry.ino].readers += 1
                self.joined += 1
                return Reader(entry, os.dup(entry.fd), False, self._detach, entry.register())
            if name and keep and (finished := self._open_finished(name)) is not None:
                held = self._held.setdefault(finished.ino, _Held(0, max(finished.size, _BLOCK), True))
                held.readers += 1
                self.hits += 1
                return finished
            path = self.tmp / f"{name or 'spool'}.{secrets.token_hex(6)}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "a live writer holds this file"
                reader_fd = os.dup(fd)
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            first_sight = bool(name and keep and self.second_sight and self._first_sight(name))
            entry = Entry(name or "", fd, path, keep=keep and bool(name) and not first_sight)
            entry.first_sight = first_sight
            entry.readers = 1
            self._held[entry.ino] = _Held(1, 0, False, writing=True)
            if name:
                self._inflight[name] = entry
            self.made += 1
            return Reader(entry, reader_fd, True, self._detach, entry.register())

    def _first_sight(self, name: str) -> bool:
        """Whether `name` was not asked for in the last `_SIGHT_WINDOW` seconds (lock held); it is
        remembered now, so the next request for it within the window is its second sight."""
        now = time.monotonic()
        seen = self._seen.pop(name, None)
        if seen is not None and now - seen <= _SIGHT_WINDOW:
            return False
        self._seen[name] = now
        while len(self._seen) > _REMEMBERED_SIGHTS:
            self._seen.popitem(last=False)
        return True

    def _open_finished(self, name: str) -> Finished | None:
        try:
            fd = os.open(self.entries / name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return read_entry(fd)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.warning("pack cache: deleting damaged entry %s: %s", name, exc)
            with suppress(OSError):
                (self.entries / name).unlink()
            return None

    def release(self, finished: Finished) -> None:
        """A request is done sending a finished entry."""
        with suppress(OSError):
            os.close(finished.fd)
        with self._lock:
            self._unhold(finished.ino)

    def _unhold(self, ino: int) -> None:
        """One holder fewer (lock held); a file nobody holds any more and no longer listed frees its
        bytes of the bound."""
        held = self._held.get(ino)
        if held is not None:
            held.readers -= 1
            self._free_if_unheld(ino, held)

    def _free_if_unheld(self, ino: int, held: _Held) -> None:
        if held.readers <= 0 and not held.writing:
            del self._held[ino]
            if not held.listed:
                self._live_bytes -= held.size

    def _detach(self, entry: Entry) -> None:
        with self._lock:
            self._unhold(entry.ino)
            entry.readers -= 1
            if entry.readers or entry.state not in (State.PENDING, State.STREAMING):
                return
            entry.cancelled = True  # nobody wants it any more: the writer stops git
            if self._inflight.get(entry.name) is entry:
                del self._inflight[entry.name]
        with entry.cond:
            entry.cond.notify_all()  # a writer waiting for readers to catch up

    # --- writing (called by the writer, `pack_writer`) ---------------------------------------------

    def room(self, entry: Entry, count: int) -> int:
        """Bytes (up to `count`) `entry`'s file may take now, reserving more of the bound in steps when
        needed (evicting for it when there is none); 0 when the bound has no room. A file keeps room
        for its end marker."""
        for evict in (False, True):
            if evict:
                self.make_room(need=self._step)
            with self._lock:
                free = entry.reserved - entry.size - TAIL.size
                if free < count:
                    spare = self.max_bytes - self._finished_bytes - self._live_bytes
                    take = min(-(-(count - free) // self._step), spare // self._step) * self._step
                    if take > 0:
                        self._live_bytes += take
                        entry.reserved += take
                        free += take
                if free > 0:
                    return min(count, free)
        return 0

    def grew(self, entry: Entry, count: int) -> None:
        """`count` more bytes of `entry` are in its file (within its reservation)."""
        with self._lock:
            entry.size += count
            if (entry.keep or entry.first_sight) and entry.size - entry.body_start > self.max_entry:
                entry.keep = entry.first_sight = False  # past the cap: finished for its readers, never kept
                self._remember_oversize(entry.name)

    def _remember_oversize(self, name: str) -> None:
        if name:
            self._oversize[name] = None
            while len(self._oversize) > _REMEMBERED_OVERSIZE:
                self._oversize.popitem(last=False)

    def go_direct(self, entry: Entry, why: str) -> None:
        """`entry` can take no more of the disk: the rest of its answer goes to its readers from memory,
        it is not kept, and nobody joins it any more (the start of it may be gone from memory)."""
        with self._lock:
            entry.keep = False
            self.bypassed += 1
            if self._inflight.get(entry.name) is entry:
                del self._inflight[entry.name]
            now = time.monotonic()
            warn = now - self._warned > _WARN_EVERY
            if warn:
                self._warned = now
        with entry.cond:
            entry.direct = True
            entry.cond.notify_all()
        if warn:
            log.warning(
                "pack cache: %s; the answer goes to its readers without the cache (said once a minute)", why
            )

    def publish(self, entry: Entry) -> bool:
        """Rename a whole answer into `entries/`; False when it cannot be (it is then let go)."""
        try:
            os.pwrite(entry.fd, TAIL.pack(entry.file_end - entry.body_start, END), entry.file_end)
            os.rename(entry.path, self.entries / entry.name)
        except OSError as exc:
            log.warning("pack cache: cannot keep %s: %s", entry.path, exc)
            return False
        with self._lock:
            entry.size += TAIL.size
        return True

    def retire(self, entry: Entry, *, published: bool) -> None:
        """The writer is done: forget the entry, give back what it reserved and did not use, delete its
        file unless published (its readers keep their descriptors), close it."""
        if not published:
            with suppress(FileNotFoundError):
                entry.path.unlink()
        os.close(entry.fd)
        with self._lock:
            if self._inflight.get(entry.name) is entry:
                del self._inflight[entry.name]
            size = -(-entry.size // _BLOCK) * _BLOCK
            self._live_bytes -= entry.reserved - size
            entry.reserved = size
            held = self._held.get(entry.ino)
            if held is not None:
                held.size, held.writing = size, False
                if published:
                    held.listed = True
                    self._live_bytes -= size
                    self._finished_bytes += size
                self._free_if_unheld(entry.ino, held)
        if published:
            self._check_bound()

    def _check_bound(self) -> None:
        with self._lock:
            over = self._finished_bytes + self._live_bytes > self.max_bytes and self._finished_bytes > 0
        if over:
            self.make_room()

    # --- the bound ---------------------------------------------------------------------------------

    def make_room(self, *, need: int = 0) -> None:
        """Delete least recently used entries nobody here is sending until `need` more bytes fit in the
        bound, and (at most once a minute) files of writers that died.

        Reads the directory rather than trusting memory: another process may share it.
        """
        now = time.monotonic()
        if now - self._swept > _SWEEP_EVERY:
            self._swept = now
            for path in self.tmp.iterdir():
                _delete_if_abandoned(path)
        found = []
        for path in self.entries.iterdir():
            with suppress(OSError):
                st = path.stat()
                found.append((st.st_mtime, max(st.st_blocks * 512, st.st_size, _BLOCK), st.st_ino, path))
        found.sort()
        total = sum(size for _, size, _, _ in found)
        for _, size, ino, path in found:
            with self._lock:
                if total + self._live_bytes + need <= self.max_bytes:
                    break
                held = self._held.get(ino)
                if held is not None and held.readers:
                    continue  # being sent: deleting it would free nothing until its readers are done
            with suppress(FileNotFoundError):
                path.unlink()
                self.evicted += 1
            total -= size
        with self._lock:
            self._finished_bytes = total

    def counted_bytes(self) -> int:
        """What the bound counts now: finished entries, and the room writers and readers still hold."""
        with self._lock:
            return self._finished_bytes + self._live_bytes

    def disk_bytes(self) -> int:
        """What the cache's files take now (finished entries and answers being written), in whole
        blocks as the bound counts them: an empty file (an answer that went direct before its first
        byte) takes none."""
        total = 0
        for folder in (self.entries, self.tmp):
            for path in folder.iterdir():
                with suppress(OSError):
                    total += -(-path.stat().st_size // _BLOCK) * _BLOCK
        return total


def _delete_if_abandoned(path: Path) -> None:
    """A writer holds its file's lock while it lives; a file nobody holds belongs to a dead one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # a live writer
    else:
        with suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)
