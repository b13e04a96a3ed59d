"""What registries answer, read: statuses as `RegistryError`s, `Link` paging, `Retry-After`, upload
`Location`s, media types, and sha256 over a stream. Pure functions over httpx responses; the requests
themselves are `oci.client`'s."""

from __future__ import annotations

import email.utils
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from cccatalog.errors import RegistryError
from cccatalog.oci.auth import RegistryAuth
from cccatalog.oci.reference import Repository

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MAX_RETRY_AFTER = 30.0


class Hasher:
    """sha256 over a stream, checked against the digest it should have."""

    def __init__(self, digest: str, *, what: str) -> None:
        if not digest.startswith("sha256:"):
            raise RegistryError(f"{what}: only sha256 digests are supported")
        self.digest = digest
        self.what = what
        self._hash = hashlib.sha256()

    def verified(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks` passed on, the last one only after the whole stream hashed to the digest."""
        held: bytes | None = None
        for chunk in chunks:
            if not chunk:
                continue
            self._hash.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if "sha256:" + self._hash.hexdigest() != self.digest:
            raise RegistryError(f"{self.what}: the content does not match its digest; refused")
        if held is not None:
            yield held


def rechunk(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def location(resp: httpx.Response, repo: Repository) -> str:
    """An upload's next URL: `Location` relative to the request or absolute (registries do both)."""
    location = resp.headers.get("Location")
    if not location:
        raise RegistryError(f"{repo.name}: the registry started an upload without a Location")
    return str(resp.request.url.join(location))


def with_digest(upload: str, digest: str) -> str:
    return str(httpx.URL(upload).copy_merge_params({"digest": digest}))


_MAX_ERROR_BODY = 64 * 1024


def expect(resp: httpx.Response, repo: Repository, doing: str, status: int) -> None:
    if resp.status_code != status:
        raise_for(resp, repo, doing)
        raise RegistryError(
            f"{repo.name}: {doing}: unexpected HTTP {resp.status_code}", status=resp.status_code
        )


def media_type(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict):
        media = data.get("mediaType")
        if isinstance(media, str):
            return media
        return OCI_INDEX if "manifests" in data else OCI_MANIFEST
    return ""


def json_object(resp: httpx.Response, repo: Repository) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise RegistryError(f"{repo.name}: {resp.request.url.path} did not answer JSON") from None
    except RecursionError:
        raise RegistryError(f"{repo.name}: {resp.request.url.path} answered JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{repo.name}: {resp.request.url.path} did not answer a JSON object")
    return data


def raise_for(resp: httpx.Response, repo: Repository, doing: str) -> None:
    if resp.status_code >= 400:
        errors = registry_errors(resp)
        said = f" ({'; '.join(f'{c}: {m}' if m else c for c, m in errors)})" if errors else ""
        raise RegistryError(
            f"{repo.name}: {doing} failed: HTTP {resp.status_code}{said}",
            status=resp.status_code,
            codes=tuple(code for code, _ in errors),
        )


def registry_errors(resp: httpx.Response) -> list[tuple[str, str]]:
    """(code, message) from a registry's error body (the distribution spec's `errors`), at most three.

    The code says what a bare status cannot: a 400 on a manifest PUT is `MANIFEST_BLOB_UNKNOWN` or
    `MANIFEST_INVALID` or `TAG_INVALID`. Only a body already read is looked at (a streamed one is left
    alone), only codes and messages are kept (never `detail`, which can echo the request), bounded.
    """
    try:
        body = resp.content
        data = json.loads(body) if len(body) <= _MAX_ERROR_BODY else None
    except (httpx.ResponseNotRead, ValueError, RecursionError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    found = []
    for error in errors[:3]:
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            message = error.get("message")
            found.append((error["code"][:64], message[:120] if isinstance(message, str) else ""))
    return found


def unauthorized(repo: Repository, auth: RegistryAuth | None) -> str:
    if auth is None or (auth.basic is None and auth.bearer is None):
        return f"{repo.name}: the registry wants credentials (name them in the source's auth block)"
    return f"{repo.name}: the registry refused the configured credentials (401)"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def next_page(link: str, current: str, base: str) -> str | None:
    """The next page from a `Link: <...>; rel="next"` header, rebuilt on our own repository path.

    Artifactory's links drop the repository-key prefix of the path; `last` and `n` are all we need.
    """
    for part in link.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' not in params.replace(" ", "") and "rel=next" not in params.replace(" ", ""):
            continue
        target = target.strip().removeprefix("<").removesuffix(">")
        query = parse_qs(urlsplit(target).query)
        if "last" in query:
            kept: dict[str, str] = {k: query[k][0] for k in ("n", "last") if k in query}
            return f"{base}?{urlencode(kept)}"
        return urljoin(current, target)
    return None


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before a retry: Retry-After (seconds or an HTTP date), else exponential."""
    seconds: float = 0.5 * 2**attempt
    if retry_after:
        value = retry_after.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            with suppress(TypeError, ValueError):  # not a date either: keep the exponential backoff
                when = email.utils.parsedate_to_datetime(value)
                seconds = max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return min(seconds, _MAX_RETRY_AFTER)
