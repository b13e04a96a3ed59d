"""Ref advertisements (GET info/refs, GET HEAD, v2 `ls-refs`), kept while the repository's refs stay the same.

`GET info/refs` is the first request of every clone and fetch, and a protocol v2 client's `ls-refs`
the second; each costs two processes (`git http-backend`, `git upload-pack`) to print what only
changes when a ref changes. The answer the backend gave is kept under the repository's stat
fingerprint (`gitmirror.refstate`), the request (query, or the digest of an ls-refs body) and its
`Git-Protocol`; the next identical request whose fingerprint still matches is answered from memory,
byte for byte the same. Any ref, HEAD or config change (a sync) changes the fingerprint, and an entry
is never made from a fingerprint that is racy or not trusted. Bounded in bytes, least recently used
first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cccatalog.gitmirror.refstate import Fingerprint
from cccatalog.server.cgi import ResponseSink, copy_stream

MAX_ENTRY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


CacheKey = tuple[Path, str, str, str]  # repo, service, query or request digest, Git-Protocol


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
    """Passes an answer through to the client and, once it is whole, hands a copy to `keep`.

    `keep` runs before the answer's last bytes leave, so a client's next request finds it kept.
    """

    def __init__(self, inner: ResponseSink, keep: Callable[[CachedAnswer], None]) -> None:
        self.inner = inner
        self.keep = keep
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.size = 0

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

    def finish(self, *, complete: bool = True) -> None:
        if complete and self.status == 200 and self.size <= MAX_ENTRY_BYTES:
            self.keep(CachedAnswer(self.status, tuple(self.headers), b"".join(self.parts)))
        self.inner.finish(complete=complete)
