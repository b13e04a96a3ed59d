"""`cccatalog serve`: a ThreadingHTTPServer adapter over the pure git router and the CGI bridge.

Per request: route (refusals happen here, before any process), read the body into a spool (size cap,
chunked decoding), take an admission slot (503 + Retry-After when full), run the backend, stream the
answer with chunked encoding on a keep-alive connection, write one access-log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import socket
import tempfile
import threading
import time
from contextlib import suppress
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import urlsplit

from cccatalog.config import ServeConfig
from cccatalog.gitmirror.http_backend import CGIRequest, ClientGone, HttpBackend
from cccatalog.gitmirror.refstate import advertisement_fingerprint
from cccatalog.server import relay
from cccatalog.server.advert_cache import AdvertCache, CachedAnswer, RecordingSink
from cccatalog.server.api import ApiContext
from cccatalog.server.api import handle as handle_api
from cccatalog.server.routing import GitRoute, GitService, Refusal, route_git

log = logging.getLogger("cccatalog.serve")
access_log = logging.getLogger("cccatalog.access")

_SPOOL_IN_MEMORY = 1024 * 1024


class Reaper:
    """Cuts off connections that take too long to send a request, however they trickle it.

    A socket timeout bounds each read, not the whole request: a client sending one byte every few
    seconds would hold a worker forever. One thread checks deadlines a few times a second and shuts
    down the sockets past theirs; the blocked read then returns EOF.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._items: dict[int, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        threading.Thread(target=self._loop, name="reaper", daemon=True).start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._items[id(sock)] = (time.monotonic() + seconds, sock)

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._items.pop(id(sock), None)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._items.items() if deadline <= now]
                socks = [self._items.pop(key)[1] for key in late]
            for sock in socks:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class BodyError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class CatalogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 makes a burst of 16 clients retry after a second
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        api: ApiContext,
        settings: ServeConfig,
        *,
        backend: HttpBackend | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Serve on `address`, or on `sock` when given: a socket bound already (`listen_socket`)."""
        self.api = api
        self.live = api.live
        self.settings = settings
        self.servability = api.servability
        self.backend = backend or HttpBackend()
        self.adverts = AdvertCache(settings.advertisement_cache_mb * 1024 * 1024)
        self.slots = threading.BoundedSemaphore(settings.max_concurrent_upload_packs)
        self.reaper = Reaper()
        self._active = 0
        self._active_cond = threading.Condition()
        if sock is None:
            super().__init__(address, GitRequestHandler)
            return
        self.address_family = sock.family
        super().__init__(address, GitRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        try:
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that vanished is routine; anything else is logged with its traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, exc)
        else:
            log.exception("unexpected error serving %s", client_address)

    def server_close(self) -> None:
        super().server_close()
        self.reaper.stop()

    def track(self, delta: int) -> None:
        with self._active_cond:
            self._active += delta
            self._active_cond.notify_all()

    def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for in-flight requests; kill backends still running. Returns kills."""
        deadline = time.monotonic() + grace
        with self._active_cond:
            while self._active and time.monotonic() < deadline:
                self._active_cond.wait(deadline - time.monotonic())
        return self.backend.kill_all()


class GitRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered writes: headers and a small body leave in one segment (TCP_NODELAY is on); the
    # streaming path flushes after every chunk. http.server flushes after each request.
    wbufsize = 64 * 1024
    server: CatalogServer
    server_version = "cccatalog"

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.server.settings.idle_timeout_seconds)  # idle clients let go
        super().setup()
        # Small writes (pkt-lines, ls-refs) must not wait for Nagle: ~10x lower latency here.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # The request line and headers (or the wait for them on a keep-alive connection) must
        # arrive within the idle timeout in total, not per read.
        self.server.reaper.arm(self.connection, self.server.settings.idle_timeout_seconds)
        try:
            super().handle_one_request()
        finally:
            self.server.reaper.disarm(self.connection)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server raises itself (bad request line, unknown method) answer JSON too."""
        self._status, self._sent = 0, 0
        self.close_connection = True
        with suppress(OSError):
            self._json(code, {"detail": message or HTTPStatus(code).phrase})
        access_log.info('%s "%s" %s %d -', self.client_address[0], self.requestline[:200], code, self._sent)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _access_log, with bytes and duration

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.server.reaper.disarm(self.connection)  # the head is in; the body has its own deadline
        started = time.monotonic()
        self._status, self._sent = 0, 0
        self.server.track(+1)
        try:
            self._dispatch()
        except (ConnectionError, TimeoutError, OSError) as exc:
            self.close_connection = True
            log.debug("connection error on %s: %s", self.path, exc)
        finally:
            self.server.track(-1)
            access_log.info(
                '%s "%s %s" %s %d %.3fs',
                self.client_address[0], self.command, self.path, self._status or "-", self._sent,
                time.monotonic() - started,
            )  # fmt: skip

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        answer = handle_api(
            self.server.api, self.command, path, parts.query, self.headers.get("Authorization")
        )
        if answer is not None:
            self._discard_body()
            return self._json(answer.status, answer.body, list(answer.headers))
        config = self.server.live.current
        route = route_git(self.command, path, parts.query, config.git.mount_path)
        if route is None:
            return self._json(404, {"detail": "Not Found"})
        if isinstance(route, Refusal):
            self._discard_body()
            return self._json(route.status, {"detail": route.reason})
        if not self.server.servability.is_servable(config, route.slug):
            self._discard_body()
            return self._json(404, {"detail": f"repository {route.slug} is not served here"})
        self._git(route)

    def _git(self, route: GitRoute) -> None:
        cap = self.server.settings.max_request_body_mb * 1024 * 1024
        body: IO[bytes] | None = None
        if route.service is GitService.UPLOAD_PACK:
            try:
                body = self._read_body(cap)
            except BodyError as exc:
                self.close_connection = True
                return self._json(exc.status, {"detail": str(exc)})
        try:
            if not self.server.slots.acquire(blocking=False):
                return self._json(
                    503,
                    {"detail": "too many git requests at once; retry shortly"},
                    headers=[("Retry-After", "2")],
                )
            try:
                self._run_backend(route, body)
            finally:
                self.server.slots.release()
        finally:
            if body is not None:
                body.close()

    def _run_backend(self, route: GitRoute, body: IO[bytes] | None) -> None:
        size = None
        if body is not None:
            size = body.seek(0, 2)
            body.seek(0)
        query = urlsplit(self.path).query
        req = CGIRequest(
            method=self.command,
            path_info=route.path_info,
            query=query,
            content_type=self.headers.get("Content-Type", ""),
            content_length=size,
            content_encoding=self.headers.get("Content-Encoding", ""),
            git_protocol=self.headers.get("Git-Protocol", ""),
            remote_addr=self.client_address[0],
        )
        project_root = self.server.live.current.git.data_dir
        sink: _Sink | RecordingSink = _Sink(self)
        if (request_key := _cacheable(body, req)) is not None:  # answers that only change with the refs
            key = (project_root / f"{route.slug}.git", route.service.value, request_key, req.git_protocol)
            fingerprint = advertisement_fingerprint(key[0]) if self.server.adverts.max_bytes else None
            if fingerprint is not None:
                if (cached := self.server.adverts.get(key, fingerprint)) is not None:
                    return self._send_cached(cached)
                sink = RecordingSink(sink, partial(self.server.adverts.put, key, fingerprint))
        outcome = self.server.backend.run(
            req,
            body,
            sink,
            project_root=project_root,
            timeout=self.server.settings.request_timeout_seconds,
        )
        if outcome.killed:
            self.close_connection = True
            log.warning("git backend for %s killed: %s", route.path_info, outcome.killed)

    def _send_cached(self, answer: CachedAnswer) -> None:
        self._status = answer.status
        self.send_response(answer.status)
        for name, value in answer.headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        self._sent += len(answer.body)

    def _read_body(self, cap: int) -> IO[bytes]:
        """The whole request body, spooled to disk past 1 MiB, before any process starts."""
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - caller closes
        # The whole body gets the idle timeout plus a second per 64 KiB it may carry: slow links pass,
        # a trickle does not.
        self.server.reaper.arm(self.connection, self.server.settings.idle_timeout_seconds + cap / 65536)
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self._read_chunked(spool, cap)
            else:
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise BodyError(411, "a Content-Length or chunked body is required")
                remaining = int(length)
                if remaining > cap:
                    raise BodyError(413, f"request body over the {cap // (1024 * 1024)} MiB limit")
                while remaining:
                    data = self.rfile.read(min(remaining, 65536))
                    if not data:
                        raise BodyError(400, "request body ended early")
                    spool.write(data)
                    remaining -= len(data)
        except BaseException:
            spool.close()
            raise
        finally:
            self.server.reaper.disarm(self.connection)
        return spool

    def _read_chunked(self, spool: IO[bytes], cap: int) -> None:
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyError(400, "malformed chunked body") from None
            if size == 0:
                break
            total += size
            if total > cap:
                raise BodyError(413, f"request body over the {cap // (1024 * 1024)} MiB limit")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise BodyError(400, "malformed chunked body")
            spool.write(data)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers

    def _discard_body(self) -> None:
        # A refused request's body is not read: close instead of reusing the connection.
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True

    def _json(self, status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)


_LS_REFS = b"0014command=ls-refs\n"
_MAX_CACHED_REQUEST = 8 * 1024


def _cacheable(body: IO[bytes] | None, req: CGIRequest) -> str | None:
    """What identifies the request for the advertisement cache, or None when its answer is not kept.

    GET info/refs and HEAD depend on the refs alone; a protocol v2 `ls-refs` on its arguments too
    (ref prefixes, peel, symrefs), so its body is part of the key. Fetches are never kept.
    """
    if body is None:
        return req.query
    if req.content_encoding or not req.content_length or req.content_length > _MAX_CACHED_REQUEST:
        return None
    data = body.read(_MAX_CACHED_REQUEST + 1)
    body.seek(0)
    if not data.startswith(_LS_REFS):
        return None
    return hashlib.sha256(data).hexdigest()


class _Sink:
    """Writes the backend's answer: chunked on HTTP/1.1 unless the backend gave a Content-Length."""

    def __init__(self, handler: GitRequestHandler) -> None:
        self.h = handler
        self.chunked = False
        self.crlf_owed = False  # a relayed chunk's closing CRLF, sent with what comes next

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        h = self.h
        h._status = status
        has_length = any(name.lower() == "content-length" for name, _ in headers)
        self.chunked = not has_length and h.request_version == "HTTP/1.1"
        if not has_length and not self.chunked:
            h.close_connection = True
        try:
            h.send_response(status)
            for name, value in headers:
                h.send_header(name, value)
            if self.chunked:
                h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
        except OSError as exc:
            raise ClientGone() from exc

    def _owed(self) -> bytes:
        owed, self.crlf_owed = self.crlf_owed, False
        return b"\r\n" if owed else b""

    def write(self, data: bytes) -> None:
        try:
            if self.chunked:
                self.h.wfile.write(b"%s%x\r\n%s\r\n" % (self._owed(), len(data), data))
            else:
                self.h.wfile.write(data)
            self.h.wfile.flush()
        except OSError as exc:
            raise ClientGone() from exc
        self.h._sent += len(data)

    def stream_from(self, fd: int) -> int:
        progress = relay.Progress(crlf_owed=self.crlf_owed)
        try:
            self.h.wfile.flush()
            relay.stream_pipe(fd, self.h.connection, chunked=self.chunked, progress=progress)
        except OSError as exc:
            raise ClientGone() from exc
        finally:
            self.h._sent += (
                progress.sent
            )  # the access log counts what left, even when the client did not stay
            self.crlf_owed = progress.crlf_owed
        return progress.sent

    def finish(self, *, complete: bool = True) -> None:
        try:
            if self.chunked:
                self.h.wfile.write(b"%s0\r\n\r\n" % self._owed())
            self.h.wfile.flush()
        except OSError as exc:
            raise ClientGone() from exc


def serve_forever(server: CatalogServer) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the config. In-flight clones get the grace period."""
    live = server.live
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=live.reload, daemon=True).start())
    live.watch()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        live.stop()
        server.server_close()  # refuse new connections now, not after the grace period
        killed = server.drain(server.settings.shutdown_grace_seconds)
        if killed:
            log.warning("killed %d git backends still running after the grace period", killed)
