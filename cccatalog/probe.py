"""`cccatalog probe`: ask a running `serve` over HTTP whether it answers, for a container HEALTHCHECK
in an image that has no curl.

Unlike `serve --get` (which answers in a new process from the config and state), this goes through the
server's socket, so a hung, stopped or overloaded server fails the check. One GET, each wait on the
socket bounded by the timeout; no redirect is followed and no credential is sent. The standard
library's http.client keeps the probe's start-up small (it runs every few seconds, for the lifetime
of the container).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cccatalog.errors import CCCatalogError, UsageError

DEFAULT_PATH = "/healthz"
MAX_BODY_BYTES = 64 * 1024  # a health answer is a few bytes; never buffer a large page


@dataclass(frozen=True)
class ProbeResult:
    url: str
    status: int
    body: str
    seconds: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def probe_url(url: str | None, *, port: int) -> str:
    """The URL to ask: the one given, or serve's /healthz on this host at `port`; bad ones refused."""
    if url is None:
        return f"http://127.0.0.1:{port}{DEFAULT_PATH}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"URL: expected http://host[:port]/path, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError("URL: the probe sends no credentials; leave user:password@ out of it")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise UsageError(f"URL: the port of {parts.netloc!r} is not a number from 0 to 65535") from None
    return url


def probe(url: str, *, timeout: float) -> ProbeResult:
    """GET `url` once; a refusal, a timeout or a broken answer is a CCCatalogError (exit 1)."""
    parts = urlsplit(url)
    host, path = parts.hostname or "", (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    started = time.monotonic()
    conn = cls(host, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "cccatalog-probe", "Connection": "close"})
        response = conn.getresponse()
        body = response.read(MAX_BODY_BYTES).decode("utf-8", "replace")
    except TimeoutError:
        raise CCCatalogError(f"{url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CCCatalogError(f"{url}: {reason}") from None
    finally:
        conn.close()
    return ProbeResult(url, response.status, body, time.monotonic() - started)
