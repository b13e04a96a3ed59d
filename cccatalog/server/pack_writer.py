"""The writer of one pack answer: waits for an admission slot, runs the backend into the answer's file
at git's speed, frees the slot the moment git exits, then publishes the entry or lets it go.

Every byte goes to the file only after the cache reserved room for it within its bound. When there is
no room, or a write fails (a full disk, a file size limit), the writer goes direct (`pack_entry`):
what is in the file stays readable, the rest of the answer reaches the readers from memory, and
nothing is kept. The answer is whole either way; only then does git pace itself to the slowest
reader, holding its slot, as it would without a cache.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cccatalog.server import relay
from cccatalog.server.admission import Admission, ClientLeft, Refused
from cccatalog.server.cgi import BackendOutcome, ClientGone, ResponseSink
from cccatalog.server.pack_entry import Entry, State, head_block

if TYPE_CHECKING:
    from cccatalog.server.pack_cache import PackCache

log = logging.getLogger("cccatalog.serve")

_BATCH = 1024 * 1024
_NOTIFY_EVERY = 1024 * 1024  # followers are woken per this much data, or when the pipe runs dry
_COALESCE_BELOW = 256 * 1024
# Past the first MiB (a pack, not an advertisement), a pipe holding little is given this long to fill:
# fewer, larger reads and wake-ups, as in `relay` (whose docstring has the measurements).
_COALESCE_SECONDS = 0.0005
_POLL_MS = 250  # how often a writer with nothing to read checks that someone still wants its answer


def produce(
    cache: PackCache,
    entry: Entry,
    *,
    admission: Admission,
    client: str,
    run: Callable[[ResponseSink], BackendOutcome],
    what: str,
) -> None:
    """Write `entry`: wait for a slot (while someone still reads), run the backend, free the slot the
    moment git exits, then publish the entry or delete it."""
    sink = EntrySink(cache, entry)
    published = False
    try:
        try:
            slot = admission.acquire(client, gone=lambda: entry.cancelled)
        except Refused as exc:
            entry.refusal = exc
            return entry.set_state(State.REFUSED)
        except ClientLeft:
            return entry.set_state(State.CUT)
        with slot:
            outcome = run(sink)
        if outcome.killed:
            log.warning("git backend for %s killed: %s", what, outcome.killed)
        if entry.state is State.PENDING:
            return entry.set_state(State.FAILED)
        if not sink.finished:  # killed mid-answer: readers must see it cut off
            return entry.set_state(State.CUT)
        entry.set_state(State.ENDED)
        if sink.complete and not outcome.killed and entry.status == 200 and entry.keep:
            published = cache.publish(entry)
    except Exception:
        log.exception("pack cache: writing the answer for %s failed", what)
        entry.set_state(State.CUT if entry.state is not State.PENDING else State.FAILED)
    finally:
        cache.retire(entry, published=published)


class EntrySink:
    """The backend's answer into the entry's file (or, direct, to its readers); readers are woken as it
    grows."""

    def __init__(self, cache: PackCache, entry: Entry) -> None:
        self.cache = cache
        self.entry = entry
        self.finished = False  # the bridge ended the answer (a whole one, or its own 502)
        self.complete = False  # ... and git exited 0
        self._unnotified = 0

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        e = self.entry
        block = head_block(status, headers)
        whole = self._room(len(block)) == len(block) and self._write(block, 0) == len(block)
        written = len(block) if whole else 0
        if written:
            self.cache.grew(e, written)
        with e.cond:
            e.status, e.headers = status, list(headers)
            if written:
                e.body_start = e.file_end = e.end = written
            e.state = State.STREAMING
            e.cond.notify_all()
        if not written:  # the head is in memory; the whole body will be too
            self._go_direct("no room for a new answer")

    def write(self, data: bytes) -> None:
        e = self.entry
        if e.cancelled:
            raise ClientGone()
        if not e.direct and (room := self._room(len(data))):
            done = self._write(data[:room], e.file_end)
            self._advance(done)
            data = data[done:]
        if data:
            self._go_direct("no room for the rest of an answer")
            self._push(data)
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
            got = self._splice(fd) if not e.direct else self._read(fd)
            if got < 0:
                continue  # it just went direct: the pipe still holds what it had
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
        reading it into Python first. Bytes moved; 0 at the end of the answer, -1 when the file can
        take no more (the entry went direct)."""
        e = self.entry
        room = self._room(min(relay.buffered(pipe), _BATCH) or 1)
        if not room:
            self._go_direct("no room for the rest of an answer")
            return -1
        try:
            got = os.splice(pipe, e.fd, min(_BATCH, room), offset_dst=e.file_end)
        except OSError as exc:
            self._go_direct(f"cannot write {e.path}: {exc}")
            return -1
        self._advance(got)
        return got

    def _read(self, pipe: int) -> int:
        data = os.read(pipe, _BATCH)
        if data:
            self._push(data)
        return len(data)

    def _push(self, data: bytes) -> None:
        try:
            self.entry.push(data)
        except ConnectionError as exc:
            raise ClientGone() from exc

    def _room(self, count: int) -> int:
        """Bytes (up to `count`) the file may take now, reserved within the bound; 0 when none."""
        return self.cache.room(self.entry, count)

    def _write(self, data: bytes, offset: int) -> int:
        """Bytes of `data` written at `offset`; fewer when a write fails (the entry then goes direct)."""
        view, done = memoryview(data), 0
        while done < len(view):
            try:
                done += os.pwrite(self.entry.fd, view[done:], offset + done)
            except OSError as exc:
                self._go_direct(f"cannot write {self.entry.path}: {exc}")
                break
        return done

    def _advance(self, count: int) -> None:
        if count:
            e = self.entry
            self.cache.grew(e, count)
            with e.cond:
                e.file_end += count
                e.end = e.file_end

    def _go_direct(self, why: str) -> None:
        if not self.entry.direct:
            self.cache.go_direct(self.entry, why)

    def _notify(self) -> None:
        self._unnotified = 0
        with self.entry.cond:
            self.entry.cond.notify_all()
