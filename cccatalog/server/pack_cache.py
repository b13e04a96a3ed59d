"""The pack cache: each distinct upload-pack answer is made once, written to disk, and sent to every
identical request — those arriving while it is being made and those arriving later.

Key (`pack_key`): the repository, its ref fingerprint (`gitmirror.refstate`; a racy or untrusted one
means the request is not cached), the `Git-Protocol` and `Content-Type` headers and the request,
normalised to what decides the answer. Objects are immutable and every ref change changes the
fingerprint, so an entry never goes stale: nothing invalidates it but age and size.

On disk, under a writable directory of its own (never the mirrors, which may be read-only):

- `tmp/<name>.<random>`: an answer being written, `flock`ed by its writer for as long as it lives.
  A temporary file nobody holds a lock on belongs to a writer that died (SIGKILL, power loss): it is
  deleted by the next sweep and never served.
- `entries/<name>`: finished answers, renamed into place only after the backend exited 0 with a 200.
  Each is `magic, head length, head (status and headers as JSON), body, body length, end magic`; an
  entry whose end does not check out (a crash before the data reached the disk) is deleted, not sent.

In memory, per process: the answers being written (`Entry`), so identical requests join the one
writer instead of starting git; a request joining follows the growing file as the writer publishes its
progress. Two processes sharing the directory share finished entries (the rename is atomic) but not
answers in progress. The bound (`serve.pack_cache_mb`) covers finished entries and answers being
written, least recently used (file mtime, touched on use) out first; an answer past half the bound is
not kept — it finishes for the clients already reading it, its file is deleted when they are done, and
later identical requests bypass the cache. A file deleted while readers still send it (evicted, or
never kept) stays on disk until the last of them is done: while such files hold more than the bound,
new answers bypass the cache (`Overfull`), so slow readers cannot fill the disk with them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import select
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cccatalog.gitmirror.http_backend import BackendOutcome, ClientGone, ResponseSink
from cccatalog.server import relay
from cccatalog.server.admission import Admission, ClientLeft, Refused

log = logging.getLogger("cccatalog.serve")

_FORMAT = 1
_MAGIC = b"CCPACK1\n"
_END = b"CCPKEND1"
_HEAD = struct.Struct(">8sI")  # magic, length of the JSON head that follows
_TAIL = struct.Struct(">Q8s")  # body length, end magic
_MAX_HEAD = 64 * 1024
_BLOCK = 4096  # what the smallest entry costs on disk
_BATCH = 1024 * 1024
_NOTIFY_EVERY = 1024 * 1024  # followers are woken per this much data, or when the pipe runs dry
_COALESCE_BELOW = 256 * 1024
# Past the first MiB (a pack, not an advertisement), a pipe holding little is given this long to fill:
# fewer, larger reads and wake-ups, as in `relay` (whose docstring has the measurements).
_COALESCE_SECONDS = 0.0005
_POLL_MS = 250  # how often a writer with nothing to read checks that someone still wants its answer
_SWEEP_EVERY = 60.0  # seconds between looks for files of writers that died (another process's)
_TOUCH_AFTER = 60.0  # seconds: an entry's mtime (its LRU clock) is refreshed at most this often
_REMEMBERED_OVERSIZE = 4096


class Overfull(Exception):
    """Readers hold more deleted cache files open than the bound: answer this request without the cache."""


@dataclass(slots=True)
class _Held:
    """A cache file requests of this process have open: how many, its size, and whether the cache still
    counts it (listed in `entries/`, or being written to be kept)."""

    readers: int
    size: int
    counted: bool = True


class State(Enum):
    PENDING = "pending"  # queued for a slot, or git has not answered yet
    STREAMING = "streaming"  # the head is known; the body grows
    ENDED = "ended"  # the answer is whole
    CUT = "cut"  # the backend was killed or failed mid-answer: readers must not end it cleanly
    REFUSED = "refused"  # no admission slot: readers answer 503
    FAILED = "failed"  # nothing was produced: readers answer 502


class Entry:
    """One answer being written: its file, how far it got, and how many readers it has."""

    def __init__(self, name: str, fd: int, path: Path) -> None:
        self.name = name
        self.fd = fd
        self.path = path
        self.ino = os.fstat(fd).st_ino
        self.cond = threading.Condition()
        self.state = State.PENDING
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body_start = 0
        self.end = 0  # file offset where the body written so far ends
        self.refusal: Refused | None = None
        self.readers = 0  # guarded by the cache's lock
        self.cancelled = False  # every reader left before the answer was whole
        self.keep = True  # published when whole, unless it grew past the entry cap
        self.size = 0

    def _set(self, state: State) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()


@dataclass(slots=True)
class Reader:
    """A request's hold on an entry: its own descriptor of the file, given back with `close()`."""

    entry: Entry
    fd: int
    leader: bool  # this request created the entry: it starts the writer
    cache: PackCache

    def close(self) -> None:
        with suppress(OSError):
            os.close(self.fd)
        self.cache._detach(self.entry)


@dataclass(frozen=True, slots=True)
class Finished:
    """A whole entry opened for sending: given back with `PackCache.release`."""

    fd: int
    ino: int
    size: int
    status: int
    headers: list[tuple[str, str]]
    body_start: int
    body_length: int


class PackCache:
    """Entries on disk under `directory`, at most `max_bytes` of them, and the answers being written."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.entries = directory / "entries"
        self.tmp = directory / "tmp"
        self.entries.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 2
        self._lock = threading.Lock()
        self._inflight: dict[str, Entry] = {}
        self._oversize: OrderedDict[str, None] = OrderedDict()
        self._finished_bytes = 0
        self._inflight_bytes = 0
        self._held: dict[int, _Held] = {}  # by inode
        self.hits = 0  # answered from a finished entry
        self.joined = 0  # joined an answer being written
        self.made = 0  # answers git made for the cache
        self.evicted = 0
        self.bypassed = 0  # requests answered without the cache because deleted files were held
        self._swept = -_SWEEP_EVERY  # the first make_room sweeps
        self.make_room()

    # --- finding and joining ---------------------------------------------------------------------

    def is_oversize(self, name: str) -> bool:
        with self._lock:
            return name in self._oversize

    def open(self, name: str) -> Finished | Reader:
        """A finished entry, or a reader of the answer being written (a new one if there is none, whose
        `leader` starts the writer). Raises OSError when the directory cannot be written, `Overfull`
        when a new answer would take disk the bound no longer has.
        """
        with self._lock:
            entry = self._inflight.get(name)
            if entry is not None and not entry.cancelled:
                entry.readers += 1
                self._held[entry.ino].readers += 1
                self.joined += 1
                return Reader(entry, os.dup(entry.fd), False, self)
            if (finished := self._open_finished(name)) is not None:
                held = self._held.setdefault(finished.ino, _Held(0, finished.size))
                held.readers += 1
                self.hits += 1
                return finished
            if sum(h.size for h in self._held.values() if not h.counted) >= self.max_bytes:
                self.bypassed += 1
                raise Overfull()
            path = self.tmp / f"{name}.{secrets.token_hex(6)}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "a live writer holds this file"
                reader_fd = os.dup(fd)
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            entry = Entry(name, fd, path)
            entry.readers = 1
            self._held[entry.ino] = _Held(1, 0)
            self._inflight[name] = entry
            self.made += 1
            return Reader(entry, reader_fd, True, self)

    def _open_finished(self, name: str) -> Finished | None:
        try:
            fd = os.open(self.entries / name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            found = _read_entry(fd)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.warning("pack cache: deleting damaged entry %s: %s", name, exc)
            with suppress(OSError):
                (self.entries / name).unlink()
            return None
        return found

    def release(self, finished: Finished) -> None:
        """A request is done sending a finished entry."""
        with suppress(OSError):
            os.close(finished.fd)
        with self._lock:
            self._unhold(finished.ino)

    def _unhold(self, ino: int) -> None:
        held = self._held.get(ino)
        if held is not None:
            held.readers -= 1
            if held.readers <= 0:
                del self._held[ino]

    def _detach(self, entry: Entry) -> None:
        with self._lock:
            self._unhold(entry.ino)
            entry.readers -= 1
            if entry.readers or entry.state in (State.ENDED, State.CUT, State.FAILED, State.REFUSED):
                return
            entry.cancelled = True  # nobody wants it any more: the writer stops git
            if self._inflight.get(entry.name) is entry:
                del self._inflight[entry.name]

    # --- writing ---------------------------------------------------------------------------------

    def produce(
        self,
        entry: Entry,
        *,
        admission: Admission,
        client: str,
        run: Callable[[ResponseSink], BackendOutcome],
        what: str,
    ) -> None:
        """Write `entry`: wait for a slot (while someone still reads), run the backend into the file,
        free the slot the moment git exits, then publish the entry or delete it."""
        sink = _EntrySink(self, entry)
        published = False
        try:
            try:
                slot = admission.acquire(client, gone=lambda: entry.cancelled)
            except Refused as exc:
                entry.refusal = exc
                return entry._set(State.REFUSED)
            except ClientLeft:
                return entry._set(State.CUT)
            with slot:
                outcome = run(sink)
            if outcome.killed:
                log.warning("git backend for %s killed: %s", what, outcome.killed)
            if entry.state is State.PENDING:
                return entry._set(State.FAILED)
            if not sink.finished:  # killed mid-answer: readers must see it cut off
                return entry._set(State.CUT)
            entry._set(State.ENDED)
            if sink.complete and not outcome.killed and entry.status == 200 and entry.keep:
                self._publish(entry)
                published = True
        except Exception:
            log.exception("pack cache: writing the answer for %s failed", what)
            entry._set(State.CUT if entry.state is not State.PENDING else State.FAILED)
        finally:
            self._retire(entry, published=published)

    def _publish(self, entry: Entry) -> None:
        os.pwrite(entry.fd, _TAIL.pack(entry.end - entry.body_start, _END), entry.end)
        os.rename(entry.path, self.entries / entry.name)
        with self._lock:
            self._finished_bytes += max(entry.size, _BLOCK)

    def _retire(self, entry: Entry, *, published: bool) -> None:
        """The writer is done: forget the entry, delete its file unless published, close it."""
        with self._lock:
            if self._inflight.get(entry.name) is entry:
                del self._inflight[entry.name]
            if entry.keep:
                self._inflight_bytes -= entry.size
            if not published and (held := self._held.get(entry.ino)):
                held.counted = False  # deleted below; its readers still hold it
        with suppress(FileNotFoundError):
            entry.path.unlink()  # gone already when published; readers keep their descriptors
        os.close(entry.fd)
        self._check_bound()

    def _grew(self, entry: Entry, count: int) -> None:
        with self._lock:
            entry.size += count
            if held := self._held.get(entry.ino):
                held.size = entry.size
            if entry.keep:
                self._inflight_bytes += count
                if entry.size - entry.body_start > self.max_entry:
                    entry.keep = False  # past the cap: finished for its readers, never kept
                    self._inflight_bytes -= entry.size
                    if held:
                        held.counted = False
                    self._oversize[entry.name] = None
                    while len(self._oversize) > _REMEMBERED_OVERSIZE:
                        self._oversize.popitem(last=False)
        self._check_bound()

    def _check_bound(self) -> None:
        """Make room when over the bound and there is something to evict: while answers being written
        are all there is, reading the directory again would find nothing (and cost a scan per MiB)."""
        with self._lock:
            over = self._finished_bytes + self._inflight_bytes > self.max_bytes and self._finished_bytes > 0
        if over:
            self.make_room()

    # --- the bound ---------------------------------------------------------------------------------

    def make_room(self) -> None:
        """Delete least recently used entries until within the bound, and (at most once a minute) files
        of writers that died.

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
                found.append((st.st_mtime, max(st.st_size, _BLOCK), st.st_ino, path))
        found.sort()
        total = sum(size for _, size, _, _ in found)
        with self._lock:
            inflight = self._inflight_bytes
        for _, size, ino, path in found:
            if total + inflight <= self.max_bytes:
                break
            with suppress(FileNotFoundError):
                path.unlink()
                self.evicted += 1
                with self._lock:
                    if held := self._held.get(ino):
                        held.counted = False
            total -= size
        with self._lock:
            self._finished_bytes = total

    def disk_bytes(self) -> int:
        """What the cache's files take now (finished entries and answers being written)."""
        total = 0
        for folder in (self.entries, self.tmp):
            for path in folder.iterdir():
                with suppress(OSError):
                    total += max(path.stat().st_size, _BLOCK)
        return total


def touch(fd: int) -> None:
    """Mark a finished entry as used (its mtime is the LRU clock), at most once a minute."""
    with suppress(OSError):
        if time.time() - os.fstat(fd).st_mtime > _TOUCH_AFTER:
            os.utime(fd)


def _read_entry(fd: int) -> Finished:
    size = os.fstat(fd).st_size
    start = os.pread(fd, min(size, _MAX_HEAD), 0)
    if len(start) < _HEAD.size:
        raise ValueError("too short")
    magic, head_length = _HEAD.unpack_from(start)
    body_start = _HEAD.size + head_length
    if magic != _MAGIC or body_start > len(start) or size < body_start + _TAIL.size:
        raise ValueError("not a cache entry")
    body_length, end = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
    if end != _END or body_start + body_length + _TAIL.size != size:
        raise ValueError("incomplete")
    head = json.loads(start[_HEAD.size : body_start])
    headers = [(str(k), str(v)) for k, v in head["headers"]]
    touch(fd)
    ino = os.fstat(fd).st_ino
    return Finished(fd, ino, size, int(head["status"]), headers, body_start, body_length)


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


class _EntrySink:
    """The backend's answer, into the entry's file; readers are woken as it grows."""

    def __init__(self, cache: PackCache, entry: Entry) -> None:
        self.cache = cache
        self.entry = entry
        self.finished = False  # the bridge ended the answer (a whole one, or its own 502)
        self.complete = False  # ... and git exited 0
        self._unnotified = 0

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        e = self.entry
        head = json.dumps({"status": status, "headers": headers}).encode()
        block = _HEAD.pack(_MAGIC, len(head)) + head
        self._write_all(memoryview(block))
        self.cache._grew(e, len(block))
        with e.cond:
            e.status, e.headers = status, list(headers)
            e.body_start = e.end = len(block)
            e.state = State.STREAMING
            e.cond.notify_all()

    def write(self, data: bytes) -> None:
        self._append(memoryview(data))
        self._notify()

    def stream_from(self, fd: int) -> int:
        e = self.entry
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        total = 0
        while True:
            if e.cancelled:
                raise ClientGone()
            events = poller.poll(_POLL_MS)
            if not events:
                self._notify()
                continue
            if total >= _BATCH and not events[0][1] & select.POLLHUP and relay.buffered(fd) < _COALESCE_BELOW:
                time.sleep(_COALESCE_SECONDS)
            got = self._splice(fd)
            if not got:
                break
            total += got
            self._unnotified += got
            if self._unnotified >= _NOTIFY_EVERY or not relay.buffered(fd):
                self._notify()
        self._notify()
        return total

    def finish(self, *, complete: bool = True) -> None:
        self.finished, self.complete = True, complete
        self._notify()

    def _splice(self, pipe: int) -> int:
        """Move what the pipe holds into the file in the kernel (`splice(2)`): one copy fewer than
        reading it into Python first. Returns the bytes moved, 0 at the end of the answer."""
        e = self.entry
        try:
            got = os.splice(pipe, e.fd, _BATCH, offset_dst=e.end)
        except OSError as exc:
            log.error("pack cache: cannot write %s: %s", e.path, exc)
            raise ClientGone() from exc  # the backend is stopped; its readers get a cut answer
        if got:
            self.cache._grew(e, got)
            e.end += got
        return got

    def _append(self, data: memoryview) -> None:
        if self.entry.cancelled:
            raise ClientGone()
        self._write_all(data)
        self.cache._grew(self.entry, len(data))
        self.entry.end += len(data)  # read by readers under the condition, after a notify

    def _write_all(self, data: memoryview) -> None:
        offset = self.entry.end if self.entry.state is not State.PENDING else 0
        while data:
            try:
                written = os.pwrite(self.entry.fd, data, offset)
            except OSError as exc:
                log.error("pack cache: cannot write %s: %s", self.entry.path, exc)
                raise ClientGone() from exc  # the backend is stopped; its readers get a cut answer
            data, offset = data[written:], offset + written

    def _notify(self) -> None:
        self._unnotified = 0
        with self.entry.cond:
            self.entry.cond.notify_all()
