"""The seam between the HTTP adapter and the code that writes an answer without it.

`app.GitRequestHandler` reads a request and routes it; most answers it writes itself. An answer from
the pack cache (`pack_send`) goes out through this interface instead: one exchange (a request's
connection and the answer going out on it) and the few server parts that answer needs. Neither side
reaches into the other's members, and `pack_send` never imports the adapter.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cccatalog.server.admission import Admission
from cccatalog.server.cgi import HttpBackend
from cccatalog.server.pack_cache import PackCache


class Exchange(Protocol):
    """One request's answer, as code other than the adapter writes it."""

    # The client's socket: what `sendfile` and `splice` write to, and how a client leaving is seen.
    connection: socket.socket

    def send_head(self, status: int, headers: Sequence[tuple[str, str]], *, length: int | None) -> bool:
        """The status line and headers (hop-by-hop ones left out); True when the body goes in chunks."""

    def send_json(self, status: int, payload: object, headers: Sequence[tuple[str, str]] = ()) -> None:
        """A whole JSON answer (a refusal, an error)."""

    def count_sent(self, count: int) -> None:
        """`count` body bytes the caller wrote to `connection` itself, for the access log and metrics."""

    def close_after(self) -> None:
        """Close the connection once this answer is out (a cut-off or unframed body)."""


class PackServer(Protocol):
    """What answering through the pack cache needs of the server."""

    packs: PackCache | None
    backend: HttpBackend
    admission: Admission
    racy_seconds: float

    @property
    def data_dir(self) -> Path:
        """The mirrors, as the current config places them."""

    @property
    def request_timeout_seconds(self) -> int: ...

    @property
    def max_request_body_bytes(self) -> int: ...
