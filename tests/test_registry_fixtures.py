"""The registry fixtures are real: what they push, distribution serves and skopeo reads back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.registry import (
    ALL_MANIFESTS,
    ATTESTATION_ANNOTATION,
    DOCKER_MANIFEST,
    ISSUER,
    OCI_INDEX,
    OCI_MANIFEST,
    SERVICE,
    ChallengeAuth,
    Kind,
    RunningRegistry,
    basic_header,
    lying_last_modified_proxy,
    parse_challenge,
    push_image,
    registry_client,
    running_registry,
    skopeo_inspect_config,
    tag_existing,
)

CREATED = "2024-05-01T10:00:00.123456789+02:00"


@pytest.fixture(params=["anonymous", "basic", "token"])
def registry(
    request: pytest.FixtureRequest,
    registry_anon: RunningRegistry,
    registry_basic: RunningRegistry,
    registry_token: RunningRegistry,
) -> RunningRegistry:
    return {"anonymous": registry_anon, "basic": registry_basic, "token": registry_token}[request.param]


def get_manifest(registry: RunningRegistry, repo: str, reference: str) -> httpx.Response:
    with registry_client(registry) as client:
        response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": ALL_MANIFESTS})
    response.raise_for_status()
    return response


@pytest.mark.parametrize(
    ("kind", "media_type"), [("docker-v2", DOCKER_MANIFEST), ("oci", OCI_MANIFEST), ("oci-index", OCI_INDEX)]
)
def test_pushed_image_reads_back_with_its_created_date(
    registry: RunningRegistry, kind: Kind, media_type: str
) -> None:
    repo = f"readback/{registry.mode}-{kind}"
    pushed = push_image(registry, repo, "main-1234567-89abcde", created=CREATED, kind=kind)

    served = get_manifest(registry, repo, pushed.tag)
    assert served.headers["Content-Type"] == media_type == pushed.media_type
    assert served.headers["Docker-Content-Digest"] == pushed.digest
    config = skopeo_inspect_config(registry, f"{repo}:{pushed.tag}", creds=registry.creds)
    assert config["created"] == CREATED
    assert config["architecture"] == "amd64"


def test_index_lists_attestation_first_then_platforms(registry_anon: RunningRegistry) -> None:
    pushed = push_image(
        registry_anon,
        "index/layout",
        "main-1111111-2222222",
        created="2024-01-02T03:04:05Z",
        kind="oci-index",
        annotations={"org.opencontainers.image.created": "2023-12-31T00:00:00Z"},
        platform_created={"linux/arm64": "2020-06-01T00:00:00Z"},
    )

    index = get_manifest(registry_anon, "index/layout", pushed.tag).json()
    entries = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert entries == [("unknown", "unknown"), ("linux", "amd64"), ("linux", "arm64")]
    assert index["manifests"][0]["annotations"][ATTESTATION_ANNOTATION] == "attestation-manifest"
    assert index["annotations"] == {"org.opencontainers.image.created": "2023-12-31T00:00:00Z"}
    assert [m["digest"] for m in index["manifests"]] == [
        pushed.platform_digests[key] for key in ("unknown/unknown", "linux/amd64", "linux/arm64")
    ]
    amd64 = get_manifest(registry_anon, "index/layout", pushed.platform_digests["linux/amd64"]).json()
    assert amd64["config"]["digest"] == pushed.config_digest
    arm64 = skopeo_inspect_config(registry_anon, "index/layout:main-1111111-2222222", arch="arm64")
    assert arm64["created"] == "2020-06-01T00:00:00Z"


def test_image_without_created_has_no_created_in_its_config(registry_anon: RunningRegistry) -> None:
    pushed = push_image(registry_anon, "nocreated/cc", "main-aaaaaaa-bbbbbbb", created=None, kind="oci")

    assert pushed.created is None
    assert "created" not in skopeo_inspect_config(registry_anon, "nocreated/cc:main-aaaaaaa-bbbbbbb")


def test_docker_v2_push_refuses_annotations(registry_anon: RunningRegistry) -> None:
    with pytest.raises(ValueError, match="annotations"):
        push_image(registry_anon, "x/y", "t", created=None, kind="docker-v2", annotations={"a": "b"})


def test_two_tags_on_one_digest_resolve_to_the_same_digest(registry: RunningRegistry) -> None:
    repo = f"twotags/{registry.mode}"
    pushed = push_image(registry, repo, "main-1234567-7654321", created=CREATED, kind="oci-index")

    assert tag_existing(registry, repo, "v1.2.0", pushed.digest) == pushed.digest
    with registry_client(registry) as client:
        heads = [
            client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
            for tag in ("main-1234567-7654321", "v1.2.0")
        ]
        tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert [h.headers["Docker-Content-Digest"] for h in heads] == [pushed.digest, pushed.digest]
    assert sorted(tags) == ["main-1234567-7654321", "v1.2.0"]


def test_repushing_a_tag_moves_it_to_a_new_digest(registry_anon: RunningRegistry) -> None:
    first = push_image(registry_anon, "repush/cc", "main-1234567-7654321", created=CREATED)
    second = push_image(registry_anon, "repush/cc", "main-1234567-7654321", created=CREATED)

    assert first.digest != second.digest
    served = get_manifest(registry_anon, "repush/cc", "main-1234567-7654321")
    assert served.headers["Docker-Content-Digest"] == second.digest


def test_basic_registry_challenges_with_basic(registry_basic: RunningRegistry) -> None:
    anonymous = httpx.get(f"{registry_basic.url}/v2/")
    assert registry_basic.username is not None
    assert registry_basic.password is not None
    authorised = httpx.get(
        f"{registry_basic.url}/v2/",
        headers={"Authorization": basic_header(registry_basic.username, registry_basic.password)},
    )

    assert anonymous.status_code == 401
    scheme, params = parse_challenge(anonymous.headers["WWW-Authenticate"])
    assert (scheme, set(params)) == ("basic", {"realm"})
    assert authorised.status_code == 200


def test_token_registry_challenges_with_bearer_realm_and_service(registry_token: RunningRegistry) -> None:
    assert registry_token.token_server is not None

    response = httpx.get(f"{registry_token.url}/v2/")

    assert response.status_code == 401
    scheme, params = parse_challenge(response.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == registry_token.token_server.realm
    assert params["service"] == SERVICE


def test_token_server_records_the_anonymous_pull_mint(registry_token: RunningRegistry) -> None:
    server = registry_token.token_server
    assert server is not None
    push_image(registry_token, "mints/cc", "main-1234567-7654321", created=CREATED)
    before = len(server.mints)

    skopeo_inspect_config(registry_token, "mints/cc:main-1234567-7654321")

    new = server.mints[before:]
    assert len(new) >= 1
    assert all(not mint.has_authorization for mint in new)
    assert ("repository", "mints/cc", ("pull",)) in [grant for mint in new for grant in mint.granted]


def test_token_server_issues_es256_jwt_with_x5c_and_exact_access(registry_token: RunningRegistry) -> None:
    server = registry_token.token_server
    assert server is not None
    response = httpx.get(
        server.realm,
        params={"service": SERVICE, "scope": "repository:team/cc:pull,push"},
        headers={"Authorization": basic_header("robot", str(registry_token.password))},
    )

    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"token", "expires_in", "issued_at"}
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256"
    assert len(header["x5c"]) == 1
    public_key = server.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    claims = jwt.decode(body["token"], public_key, algorithms=["ES256"], audience=SERVICE, issuer=ISSUER)
    assert claims["sub"] == "robot"
    assert claims["access"] == [{"type": "repository", "name": "team/cc", "actions": ["pull", "push"]}]
    assert {"exp", "nbf", "iat", "jti"} <= set(claims)


def test_token_server_rejects_bad_credentials_and_limits_anonymous_to_pull(
    registry_token: RunningRegistry,
) -> None:
    server = registry_token.token_server
    assert server is not None
    scope = {"service": SERVICE, "scope": "repository:team/cc:pull,push"}

    wrong = httpx.get(server.realm, params=scope, headers={"Authorization": basic_header("robot", "nope")})
    anonymous = httpx.get(server.realm, params=scope)

    assert wrong.status_code == 401
    claims = jwt.decode(anonymous.json()["token"], options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "team/cc", "actions": ["pull"]}]


def test_access_token_field_and_private_pull_work_with_skopeo(tmp_path: Path) -> None:
    with running_registry(
        tmp_path / "reg", "token", token_field="access_token", expires_in=None, anonymous_pull=False
    ) as registry:
        assert registry.token_server is not None
        push_image(registry, "private/cc", "main-1234567-7654321", created=CREATED, kind="docker-v2")

        with pytest.raises(RuntimeError, match="skopeo inspect failed"):
            skopeo_inspect_config(registry, "private/cc:main-1234567-7654321")
        config = skopeo_inspect_config(registry, "private/cc:main-1234567-7654321", creds=registry.creds)
        token_body = registry.token_server.handle("/token?service=x&scope=repository:a:pull", None)[1]

    assert config["created"] == CREATED
    assert set(token_body) == {"access_token", "issued_at"}


def test_proxy_replaces_last_modified_and_records_requests(registry_token: RunningRegistry) -> None:
    repo = "jfrog/cc"
    older = push_image(registry_token, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    newer = push_image(registry_token, repo, "main-bbbbbbb-2222222", created="2024-06-01T00:00:00Z")
    stamps = {
        f"/v2/{repo}/manifests/{older.tag}": "Wed, 01 Jan 2025 00:00:00 GMT",
        f"/v2/{repo}/manifests/{newer.tag}": "Mon, 01 Jan 2024 00:00:00 GMT",
    }

    with lying_last_modified_proxy(registry_token.url, stamps.get) as proxy:
        auth = ChallengeAuth(registry_token.username, registry_token.password)
        with httpx.Client(base_url=proxy.url, auth=auth) as client:
            got = {
                tag: client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
                for tag in (older.tag, newer.tag)
            }
            head = client.head(f"/v2/{repo}/manifests/{older.tag}", headers={"Accept": ALL_MANIFESTS})
            blob = client.get(f"/v2/{repo}/blobs/{older.config_digest}")
        through_proxy = skopeo_inspect_config(proxy, f"{repo}:{older.tag}")

    assert got[older.tag].headers["Last-Modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert got[newer.tag].headers["Last-Modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert got[older.tag].headers["Docker-Content-Digest"] == older.digest
    assert head.headers["Last-Modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert int(head.headers["Content-Length"]) == len(got[older.tag].content)
    assert "Last-Modified" not in blob.headers
    assert json.loads(blob.content)["created"] == "2024-01-01T00:00:00Z"
    assert through_proxy["created"] == "2024-01-01T00:00:00Z"
    assert {(r.method, r.path) for r in proxy.requests} >= {("GET", p) for p in stamps}
    assert any(r.has_authorization for r in proxy.requests)
    assert any(r.status == 401 and not r.has_authorization for r in proxy.requests)
