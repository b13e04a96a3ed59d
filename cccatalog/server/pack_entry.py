"""One pack answer as the pack cache holds it: the file format of a finished entry, and an answer being
written (`Entry`) with its readers.

An answer being written lives in a file while the cache has room for it. When it has none (the bound
is reached and nothing can be evicted) or a write fails (the disk is full), the writer goes *direct*:
the file keeps what it has, and the rest of the answer passes to its readers from memory, at most
`TAIL_MAX` bytes ahead of the slowest of them (git waits on its pipe meanwhile). Readers send the
file's part, then the memory's, so every answer is whole: a cache can make an answer slower, never
wrong.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cccatalog.server.admission import Refused

MAGIC = b"CCPACK1\n"
END = b"CCPKEND1"
HEAD = struct.Struct(">8sI")  # magic, length of the JSON head that follows
TAIL = struct.Struct(">Q8s")  # body length, end magic
_MAX_HEAD = 64 * 1024
TAIL_MAX = 4 * 1024 * 1024  # memory a direct answer may hold ahead of its slowest reader
_WAIT_SECONDS = 0.25  # how often a writer waiting for readers checks that someone still wants it
_TOUCH_AFTER = 60.0  # seconds: an entry's mtime (its LRU clock) is refreshed at most this often
_tokens = itertools.count(1)


class State(Enum):
    PENDING = "pending"  # queued for a slot, or git has not answered yet
    STREAMING = "streaming"  # the head is known; the body grows
    ENDED = "ended"  # the answer is whole
    CUT = "cut"  # the backend was killed or failed mid-answer: readers must not end it cleanly
    REFUSED = "refused"  # no admission slot: readers answer 503
    FAILED = "failed"  # nothing was produced: readers answer 502


class Entry:
    """One answer being written: its file, how far it got (in the file, then in memory), its readers."""

    def __init__(self, name: str, fd: int, path: Path, *, keep: bool) -> None:
        self.name = name  # the key; "" for an answer nobody else may join
        self.fd = fd
        self.path = path
        self.ino = os.fstat(fd).st_ino
        self.cond = threading.Condition()
        self.state = State.PENDING
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body_start = 0
        self.file_end = 0  # offset where the answer's part in the file ends
        self.end = 0  # offset where the answer so far ends: past `file_end`, in `tail`
        self.refusal: Refused | None = None
        self.readers = 0  # guarded by the cache's lock
        self.cancelled = False  # every reader left before the answer was whole
        self.keep = keep  # published when whole: a cache candidate, not past the entry cap, not direct
        self.direct = False  # the rest of the answer goes to readers from memory
        self.first_sight = False  # not kept, as its key was not seen before; a reader joining changes that
        self.size = 0  # bytes in the file
        self.reserved = 0  # bytes of the bound this file may use; guarded by the cache's lock
        self.tail: deque[tuple[int, bytes]] = deque()  # (offset, data) past `file_end`
        self.tail_bytes = 0
        self.positions: dict[int, int] = {}  # reader token -> offset it has sent up to

    def set_state(self, state: State) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()

    # --- the direct path: memory between the writer and the readers ------------------------------

    def push(self, data: bytes) -> None:
        """Hand `data` to the readers; wait while the slowest is `TAIL_MAX` behind. Raises
        `ConnectionError` when every reader has left."""
        with self.cond:
            while self.tail_bytes >= TAIL_MAX and not self.cancelled:
                self.cond.wait(_WAIT_SECONDS)
            if self.cancelled:
                raise ConnectionError("every reader left")
            self.tail.append((self.end, data))
            self.tail_bytes += len(data)
            self.end += len(data)
            self.cond.notify_all()

    def chunk_at(self, pos: int) -> memoryview:
        """The bytes from `pos` to the end of the memory chunk holding it (`pos` ≥ `file_end`)."""
        with self.cond:
            for offset, data in self.tail:
                if offset <= pos < offset + len(data):
                    return memoryview(data)[pos - offset :]
        raise LookupError(f"offset {pos} is no longer held")  # only if a reader was not registered

    def sent(self, token: int, pos: int) -> None:
        """A reader has sent up to `pos`: memory behind every reader is let go."""
        if not self.direct:
            return
        with self.cond:
            self.positions[token] = pos
            self._trim()

    def register(self) -> int:
        token = next(_tokens)
        with self.cond:
            self.positions[token] = 0
        return token

    def unregister(self, token: int) -> None:
        with self.cond:
            self.positions.pop(token, None)
            self._trim()

    def _trim(self) -> None:
        low = min(self.positions.values(), default=self.end)
        while self.tail and self.tail[0][0] + len(self.tail[0][1]) <= low:
            _, data = self.tail.popleft()
            self.tail_bytes -= len(data)
        self.cond.notify_all()


@dataclass(slots=True)
class Reader:
    """A request's hold on an entry: its own descriptor of the file, given back with `close()`."""

    entry: Entry
    fd: int
    leader: bool  # this request created the entry: it starts the writer
    detach: Callable[[Entry], None]  # the cache's own bookkeeping of who still reads the entry
    token: int = field(default=0)

    def close(self) -> None:
        with suppress(OSError):
            os.close(self.fd)
        self.entry.unregister(self.token)
        self.detach(self.entry)


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


def head_block(status: int, headers: list[tuple[str, str]]) -> bytes:
    head = json.dumps({"status": status, "headers": headers}).encode()
    return HEAD.pack(MAGIC, len(head)) + head


def read_entry(fd: int) -> Finished:
    """A finished entry's head, checked end to end; ValueError when it is not whole."""
    size = os.fstat(fd).st_size
    start = os.pread(fd, min(size, _MAX_HEAD), 0)
    if len(start) < HEAD.size:
        raise ValueError("too short")
    magic, head_length = HEAD.unpack_from(start)
    body_start = HEAD.size + head_length
    if magic != MAGIC or body_start > len(start) or size < body_start + TAIL.size:
        raise ValueError("not a cache entry")
    body_length, end = TAIL.unpack(os.pread(fd, TAIL.size, size - TAIL.size))
    if end != END or body_start + body_length + TAIL.size != size:
        raise ValueError("incomplete")
    head = json.loads(start[HEAD.size : body_start])
    headers = [(str(k), str(v)) for k, v in head["headers"]]
    touch(fd)
    ino = os.fstat(fd).st_ino
    return Finished(fd, ino, size, int(head["status"]), headers, body_start, body_length)


def touch(fd: int) -> None:
    """Mark a finished entry as used (its mtime is the LRU clock), at most once a minute."""
    with suppress(OSError):
        if time.time() - os.fstat(fd).st_mtime > _TOUCH_AFTER:
            os.utime(fd)
