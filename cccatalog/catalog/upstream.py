"""`upstream` sources: a collection's refs as another catalog publishes them (RunWhen's public catalog,
a connected cccatalog, or the predecessor), so a site's catalog can ride on another one.

One GET per collection: `{upstream_url}/api/v1/catalog/codecollections/{slug}/refs`, the URL from the
collection's `upstream_url` or else the source's `options.upstream_url`. The rows are re-published as
they are, trusting the upstream's `is_latest` and `is_prerelease`; `stable` is derived here as for a
registry (the refs answer does not say it), as the predecessor did. A 404 means the upstream has no
refs for the slug; any other failure raises, and the caller keeps the previous rows.

The source's `auth` block is sent as `Authorization` (token_env: Bearer; user_env + pass_env or a
Docker config entry for the upstream host: Basic) — only to the configured upstream's origin:
redirects are followed by hand and a hop to another scheme, host or port goes without it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from cccatalog import __version__
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.config import CodeCollection, Source
from cccatalog.credentials import authorization, credentials_from, url_host
from cccatalog.errors import CCCatalogError
from cccatalog.oci.resolve import parse_created
from cccatalog.oci.tags import catalog_prerelease, parse_semver, stable_ref
from cccatalog.redact import Redactor

REFS_PATH = "/api/v1/catalog/codecollections/{slug}/refs"
_MAX_REDIRECTS = 5
# A refs answer is a few KB per hundred refs; anything near this is not a catalog.
_MAX_BODY = 32 * 1024 * 1024


class UpstreamError(CCCatalogError):
    """Another catalog did not answer with refs."""


class UpstreamCatalog:
    """Reads refs from other catalogs for the collections of one `upstream` source."""

    def __init__(
        self,
        source: Source,
        *,
        environ: Mapping[str, str],
        redactor: Redactor,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.source = source
        self._environ = environ
        self._redactor = redactor
        self._http = httpx.Client(
            timeout=httpx.Timeout(source.timeout_seconds),
            max_redirects=_MAX_REDIRECTS,
            headers={"User-Agent": f"cccatalog/{__version__}", "Accept": "application/json"},
            transport=transport,
        )
        self._lock = threading.Lock()
        self._authorization: dict[str, str | None] = {}

    def close(self) -> None:
        self._http.close()

    def refs(self, cc: CodeCollection, upstream_url: str) -> list[ImageRefRecord]:
        """The active refs `upstream_url` publishes for `cc.slug` ([] when it has none: a 404)."""
        url = upstream_url.rstrip("/") + REFS_PATH.format(slug=quote(cc.slug, safe=""))
        payload = self._get_json(url)
        return [] if payload is None else rows(cc, payload, shown=url)

    def _credentials(self, host: str) -> str | None:
        """The Authorization value for the upstream `host`, read from the environment once."""
        with self._lock:
            if host not in self._authorization:
                self._authorization[host] = self._read_credentials(host)
            return self._authorization[host]

    def _read_credentials(self, host: str) -> str | None:
        key = f"sources[{self.source.name}].auth"
        creds = credentials_from(self.source.auth, key=key, host=host, environ=self._environ)
        if creds is None:
            return None
        self._redactor.add(*creds.secrets)
        return authorization(creds)

    def _get_json(self, url: str) -> object | None:
        headers = {}
        if value := self._credentials(url_host(url) or ""):
            headers["Authorization"] = value
        try:
            # httpx follows redirects and drops Authorization when one leads to another origin.
            with self._http.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise UpstreamError(f"upstream catalog {url}: HTTP {response.status_code}")
                body = _read_capped(response, url)
        except httpx.TimeoutException:
            timeout = self.source.timeout_seconds
            raise UpstreamError(
                f"upstream catalog {url}: no answer within {timeout:g} s (sources[].options.timeout)"
            ) from None
        except httpx.TooManyRedirects:
            raise UpstreamError(f"upstream catalog {url}: more than {_MAX_REDIRECTS} redirects") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream catalog {url}: {type(exc).__name__}: {exc}") from None
        try:
            payload: object = json.loads(body)
        except (ValueError, RecursionError):
            raise UpstreamError(f"upstream catalog {url}: the answer is not JSON") from None
        return payload


def _read_capped(response: httpx.Response, url: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > _MAX_BODY:
            raise UpstreamError(f"upstream catalog {url}: answer larger than {_MAX_BODY // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) and value else None


def rows(cc: CodeCollection, payload: object, *, shown: str) -> list[ImageRefRecord]:
    """The upstream's ImageRef list as rows of `cc`. Flags the upstream leaves out (an old catalog)
    are derived as for a registry: latest from default_ref, pre-release from the ref."""
    if not isinstance(payload, list):
        raise UpstreamError(f"upstream catalog {shown}: expected a JSON list of refs")
    items: list[Mapping[str, Any]] = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict) or not _text(item, "ref") or not _text(item, "image_tag"):
            raise UpstreamError(f"upstream catalog {shown}: entry {i} has no 'ref' and 'image_tag'")
        if item.get("is_active") is not False:
            items.append(item)
    names = {str(item["ref"]) for item in items}
    trusts_latest = any("is_latest" in item for item in items)
    latest = next((str(i["ref"]) for i in items if i.get("is_latest") is True), None)
    if not trusts_latest:
        latest = cc.default_ref if cc.default_ref in names else None
    stable = stable_ref(names) or latest
    result = []
    for item in items:
        ref = str(item["ref"])
        ref_type = _text(item, "ref_type") or ("tag" if parse_semver(ref) else "branch")
        built_at: datetime | None = parse_created(item.get("image_built_at"))
        pre = item.get("is_prerelease")
        result.append(
            ImageRefRecord(
                slug=cc.slug,
                ref=ref,
                ref_type=ref_type,
                image_registry=_text(item, "image_registry") or cc.image_registry,
                image_tag=str(item["image_tag"]),
                image_digest=_text(item, "image_digest"),
                commit_hash=_text(item, "commit_hash"),
                rt_revision=_text(item, "rt_revision"),
                image_built_at=built_at,
                built_at_source=_text(item, "built_at_source") or ("upstream" if built_at else None),
                is_latest=ref == latest,
                is_prerelease=pre
                if isinstance(pre, bool)
                else catalog_prerelease(ref, ref_type, is_stable=ref == stable),
                is_stable=ref == stable,
            )
        )
    return result
