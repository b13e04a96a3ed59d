"""Answering `POST git-upload-pack` through the pack cache: from a finished entry with `sendfile`, or by
following an answer while it is written.

The request thread never runs git here. The first request for a key starts a writer thread that
waits for an admission slot, runs `git http-backend` into the cache file at full speed and frees the
slot the moment git exits; every request for that key — the first included — is a reader that sends
the file to its client at the client's pace, so a slow reader holds no git process and no slot. A
reader waiting for the first bytes notices its client leaving (`admission.client_gone`); when every
reader of an answer has left, the writer stops git. An answer still growing goes out in chunks, each a
`sendfile` of what the writer has added; a whole one with a Content-Length and one `sendfile`. An
answer that went direct (no room, or a failed write: `pack_entry`) goes out from the file as far as
it got, then from memory.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from typing import IO

from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.refstate import advertisement_fingerprint
from cccatalog.server.admission import client_gone
from cccatalog.server.cgi import BackendOutcome, CGIRequest, ResponseSink
from cccatalog.server.exchange import Exchange, PackServer
from cccatalog.server.pack_entry import Entry, Finished, Reader, State
from cccatalog.server.pack_key import UPLOAD_PACK_REQUEST, request_key
from cccatalog.server.pack_writer import produce
from cccatalog.server.routing import GitRoute

log = logging.getLogger("cccatalog.serve")

_WAIT_SECONDS = 0.25  # how often a waiting reader checks that its client is still there
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # Linux: a chunk header waits for its data


def answer_upload_pack(
    exchange: Exchange, server: PackServer, route: GitRoute, req: CGIRequest, body: IO[bytes]
) -> bool:
    """True when the pack cache answered the request; it then owns (and closes) `body`.

    False when this request is not for the cache — its Content-Type is not git's, or the cache
    directory cannot be written — and the caller runs git as it would without a cache. An answer the
    cache will not keep (a racy or untrusted fingerprint, too big last time) still goes through a
    spool of its own, so that its reader holds no slot.
    """
    cache = server.packs
    assert cache is not None
    if req.content_type != UPLOAD_PACK_REQUEST:
        return False
    repo = Layout(server.data_dir).repo(route.slug)
    fingerprint = advertisement_fingerprint(repo, racy_seconds=server.racy_seconds)
    name = None
    if fingerprint is not None:
        name = request_key(
            repo,
            fingerprint,
            git_protocol=req.git_protocol,
            content_type=req.content_type,
            content_encoding=req.content_encoding,
            body=body,
            max_inflated=server.max_request_body_bytes,
        )
    try:
        found = cache.open(name, keep=name is not None and not cache.is_oversize(name))
    except OSError as exc:
        log.warning("pack cache: cannot write under %s, answering without it: %s", cache.directory, exc)
        return False
    if isinstance(found, Finished):
        body.close()
        try:
            _send_finished(exchange, found)
        finally:
            cache.release(found)
        return True
    if found.leader:
        _start_writer(server, found, route, req, body)
    else:
        body.close()
    try:
        _follow(exchange, found)
    finally:
        found.close()
    return True


def _start_writer(
    server: PackServer, reader: Reader, route: GitRoute, req: CGIRequest, body: IO[bytes]
) -> None:
    cache = server.packs
    assert cache is not None
    data_dir = server.data_dir
    timeout = server.request_timeout_seconds

    def run(sink: ResponseSink) -> BackendOutcome:
        return server.backend.run(req, body, sink, project_root=data_dir, timeout=timeout)

    def write() -> None:
        try:
            produce(
                cache,
                reader.entry,
                admission=server.admission,
                client=req.remote_addr,
                run=run,
                what=route.path_info,
            )
        finally:
            body.close()

    threading.Thread(target=write, name="pack-writer", daemon=True).start()


def _send_finished(exchange: Exchange, found: Finished) -> None:
    exchange.send_head(found.status, found.headers, length=found.body_length)
    _sendfile(exchange, found.fd, found.body_start, found.body_length)


def _follow(exchange: Exchange, reader: Reader) -> None:
    entry = reader.entry
    sock = exchange.connection
    if _wait(entry, sock, -1) is None:
        exchange.close_after()
        return
    if entry.state is State.REFUSED and entry.refusal is not None:
        refusal = entry.refusal
        return exchange.send_json(
            503, {"detail": refusal.reason}, [("Retry-After", str(refusal.retry_after))]
        )
    if not entry.status:  # the backend could not be run at all
        return exchange.send_json(502, {"detail": "the git backend failed; the server log has the details"})
    whole = entry.state is State.ENDED
    chunked = exchange.send_head(
        entry.status, entry.headers, length=entry.end - entry.body_start if whole else None
    )
    pos = entry.body_start
    owed = b""  # a chunk's closing CRLF, sent with the next chunk header
    while True:
        progress = _wait(entry, sock, pos)
        if progress is None:
            exchange.close_after()
            return
        state, file_end, end = progress
        if pos >= end:
            break
        direct = pos >= file_end  # the answer went direct: the rest is in memory
        data = entry.chunk_at(pos) if direct else None
        count = len(data) if data is not None else file_end - pos
        if chunked:
            sock.sendall(b"%s%x\r\n" % (owed, count), _MSG_MORE)
            owed = b"\r\n"
        if data is not None:
            sock.sendall(data)
            exchange.count_sent(count)
        else:  # from the file, in the kernel
            _sendfile(exchange, reader.fd, pos, count)
        pos += count
        entry.sent(reader.token, pos)
    if state is State.ENDED:
        if chunked:
            sock.sendall(owed + b"0\r\n\r\n")
    else:  # cut off: the client must see a broken answer, never a short one that looks whole
        exchange.close_after()


def _wait(entry: Entry, sock: socket.socket, pos: int) -> tuple[State, int, int] | None:
    """Wait for the head (`pos` -1), or for body bytes past `pos` or the end of the answer; then
    (state, file_end, end). None when the client left meanwhile."""
    with entry.cond:
        while entry.state is State.PENDING or (entry.state is State.STREAMING and entry.end <= pos):
            if not entry.cond.wait(_WAIT_SECONDS) and client_gone(sock):
                return None
        return entry.state, entry.file_end, entry.end


def _sendfile(exchange: Exchange, fd: int, offset: int, count: int) -> None:
    """`count` bytes of `fd` from `offset` to the client by `sendfile(2)`: no copy through Python.

    The socket has a timeout, so it is non-blocking underneath: a full send buffer is waited out for
    at most that long (a client that stopped reading gets TimeoutError, as with any other send).
    """
    sock = exchange.connection
    out = sock.fileno()
    timeout = sock.gettimeout()
    end = offset + count
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, end - offset)
        except BlockingIOError:
            poller = select.poll()
            poller.register(out, select.POLLOUT)
            if not poller.poll(None if timeout is None else int(timeout * 1000)):
                raise TimeoutError("the client stopped reading") from None
            continue
        if not sent:
            raise ConnectionError("the cache file ended early")
        offset += sent
        exchange.count_sent(sent)
