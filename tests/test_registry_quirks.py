"""Registry behaviour a real distribution 2.8 cannot produce, through httpx.MockTransport:
pagination styles, 429 with Retry-After, cross-host redirects, token expiry, null tags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.credentials import BasicCredentials
from cccatalog.errors import RegistryError
from cccatalog.oci.auth import RegistryAuth, parse_challenge
from cccatalog.oci.cache import BlobCache, sha256_digest
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.reference import parse_reference

Handler = Callable[[httpx.Request], httpx.Response]
REPO, _ = parse_reference("registry.example.com/team/cc")


def client(handler: Handler, **kwargs: object) -> tuple[RegistryClient, list[float]]:
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return RegistryClient(http=http, sleep=sleeps.append, **kwargs), sleeps  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "link",
    [
        '</v2/team/cc/tags/list?n=2&last={last}>; rel="next"',  # relative (distribution)
        '<https://registry.example.com/v2/team/cc/tags/list?n=2&last={last}>; rel="next"',  # absolute
        '</v2/cc/tags/list?last={last}&n=2>; rel="next"',  # Artifactory: repository-key prefix dropped
    ],
    ids=["relative", "absolute", "artifactory"],
)
def test_tag_listing_follows_every_pagination_style(link: str) -> None:
    pages: dict[str | None, list[str | None]] = {None: ["a", "b"], "b": [None, "c"], "c": ["d"]}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v2/team/cc/tags/list"
        last = request.url.params.get("last")
        tags = pages[last]
        headers = {"Link": link.format(last=[t for t in tags if t][-1])} if last != "c" else {}
        return httpx.Response(200, json={"name": "team/cc", "tags": tags}, headers=headers)

    c, _ = client(handler)
    assert c.list_tags(REPO) == ["a", "b", "c", "d"]
    assert c.counts["GET tags"] == 3


def test_429_and_5xx_are_retried_honouring_retry_after() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(503),
            httpx.Response(200, json={"tags": ["x"]}),
        ]
    )
    c, sleeps = client(lambda request: next(answers))
    assert c.list_tags(REPO) == ["x"]
    assert sleeps == [3.0, 1.0]


def test_retries_give_up_with_the_status() -> None:
    c, sleeps = client(lambda request: httpx.Response(502), retries=2)
    with pytest.raises(RegistryError, match="HTTP 502"):
        c.list_tags(REPO)
    assert len(sleeps) == 2


def test_blob_redirect_to_another_host_does_not_carry_authorization(tmp_path: Path) -> None:
    body = b'{"created": "2026-01-01T00:00:00Z"}'
    digest = sha256_digest(body)
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("Authorization")
        if request.url.host == "registry.example.com":
            return httpx.Response(
                307, headers={"Location": f"https://storage.example.net/blob?sig=1&d={digest}"}
            )
        return httpx.Response(200, content=body)

    creds = RegistryAuth(bearer="static-token")
    c, _ = client(handler, auth_for=lambda host: creds, cache=BlobCache(tmp_path))
    assert c.get_blob(REPO, digest) == body
    assert seen == {"registry.example.com": "Bearer static-token", "storage.example.net": None}
    assert c.get_blob(REPO, digest) == body  # second time from the disk cache
    assert c.counts["GET blob"] == 2  # the redirect hop and the storage fetch, once


def test_blob_with_wrong_content_is_refused_and_not_cached(tmp_path: Path) -> None:
    digest = sha256_digest(b"right")
    c, _ = client(lambda request: httpx.Response(200, content=b"wrong"), cache=BlobCache(tmp_path))
    with pytest.raises(RegistryError, match="does not match its digest"):
        c.get_blob(REPO, digest)
    assert BlobCache(tmp_path).get(digest) is None


def test_token_is_minted_once_and_again_only_after_it_expires() -> None:
    now = [1000.0]
    mints: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            mints.append(request.headers.get("Authorization"))
            return httpx.Response(200, json={"access_token": f"t{len(mints)}", "expires_in": 60})
        if request.headers.get("Authorization") != f"Bearer t{len(mints)}":
            challenge = 'Bearer realm="https://auth.example.com/token",service="registry.example.com"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, json={"tags": ["x"]})

    basic = BasicCredentials("robot", "pw")
    c, _ = client(handler, auth_for=lambda host: RegistryAuth(basic=basic))
    c.tokens._clock = lambda: now[0]
    for _ in range(3):
        c.list_tags(REPO)
    assert len(mints) == 1
    assert mints[0] == basic.authorization  # Basic credentials go to the token server
    now[0] += 61
    c.list_tags(REPO)
    assert len(mints) == 2
    assert c.counts["GET tags"] == 6  # 1 challenge + 3 with the token, then 1 challenge + 1 retry


def test_a_refused_static_token_is_a_clear_error_without_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/t"'})

    c, _ = client(handler, auth_for=lambda host: RegistryAuth(bearer="sekrit-token"))
    with pytest.raises(RegistryError) as info:
        c.list_tags(REPO)
    assert "refused the configured credentials" in str(info.value)
    assert "sekrit-token" not in str(info.value)


def test_basic_only_registry_gets_basic_after_its_challenge() -> None:
    basic = BasicCredentials("robot", "pw")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != basic.authorization:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})
        return httpx.Response(200, json={"tags": ["x"]})

    c, _ = client(handler, auth_for=lambda host: RegistryAuth(basic=basic))
    c.list_tags(REPO)
    c.list_tags(REPO)
    assert c.counts["GET tags"] == 3  # one challenge, then Basic straight away


def test_manifest_head_without_digest_header_falls_back_to_get() -> None:
    doc = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200)
        return httpx.Response(
            200, content=doc, headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        )

    c, _ = client(handler)
    assert c.head_manifest(REPO, "main-aaaaaaa-bbbbbbb") == sha256_digest(doc)


def test_manifest_got_by_tag_without_digest_header_is_named_by_its_sha256(tmp_path: Path) -> None:
    doc = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}}).encode()
    c, _ = client(lambda request: httpx.Response(200, content=doc), cache=BlobCache(tmp_path))

    found = c.tag_manifest(REPO, "main-aaaaaaa-bbbbbbb")

    assert (found.digest, found.body) == (sha256_digest(doc), doc)
    assert BlobCache(tmp_path).get(found.digest) == doc
    assert c.counts == {"GET manifest": 1}


def test_manifest_got_by_tag_that_does_not_match_its_digest_header_is_refused(tmp_path: Path) -> None:
    claimed = sha256_digest(b"another manifest")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}", headers={"Docker-Content-Digest": claimed})

    c, _ = client(handler, cache=BlobCache(tmp_path))
    with pytest.raises(RegistryError, match="does not match its digest"):
        c.tag_manifest(REPO, "main-aaaaaaa-bbbbbbb")
    assert not (tmp_path / "sha256").exists()  # neither name holds the content


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://a/token",service="reg",scope="repository:x:pull"',
            "bearer",
            {"realm": "https://a/token", "service": "reg", "scope": "repository:x:pull"},
        ),
        ("Basic realm=reg", "basic", {"realm": "reg"}),
        ('bearer realm="https://a/t?x=1,2"', "bearer", {"realm": "https://a/t?x=1,2"}),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert challenge is not None
    assert challenge.scheme == scheme
    assert challenge.params == params
