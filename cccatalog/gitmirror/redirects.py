"""Upstream redirects: what git is told about them, and how a sync reads and explains one.

git applies `http.<url>.*` settings, matched once against the configured URL, to every request of a
run, including those it sends to wherever an `info/refs` redirect moved it: with the default
`http.followRedirects=initial`, git 2.39 sends its POSTs to another host *with* the configured
`extraHeader` (curl drops the header from the redirected GET, git does not from what follows). So
when credentials are configured git is told not to follow redirects at all; a sync then asks where
the redirect pointed and follows it itself only within the configured origin.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from cccatalog.redact import strip_url_credentials

MAX_HOPS = 3
NO_REDIRECTS = {"http.followRedirects": "false"}

_REFUSED = re.compile(r"The requested URL returned error: 3\d\d\b")
_FOLLOWED = re.compile(r"^warning: redirecting to (\S+)$", re.MULTILINE)
_LOCATION = re.compile(r"<= Recv header: Location: *(\S+)", re.IGNORECASE)
_ADVERTISEMENT = "/info/refs"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def refused_redirect(stderr: str) -> bool:
    """Did git stop at a redirect it was told not to follow?"""
    return bool(_REFUSED.search(stderr))


def followed_redirect(stderr: str) -> str | None:
    """Where git followed a redirect to (it says so on stderr), without credentials."""
    found = _FOLLOWED.findall(stderr)
    return strip_url_credentials(found[-1]) if found else None


def location_from_trace(trace: str) -> str | None:
    """The last Location header in a `GIT_TRACE_CURL` trace."""
    found = _LOCATION.findall(trace)
    return found[-1] if found else None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what "same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def show_origin(url: str) -> str:
    scheme, host, port = origin(url)
    default = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def repository_base(current_url: str, location: str) -> str | None:
    """The repository URL a redirect of `<current_url>/info/refs?...` points to, or None when the
    Location is not the advertisement of a repository (then there is nothing to follow)."""
    absolute = urljoin(current_url.rstrip("/") + _ADVERTISEMENT, location)
    parts = urlsplit(absolute)
    if not parts.path.endswith(_ADVERTISEMENT):
        return None
    path = parts.path.removesuffix(_ADVERTISEMENT)
    return f"{parts.scheme}://{parts.netloc}{path}" if path else None


def shown(location: str, current_url: str) -> str:
    """A redirect target as it may be printed and stored: absolute, no credentials, no query."""
    absolute = urljoin(current_url.rstrip("/") + _ADVERTISEMENT, location)
    return strip_url_credentials(absolute.split("?", 1)[0])
