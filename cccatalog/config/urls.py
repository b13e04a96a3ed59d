"""What the config accepts as a URL or an image repository: git upstreams, other catalogs, the public
clone base, `image_registry`. Each check returns the problem to report, or None; a URL is only ever
shown with its credentials masked."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from cccatalog.config.reader import quote
from cccatalog.names import REPOSITORY_COMPONENT_RE, split_registry_host
from cccatalog.redact import strip_url_credentials

GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+")


def registry_problem(value: str) -> str | None:
    shown = quote(strip_url_credentials(value))
    if "://" in value:
        return f"expected host/path without a scheme, like ghcr.io/org/repo; got {shown}"
    host, path = split_registry_host(value)
    components = path.split("/")
    if all(REPOSITORY_COMPONENT_RE.fullmatch(c) for c in components):
        return None
    if all(REPOSITORY_COMPONENT_RE.fullmatch(c) for c in path.lower().split("/")):
        lowered = f"{host}/{path.lower()}" if host else path.lower()
        return f"{shown}: registries only have lowercase repository paths; write {quote(lowered)}"
    return (
        f"expected host/path like ghcr.io/org/repo (lowercase letters, digits and . _ - between "
        f"slashes after the host); got {shown}"
    )


def git_url_problem(url: str) -> str | None:
    if "://" in url:
        hint = "credentials belong in environment variables named by git.auth"
        return url_problem(url, GIT_SCHEMES, hint)
    if url.startswith("/") or _SCP_RE.fullmatch(url):
        return None
    expected = ", ".join(f"{s}://" for s in GIT_SCHEMES) + ", user@host:path or an absolute path"
    return f"{quote(strip_url_credentials(url))} is not a git URL (expected {expected})"


def url_problem(url: str, schemes: Sequence[str], credentials_hint: str) -> str | None:
    shown = quote(strip_url_credentials(url))
    try:
        parts = urlsplit(url)
        scheme, host, password = parts.scheme.lower(), parts.hostname, parts.password
    except ValueError:
        return f"{shown} is not a valid URL"
    if scheme not in schemes:
        return f"{shown} has an unsupported scheme (expected {', '.join(s + '://' for s in schemes)})"
    # ssh://git@host is a user name, not a credential; in an http(s) URL any userinfo is one.
    if password is not None or ("@" in parts.netloc and scheme != "ssh"):
        return f"{shown} embeds credentials; {credentials_hint}"
    if not host and scheme != "file":
        return f"{shown} has no host"
    return None
