"""The registry client: every registry HTTP call goes through here, on one `httpx.Client`.

Auth through `oci.auth.RegistryTokenAuth`, httpx's auth hook (anonymous token flow, Basic at the token
server or directly, static bearer, a token cache); redirects followed by httpx, which drops
`Authorization` when a redirect leads to another origin; tag listing with pagination (relative
`Link`s, and Artifactory's that drop the repository prefix); manifests and blobs with the full Accept
list, verified by digest and cached on disk; retries with backoff on 429/5xx honouring `Retry-After`;
a per-host concurrency limit. `counts` says how many requests of each kind were sent.
A tag's manifest costs one request either way: a HEAD when the cache already holds where the tag
pointed last time, else a GET by tag (body and digest at once).

For `oci.copy`: HEAD of blobs and manifests and a streamed blob GET verified as it passes; the
writes (uploads, mounts, manifest PUTs) are `oci.push.RegistryPush`'s methods, which this class
inherits and which send through the same `_send`. An upload `Location` on another origin is sent no
credentials at all.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import httpx

from cccatalog import __version__
from cccatalog.errors import RegistryError
from cccatalog.oci.answers import (
    OCI_INDEX,
    OCI_MANIFEST,
    Hasher,
    backoff,
    json_object,
    media_type,
    next_page,
    origin,
    raise_for,
    unauthorized,
)
from cccatalog.oci.auth import KIND, RegistryAuth, RegistryTokenAuth, TokenCache, TokenRefused
from cccatalog.oci.cache import BlobCache, DigestMismatch, sha256_digest
from cccatalog.oci.push import RegistryPush
from cccatalog.oci.reference import Repository

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
# Without the full list distribution answers with schema1, or a misleading 404 for an index.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_V2))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

log = logging.getLogger("cccatalog.oci")

_MAX_REDIRECTS = 5
_MAX_PAGES = 1000
# Requests in flight to one registry host. Against a registry 20 ms away, 16 resolve 200 tags 2-3x
# faster than 4 (benchmarks/resolve); on loopback, where client and registry share the CPU, it is a wash.
DEFAULT_PER_HOST = 16
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):
            raise RegistryError(f"manifest {self.digest} is not JSON (or is nested too deeply)") from None
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return data


class RegistryClient(RegistryPush):
    def __init__(
        self,
        *,
        auth_for: Callable[[str], RegistryAuth | None] | None = None,
        cache: BlobCache | None = None,
        http: httpx.Client | None = None,
        per_host: int = DEFAULT_PER_HOST,
        retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.auth_for = auth_for or (lambda host: None)
        self.cache = cache
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=10.0),
            headers={"User-Agent": f"cccatalog/{__version__}"},
            # every request the per-host limit lets through keeps its connection, plus as many again
            # for where registries redirect blobs to (storage) and their token servers
            limits=httpx.Limits(max_keepalive_connections=2 * max(1, per_host)),
            max_redirects=_MAX_REDIRECTS,
        )
        hooks = self.http.event_hooks
        self.http.event_hooks = {
            "request": [*hooks.get("request", []), self._count],
            "response": [*hooks.get("response", []), _log_response],
        }
        self.tokens = TokenCache()
        self._auth = RegistryTokenAuth(self.auth_for, self.tokens)
        self.counts: Counter[str] = Counter()
        self.retries = retries
        self._sleep = sleep
        self._per_host = max(1, per_host)
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API -------------------------------------------------------------------------

    def list_tags(self, repo: Repository) -> list[str]:
        """Every tag, across pages. `null` entries some registries send are skipped."""
        base = f"{repo.base_url}/v2/{repo.path}/tags/list"
        url: str | None = f"{base}?n=1000"
        tags: list[str] = []
        seen: set[str] = set()
        while url and url not in seen and len(seen) < _MAX_PAGES:
            seen.add(url)
            resp = self._send(repo, "GET", url, kind="tags")
            if resp.status_code == 404:
                raise RegistryError(f"{repo.name}: repository not found (404)", status=404)
            raise_for(resp, repo, "listing tags")
            page = json_object(resp, repo).get("tags") or []
            tags.extend(t for t in page if isinstance(t, str))
            url = next_page(resp.headers.get("Link", ""), url, base)
        return tags

    def head_manifest(self, repo: Repository, reference: str) -> str:
        """The digest a tag points at now (tags are mutable: asked every run)."""
        url = f"{repo.base_url}/v2/{repo.path}/manifests/{reference}"
        resp = self._send(repo, "HEAD", url, kind="manifest-head", headers={"Accept": MANIFEST_ACCEPT})
        raise_for(resp, repo, f"resolving {reference}")
        digest: str = resp.headers.get("Docker-Content-Digest", "")
        if digest:
            return digest
        return self._get_manifest_uncached(repo, reference).digest  # registries that omit the header

    def tag_manifest(self, repo: Repository, tag: str, *, last_digest: str | None = None) -> Manifest:
        """The manifest a tag points at now (tags are mutable: asked every run).

        When `last_digest` (where the tag pointed last time) is cached, a HEAD says whether it still
        does, and a tag that has not moved costs no body. Otherwise a GET by tag brings body and digest
        in one request, where HEAD then GET would take two.
        """
        if last_digest and self.cache is not None and (cached := self.cache.get(last_digest)) is not None:
            digest = self.head_manifest(repo, tag)
            if digest == last_digest:
                return Manifest(digest, media_type(cached), cached)
            return self.get_manifest(repo, digest)
        return self._get_manifest_uncached(repo, tag)

    def last_digests(self, repo: Repository) -> dict[str, str]:
        """tag -> digest as last seen by any run on this cache: a hint for `tag_manifest`, no more."""
        return self.cache.tag_digests(_cache_key(repo)) if self.cache is not None else {}

    def remember_digests(self, repo: Repository, digests: Mapping[str, str]) -> None:
        if self.cache is not None:
            with suppress(OSError):  # an unwritable cache costs requests next time, not correctness
                self.cache.put_tag_digests(_cache_key(repo), digests)

    def get_manifest(self, repo: Repository, digest: str) -> Manifest:
        """A manifest by digest: from the cache, or fetched, verified and cached."""
        if self.cache is not None and (body := self.cache.get(digest)) is not None:
            return Manifest(digest, media_type(body), body)
        return self._get_manifest_uncached(repo, digest)

    def get_blob(self, repo: Repository, digest: str) -> bytes:
        if self.cache is not None and (body := self.cache.get(digest)) is not None:
            return body
        url = f"{repo.base_url}/v2/{repo.path}/blobs/{digest}"
        resp = self._send(repo, "GET", url, kind="blob")
        raise_for(resp, repo, f"fetching blob {digest}")
        return self._verified(digest, resp.content, repo)

    # --- what a copy reads (its writes: `oci.push.RegistryPush`) -----------------------------------

    def find_manifest(self, repo: Repository, reference: str) -> str | None:
        """The digest `reference` (a tag or digest) names in `repo`, None when there is none."""
        url = f"{repo.base_url}/v2/{repo.path}/manifests/{reference}"
        resp = self._send(repo, "HEAD", url, kind="manifest-head", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        raise_for(resp, repo, f"looking for {reference}")
        digest: str = resp.headers.get("Docker-Content-Digest", "")
        return digest or self._get_manifest_uncached(repo, reference).digest

    def blob_size(self, repo: Repository, digest: str) -> int | None:
        """The size of a blob `repo` holds (HEAD), None when it holds none."""
        resp = self._send(repo, "HEAD", f"{repo.base_url}/v2/{repo.path}/blobs/{digest}", kind="blob-head")
        if resp.status_code == 404:
            return None
        raise_for(resp, repo, f"looking for blob {digest}")
        return int(resp.headers.get("Content-Length", "0"))

    def iter_blob(self, repo: Repository, digest: str, *, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """A blob as it arrives, verified: the last chunk is held back until the whole blob hashes to
        `digest`, so whoever passes the chunks on (an upload, a file) never completes a wrong blob —
        a mismatch raises RegistryError instead. Memory stays at one or two chunks."""
        url = f"{repo.base_url}/v2/{repo.path}/blobs/{digest}"
        resp = self._send(repo, "GET", url, kind="blob", stream=True)
        try:
            raise_for(resp, repo, f"fetching blob {digest}")
            hasher = Hasher(digest, what=f"{repo.name}: blob {digest}")
            yield from hasher.verified(resp.iter_bytes(chunk_size))
        except httpx.HTTPError as exc:
            raise RegistryError(f"{repo.name}: fetching blob {digest} failed: {type(exc).__name__}") from None
        finally:
            resp.close()

    def head_status(self, repo: Repository, url: str) -> tuple[int, str | None]:
        """HEAD a manifest at a URL of the registry's own origin that is not its `/v2/` path
        (Artifactory's Docker API path): the status and digest, nothing raised for a 4xx or 5xx (the
        caller says what each means). A 401 after presenting the credentials raises, as everywhere."""
        resp = self._send(repo, "HEAD", url, kind="manifest-head", headers={"Accept": MANIFEST_ACCEPT})
        resp.close()
        return resp.status_code, resp.headers.get("Docker-Content-Digest")

    def post_json(self, repo: Repository, url: str, body: Mapping[str, object]) -> int:
        """POST a JSON body to an API beside the registry, on its origin and with its credentials
        (Xray's scan request); the status, nothing raised for a 4xx or 5xx. Sent once."""
        resp = self._send(
            repo,
            "POST",
            url,
            kind="api",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            retry=False,
        )
        resp.close()
        return resp.status_code

    # --- internals --------------------------------------------------------------------------

    def _get_manifest_uncached(self, repo: Repository, reference: str) -> Manifest:
        url = f"{repo.base_url}/v2/{repo.path}/manifests/{reference}"
        resp = self._send(repo, "GET", url, kind="manifest", headers={"Accept": MANIFEST_ACCEPT})
        raise_for(resp, repo, f"fetching manifest {reference}")
        body = resp.content
        digest = (
            reference
            if reference.startswith("sha256:")
            else resp.headers.get("Docker-Content-Digest") or sha256_digest(body)
        )
        body = self._verified(digest, body, repo)
        media = resp.headers.get("Content-Type", "").split(";")[0].strip() or media_type(body)
        return Manifest(digest, media, body)

    def _verified(self, digest: str, body: bytes, repo: Repository) -> bytes:
        if digest.startswith("sha256:") and sha256_digest(body) != digest:
            raise RegistryError(f"{repo.name}: content of {digest} does not match its digest")
        if self.cache is not None:
            with suppress(DigestMismatch, OSError):  # an unwritable cache costs requests, not correctness
                self.cache.put(digest, body)
        return body

    def _count(self, request: httpx.Request) -> None:
        """Every request sent (redirect hops and token requests too), by method and kind."""
        kind = request.extensions.get(KIND, "other")
        with self._lock:  # `+=` on a Counter is not atomic across threads: a lost count misreports
            self.counts[f"{request.method} {kind}"] += 1

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            if host not in self._slots:
                self._slots[host] = threading.BoundedSemaphore(self._per_host)
            return self._slots[host]

    def _send(
        self,
        repo: Repository,
        method: str,
        url: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """One request with auth (`RegistryTokenAuth`), redirects (httpx drops Authorization when one
        leads to another origin), and retries with backoff on 429 and 5xx (`retry=False` for a body
        that cannot be sent twice). `stream`: the caller reads the body and closes the response.
        A URL on another origin than the registry's (an upload `Location` pointing elsewhere) is sent
        without any credentials: they belong to the registry alone."""
        request = self.http.build_request(
            method, url, headers=headers, content=content, extensions={KIND: kind}
        )
        auth: httpx.Auth | None = self._auth if origin(url) == repo.base_url else None
        attempt = 0
        while True:
            with self._slot(repo.host):
                try:
                    resp = self.http.send(request, auth=auth, follow_redirects=True, stream=stream)
                except TokenRefused as exc:
                    if exc.status in (401, 403):
                        raise RegistryError(
                            f"{unauthorized(repo, self.auth_for(repo.host))} ({exc})", status=exc.status
                        ) from None
                    raise RegistryError(f"{repo.name}: getting a token failed: {exc}") from None
                except httpx.TooManyRedirects:
                    raise RegistryError(f"{origin(url)}: too many redirects") from None
                except httpx.HTTPError as exc:
                    raise RegistryError(f"{origin(url)}: {type(exc).__name__}: {exc}") from None
            if resp.status_code == 401:
                resp.close()
                # still refused after presenting what we have: a credentials problem, said as one
                raise RegistryError(unauthorized(repo, self.auth_for(repo.host)), status=401)
            if (resp.status_code == 429 or resp.status_code >= 500) and retry and attempt < self.retries:
                resp.close()
                self._sleep(backoff(attempt, resp.headers.get("Retry-After")))
                attempt += 1
                continue
            return resp


def _log_response(response: httpx.Response) -> None:
    request = response.request
    log.debug("%s %s -> %d", request.method, request.url, response.status_code)


def _cache_key(repo: Repository) -> str:
    return f"{repo.host}/{repo.path}"
