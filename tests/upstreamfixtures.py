"""A loopback HTTP gate in front of a real catalog: it can demand an Authorization header, redirect
every request to another origin, or accept a request and never answer; it records every header it
received. Whatever it lets through is forwarded to the catalog behind it, answer unchanged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass
class Gate:
    url: str = ""
    target: str | None = None  # the catalog to forward to
    required_authorization: str | None = None
    redirect_to: str | None = None  # answer 307 to this origin + the same path instead
    stall: threading.Event | None = None  # accept, then wait for this before answering nothing
    seen_authorization: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@contextmanager
def catalog_gate(**settings: object) -> Iterator[Gate]:
    gate = Gate(**settings)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            gate.seen_authorization.append(self.headers.get("Authorization"))
            gate.paths.append(self.path)
            if gate.stall is not None:
                gate.stall.wait(30)
                return
            if (
                gate.required_authorization
                and self.headers.get("Authorization") != gate.required_authorization
            ):
                self._answer(401, b'{"detail": "not authenticated"}')
                return
            if gate.redirect_to:
                self.send_response(307)
                self.send_header("Location", gate.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            assert gate.target is not None
            answer = httpx.get(gate.target + self.path, timeout=10)
            self._answer(answer.status_code, answer.content)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    gate.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        if gate.stall is not None:
            gate.stall.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
