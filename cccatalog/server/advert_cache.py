"""Answers to GET git requests (ref advertisements, HEAD), kept while the repository's refs stay the same.

`GET info/refs` is the first request of every clone and fetch and costs two processes
(`git http-backend`, `git upload-pack`) to print what only changes when a ref changes. The answer the
backend gave is kept under the repository's stat fingerprint (`gitmirror.refstate`) and the request's
`Git-Protocol`; the next identical request whose fingerprint still matches is answered from memory,
byte for byte the same. Any ref, HEAD or config change (a sync) changes the fingerprint, and an entry
is never made from a fingerprint that is racy or not trusted. Bounded in bytes, least recently used
first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cccatalog.gitmirror.http_backend import ResponseSink, copy_stream
from cccatalog.gitmirror.refstate import Fingerprint

MAX_ENTRY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


CacheKey = tuple[Path, str, str, str]  # repo, service, query, Git-Protocol


class AdvertCache:
    """Thread-safe LRU of backend answers, each valid for one fingerprint of its repository."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, tuple[Fingerprint, CachedAnswer]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey, fingerprint: Fingerprint) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != fingerprint:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: CacheKey, fingerprint: Fingerprint, answer: CachedAnswer) -> None:
        size = len(answer.body)
        if size > min(MAX_ENTRY_BYTES, self.max_bytes):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1].body)
            self._entries[key] = (fingerprint, answer)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)


class RecordingSink:
    """Passes an answer through to the client while keeping a copy, up to MAX_ENTRY_BYTES."""

    def __init__(self, inner: ResponseSink) -> None:
        self.inner = inner
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.finished = False

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, list(headers)
        self.inner.start(status, headers)

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        self.size += len(data)
        if self.size <= MAX_ENTRY_BYTES:
            self.parts.append(data)

    def stream_from(self, fd: int) -> int:
        return copy_stream(fd, self)  # read through Python: these answers are small, and kept

    def finish(self) -> None:
        self.inner.finish()
        self.finished = True

    def answer(self) -> CachedAnswer | None:
        """What to keep: a complete 200 that fit, else None."""
        if not self.finished or self.status != 200 or self.size > MAX_ENTRY_BYTES:
            return None
        return CachedAnswer(self.status, tuple(self.headers), b"".join(self.parts))
