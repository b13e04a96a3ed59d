"""`cccatalog serve`: a ThreadingHTTPServer adapter over the pure git router and the CGI bridge.

Per request: read the head strictly (`framing`: anything ambiguous is a 400 and a close), route
(refusals happen here, before any process), read the body into a spool (size cap, chunked decoding,
a minimum rate), answer from the advertisement cache when it can, answer a pack request through the
pack cache when it is on (`pack_send`), else take an admission slot (`admission`: a fair, bounded
queue; 503 + Retry-After when it is full or the wait runs out), run the backend, stream the answer
with chunked encoding on a keep-alive connection, write one access-log line with the query values
masked (`logsafe`). An error escaping a handler is logged once and answered 500, or the connection is
closed when the answer had started.
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
import traceback
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from cccatalog.config import ServeConfig
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.refstate import RACY_SECONDS, advertisement_fingerprint
from cccatalog.logtext import Verbatim
from cccatalog.redact import Redactor
from cccatalog.server import framing, handoff, relay, ui
from cccatalog.server.admission import Admission, ClientLeft, Refused, client_gone
from cccatalog.server.advert_cache import AdvertCache, CachedAnswer, RecordingSink
from cccatalog.server.api import ApiContext
from cccatalog.server.api import handle as handle_api
from cccatalog.server.cgi import CGIRequest, ClientGone, HttpBackend
from cccatalog.server.framing import FramingError
from cccatalog.server.logsafe import access_fields, loggable_target
from cccatalog.server.metrics import ServerMetrics, route_class
from cccatalog.server.pack_cache import PackCache
from cccatalog.server.pack_key import UPLOAD_PACK_REQUEST, asks_for_pack, normalise
from cccatalog.server.pack_send import answer_upload_pack
from cccatalog.server.reaper import Reaper, body_window
from cccatalog.server.routing import GitRoute, GitService, Refusal, route_git

log = logging.getLogger("cccatalog.serve")
access_log = logging.getLogger("cccatalog.access")

_SPOOL_IN_MEMORY = 1024 * 1024
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
# git http-backend reads `service` alone; anything else a client adds is neither passed on nor a new
# advertisement cache key (varying it would otherwise fill the cache with copies of one answer).
_BACKEND_QUERY = {GitService.INFO_REFS: "service=git-upload-pack"}
# Headers of the backend's answer that belong to its own connection, not ours.
_HOP_BY_HOP = ("content-length", "transfer-encoding", "connection")


_SHUTTING_DOWN_BODY = b'{"detail": "shutting down"}'
_SHUTTING_DOWN = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_SHUTTING_DOWN_BODY), _SHUTTING_DOWN_BODY)
)


@dataclass(frozen=True, slots=True)
class ServingParts:
    """What a server answers with, beside the API: made in one place (`service.Service.serve_on`)."""

    backend: HttpBackend
    adverts: AdvertCache
    admission: Admission
    packs: PackCache | None
    reaper: Reaper
    metrics: ServerMetrics
    redactor: Redactor


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
        parts: ServingParts,
        *,
        sock: socket.socket | None = None,
        racy_seconds: float = RACY_SECONDS,
    ) -> None:
        """Serve on `address`, or on `sock` when given: a socket bound already (`listen_socket`).
        Made by `service.Service.serve_on`, which wires the parts.

        `racy_seconds`: how old a repository's last ref change must be before its advertisement is
        kept (`gitmirror.refstate`); tests that have just synced pass 0."""
        self.racy_seconds = racy_seconds
        self.api = api
        self.live = api.live
        self.settings = settings
        self.servability = api.servability
        self.backend = parts.backend
        self.adverts = parts.adverts
        self.admission = parts.admission
        self.packs = parts.packs
        self.reaper = parts.reaper
        self.metrics = parts.metrics
        # tracebacks are logged redacted even when no logging filter is installed (tests, embedding)
        self.redactor = parts.redactor
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

    # --- what pack_send needs of the server (PackServer, server/exchange.py) ---

    @property
    def data_dir(self) -> Path:
        return self.live.current.git.data_dir

    @property
    def request_timeout_seconds(self) -> int:
        return self.settings.request_timeout_seconds

    @property
    def max_request_body_bytes(self) -> int:
        return self.settings.max_request_body_mb * 1024 * 1024

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
        self._answer_backlog()
        super().server_close()
        self.reaper.stop()

    def _answer_backlog(self) -> None:
        """Connections the kernel accepted that this server never took are answered 503 (and closed
        after their request is read), instead of reset when the listening socket closes: a client or
        a load balancer then knows at once to go elsewhere, and why."""
        with suppress(OSError):
            self.socket.setblocking(False)
            while True:
                try:
                    conn, _ = self.socket.accept()
                except OSError:  # BlockingIOError: the backlog is empty
                    return
                conn.setblocking(True)
                with suppress(OSError):
                    conn.settimeout(_LINGER_SECONDS)
                    conn.sendall(_SHUTTING_DOWN)
                self.shutdown_request(conn)

    def shutdown_request(self, request: Any) -> None:
        """End a connection with a lingering close: send FIN, then read what is in flight for a moment.

        Closing a socket with unread input makes the kernel send a reset, which can destroy an answer
        still on its way (a 400, 413 or 403 refusing a body that was not read): the client would see
        "connection reset" instead of the reason. Bounded: `_LINGER_BYTES` or `_LINGER_SECONDS`.
        A connection whose answer git did not finish (`handoff.end_broken`) is reset on purpose.
        """
        if handoff.resets(request):
            self.close_request(request)
            return
        with suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            request.settimeout(_LINGER_SECONDS)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_BYTES and time.monotonic() < deadline:
                data = request.recv(65536)
                if not data:
                    break
                drained += len(data)
        self.close_request(request)

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
    # Set for every request by parse_request before anything reads them.
    body_plan: framing.Framing = framing.NO_BODY
    route_path = ""
    query = ""
    raw_requestline = b""
    _answered = False

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

    def parse_request(self) -> bool:
        """The request line and header section, read strictly (see `framing`), before any routing.

        Replaces http.server's lenient parser: it answers a request line without a version in
        HTTP/0.9 style (a body with no status line), and lets a header line with a space before its
        colon end the header section silently, leaving its Content-Length unseen.
        """
        self.command = None  # type: ignore[assignment]  # http.server's convention before a request
        # Answers to a refused request line go out with a status line and headers, never 0.9-style.
        self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._answered = False
        self.body_plan = framing.NO_BODY
        raw = self.raw_requestline
        self.requestline = raw.decode("iso-8859-1").rstrip("\r\n")
        if not raw.strip():
            return False  # an empty line where a request should be: close, as http.server does
        try:
            line = framing.parse_request_line(raw)
            self.command, self.path = line.method, line.target
            self.request_version = f"HTTP/1.{line.minor}"
            fields = framing.read_fields(self.rfile)
            self.body_plan = framing.body_framing(fields, minor=line.minor)
            if self.path.startswith("//"):  # gh-87389: a `//host` path is a redirect target elsewhere
                self.path = "/" + self.path.lstrip("/")
            self.route_path, self.query = framing.split_target(self.path)
        except FramingError as exc:
            self.send_error(exc.status, exc.reason)
            return False
        headers = HTTPMessage()
        for field in fields:
            headers[field.name] = field.value
        self.headers = headers
        connection = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
        self.close_connection = line.minor == 0 or "close" in connection
        if "keep-alive" in connection and "close" not in connection:
            self.close_connection = False
        return True

    def send_response(self, code: int, message: str | None = None) -> None:
        self._answered = True
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server raises itself (bad request line, unknown method) answer JSON too."""
        self._status, self._sent = 0, 0
        self.close_connection = True
        with suppress(OSError):
            self._json(code, {"detail": message or HTTPStatus(code).phrase})
        line = loggable_target(self.requestline[:200])
        self.server.metrics.observe_request("other", code, self._sent, None)
        client = self.client_address[0]
        fields = access_fields(
            client, self.command, line, route="other", status=code, sent=self._sent, seconds=None
        )
        access_log.info('%s "%s" %s %d -', client, line, code, self._sent, extra=fields)

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
            log.debug("connection error on %s: %s", loggable_target(self.path), exc)
        except Exception as exc:  # the one place a handler's bug becomes a 500
            self._internal_error(exc)
        finally:
            self.server.track(-1)
            seconds = time.monotonic() - started
            route = route_class(self.route_path, self.server.live.current.git.mount_path)
            self.server.metrics.observe_request(route, self._status, self._sent, seconds)
            client, target = self.client_address[0], loggable_target(self.path)
            fields = access_fields(
                client,
                self.command,
                target,
                route=route,
                status=self._status,
                sent=self._sent,
                seconds=seconds,
            )
            access_log.info(
                '%s "%s %s" %s %d %.3fs',
                client,
                self.command,
                target,
                self._status or "-",
                self._sent,
                seconds,
                extra=fields,
            )

    def _internal_error(self, exc: Exception) -> None:
        """Logged once, redacted, without locals; a 500 if the answer has not started, else a close."""
        self.close_connection = True
        text = "".join(traceback.format_exception(exc)).rstrip()
        log.error(
            "internal error answering %s %s:\n%s",
            self.command,
            loggable_target(self.path),
            Verbatim(self.server.redactor(text)),
        )
        if not self._answered:
            with suppress(OSError):
                self._json(500, {"detail": "internal server error; the server log has the details"})

    def _dispatch(self) -> None:
        path = self.route_path
        answer = handle_api(
            self.server.api,
            self.command,
            path,
            self.query,
            self.headers.get("Authorization"),
            client=self.client_address[0],
        )
        if answer is not None:
            self._discard_body()
            return self._json(answer.status, answer.body, list(answer.headers))
        if (page := ui.answer(self.server, self.command, path, self.headers)) is not None:
            self._discard_body()
            return self._send_page(page)
        config = self.server.live.current
        route = route_git(self.command, path, self.query, config.git.mount_path)
        if route is None:
            self._discard_body()
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
            except FramingError as exc:
                self.close_connection = True
                return self._json(exc.status, {"detail": exc.reason})
        else:
            self._discard_body()
        try:
            req = self._cgi_request(route, body)
            sink = self._answer_from_cache(route, req, body)
            if sink is None:
                return  # answered from memory: no slot, no process
            if (
                body is not None
                and isinstance(sink, _Sink)  # an ls-refs being recorded for memory is not for the disk
                and self.server.packs is not None
                and answer_upload_pack(self, self.server, route, req, body)
            ):
                body = None  # the pack cache answered, and owns the body: its writer may still feed git
                return
            try:
                slot = self.server.admission.acquire(
                    self.client_address[0], gone=partial(client_gone, self.connection)
                )
            except Refused as exc:
                return self._json(
                    503, {"detail": exc.reason}, headers=[("Retry-After", str(exc.retry_after))]
                )
            except ClientLeft:
                self.close_connection = True
                return
            with slot:
                if body is not None and type(sink) is _Sink and self._may_hand_off(req, body):
                    self._hand_off(route, req, body)
                else:
                    self._run_backend(route, req, body, sink)
        finally:
            if body is not None:
                body.close()

    def _cgi_request(self, route: GitRoute, body: IO[bytes] | None) -> CGIRequest:
        size = None
        if body is not None:
            size = body.seek(0, 2)
            body.seek(0)
        return CGIRequest(
            method=self.command,
            path_info=route.path_info,
            query=_BACKEND_QUERY.get(route.service, ""),
            content_type=self.headers.get("Content-Type", ""),
            content_length=size,
            content_encoding=self.headers.get("Content-Encoding", ""),
            git_protocol=self.headers.get("Git-Protocol", ""),
            remote_addr=self.client_address[0],
        )

    def _answer_from_cache(
        self, route: GitRoute, req: CGIRequest, body: IO[bytes] | None
    ) -> _Sink | RecordingSink | None:
        """None when the answer came from the advertisement cache; else the sink the backend writes to."""
        sink: _Sink | RecordingSink = _Sink(self)
        if (request_key := _cacheable(body, req)) is not None:  # answers that only change with the refs
            repo = Layout(self.server.live.current.git.data_dir).repo(route.slug)
            key = (repo, route.service.value, request_key, req.git_protocol)
            fingerprint = (
                advertisement_fingerprint(repo, racy_seconds=self.server.racy_seconds)
                if self.server.adverts.max_bytes
                else None
            )
            if fingerprint is not None:
                if (cached := self.server.adverts.get(key, fingerprint)) is not None:
                    self._send_cached(cached)
                    return None
                sink = RecordingSink(sink, partial(self.server.adverts.put, key, fingerprint))
        return sink

    def _run_backend(
        self, route: GitRoute, req: CGIRequest, body: IO[bytes] | None, sink: _Sink | RecordingSink
    ) -> None:
        outcome = self.server.backend.run(
            req,
            body,
            sink,
            project_root=self.server.live.current.git.data_dir,
            timeout=self.server.settings.request_timeout_seconds,
        )
        if outcome.killed:
            self.close_connection = True
            log.warning("git backend for %s killed: %s", route.path_info, outcome.killed)

    def _may_hand_off(self, req: CGIRequest, body: IO[bytes]) -> bool:
        """Whether this request's answer is the pack and can go from git to the socket (`handoff`)."""
        return (
            self.server.settings.pack_hand_off
            and req.content_type == UPLOAD_PACK_REQUEST
            and handoff.reads_to_close(self.headers.get("User-Agent", ""))
            and handoff.supported(self.connection)
            and asks_for_pack(
                body, content_encoding=req.content_encoding, max_inflated=self.server.max_request_body_bytes
            )
        )

    def _hand_off(self, route: GitRoute, req: CGIRequest, body: IO[bytes]) -> None:
        self.close_connection = True  # the answer's end is the connection's
        self._status = 200
        self.send_response(200)
        self._connection_header()
        buffered: list[bytes] = getattr(self, "_headers_buffer", [])  # http.server's, filled above
        head = b"".join(buffered)
        buffered.clear()
        outcome = self.server.backend.hand_off(
            req,
            body,
            self.connection,
            head=head,
            project_root=self.server.live.current.git.data_dir,
            timeout=self.server.settings.request_timeout_seconds,
            idle_timeout=self.server.settings.idle_timeout_seconds,
        )
        self._sent += outcome.body_bytes
        if outcome.killed:
            log.warning("git backend for %s killed: %s", route.path_info, outcome.killed)

    def _send_cached(self, answer: CachedAnswer) -> None:
        self._status = answer.status
        self.send_response(answer.status)
        for name, value in answer.headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self._connection_header()
        self.end_headers()
        self.wfile.write(answer.body)
        self._sent += len(answer.body)

    def _send_page(self, page: ui.Page) -> None:
        self._status = page.status
        self.send_response(page.status)
        for name, value in page.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(page.body)))
        self._connection_header()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(page.body)
            self._sent += len(page.body)

    def _read_body(self, cap: int) -> IO[bytes]:
        """The whole request body, spooled to disk past 1 MiB, before any process starts."""
        plan = self.body_plan
        if not plan.has_body:
            raise FramingError(411, "a Content-Length or chunked body is required")
        if not plan.chunked and plan.length > cap:
            raise FramingError(413, f"request body over the {cap // (1024 * 1024)} MiB limit")
        if self.headers.get("Expect", "").lower() == "100-continue" and self.request_version != "HTTP/1.0":
            # sent only now that the body is wanted: a refused request gets its refusal instead
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
        idle = self.server.settings.idle_timeout_seconds
        # The first byte within the idle timeout, then a minimum rate; and the whole body within the
        # idle timeout plus a second per 64 KiB it may carry, however fast it trickles.
        meter = self.server.reaper.arm_body(
            self.connection, first_byte=idle, window=body_window(idle), ceiling=idle + cap / 65536
        )
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - caller closes
        try:
            if plan.chunked:
                framing.read_chunked(self.rfile, spool, cap, meter)
            else:
                framing.read_length(self.rfile, plan.length, spool, meter)
        except FramingError as exc:
            spool.close()
            if meter.cut:
                raise FramingError(408, "request body too slow") from exc
            raise
        except BaseException:
            spool.close()
            raise
        finally:
            self.server.reaper.disarm(self.connection)
        return spool

    def _discard_body(self) -> None:
        # A body that is not read is not skipped either: close instead of reusing the connection.
        if self.body_plan.has_body:
            self.close_connection = True

    def _connection_header(self) -> None:
        if self.close_connection:
            self.send_header("Connection", "close")

    # --- the Exchange (server/exchange.py): what pack_send writes its answers through ---

    def send_head(self, status: int, headers: Sequence[tuple[str, str]], *, length: int | None) -> bool:
        self._status = status
        chunked = length is None and self.request_version == "HTTP/1.1"
        if length is None and not chunked:
            self.close_connection = True  # HTTP/1.0 and no length: the end of the body is the close
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self._connection_header()
        self.end_headers()
        self.wfile.flush()
        return chunked

    def send_json(self, status: int, payload: object, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._json(status, payload, list(headers))

    def count_sent(self, count: int) -> None:
        self._sent += count

    def close_after(self) -> None:
        self.close_connection = True

    def _json(self, status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        # a browser must never read an answer (a `detail` echoing the request) as HTML or script
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for name, value in headers or []:
            self.send_header(name, value)
        self._connection_header()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)


_LS_REFS = b"0014command=ls-refs\n"
_MAX_CACHED_REQUEST = 8 * 1024


def _cacheable(body: IO[bytes] | None, req: CGIRequest) -> str | None:
    """What identifies the request for the advertisement cache, or None when its answer is not kept.

    GET info/refs and HEAD depend on the refs alone; a protocol v2 `ls-refs` on its arguments too
    (ref prefixes, peel, symrefs), so its body is part of the key — normalised as the pack cache's
    (`pack_key`: without the client's `agent=`), so clients of different git versions share it.
    Fetches are never kept here.
    """
    if body is None:
        return req.query
    if req.content_encoding or not req.content_length or req.content_length > _MAX_CACHED_REQUEST:
        return None
    data = body.read(_MAX_CACHED_REQUEST + 1)
    body.seek(0)
    if not data.startswith(_LS_REFS):
        return None
    normal = normalise(data, v2=True)
    return hashlib.sha256(data if normal is None else b"n" + normal).hexdigest()


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
            h._connection_header()
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
