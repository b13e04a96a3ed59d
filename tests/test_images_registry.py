"""Newest build per ref against a real distribution 2.8: built_at per manifest kind (checked against
skopeo), resolution, the JFrog Last-Modified trap, request counts with a warm cache, the auth modes,
and the image half of `sync` and `resolve-latest` as a user meets them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from cccatalog.credentials import BasicCredentials
from cccatalog.errors import RegistryError
from cccatalog.oci.auth import RegistryAuth
from cccatalog.oci.cache import BlobCache
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.reference import Repository, parse_reference
from cccatalog.oci.resolve import RefResolution, resolve_repository
from tests.registry import (
    PASSWORD,
    USERNAME,
    Kind,
    LyingProxy,
    PushedImage,
    RunningRegistry,
    TokenServer,
    lying_last_modified_proxy,
    push_image,
    registry_client,
    running_registry,
    skopeo_inspect_config,
    tag_existing,
)

ANNOTATION = "org.opencontainers.image.created"
ROBOT = RegistryAuth(basic=BasicCredentials(USERNAME, PASSWORD))


def utc(
    year: int, month: int, day: int, hour: int = 0, *, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def unique(prefix: str) -> str:
    """A repository name no other test (or earlier run of this one) uses on the shared registries."""
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def repository(host: str, repo: str) -> Repository:
    parsed, _ = parse_reference(f"{host}/{repo}")
    return parsed


def new_client(auth: RegistryAuth | None = None, cache: BlobCache | None = None) -> RegistryClient:
    return RegistryClient(auth_for=lambda host: auth, cache=cache)


def resolve(client: RegistryClient, host: str, repo: str) -> dict[str, RefResolution]:
    return {r.ref: r for r in resolve_repository(client, repository(host, repo))}


def resolve_once(
    host: str, repo: str, *, auth: RegistryAuth | None = None, cache: BlobCache | None = None
) -> tuple[dict[str, RefResolution], dict[str, int]]:
    with new_client(auth, cache) as client:
        return resolve(client, host, repo), dict(client.counts)


def parse_rfc3339(value: str) -> datetime:
    """An independent reading of skopeo's `created` for whole-second Z dates."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def token_server(registry: RunningRegistry) -> TokenServer:
    assert registry.token_server is not None
    return registry.token_server


def delete_manifest(registry: RunningRegistry, repo: str, digest: str) -> None:
    """What `crane delete` does: the manifest goes, and every tag pointing at it with it."""
    with registry_client(registry) as client:
        response = client.delete(f"/v2/{repo}/manifests/{digest}")
    assert response.status_code == 202, (response.status_code, response.text)


# --- 1. built_at per manifest kind --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docker-v2", "oci", "oci-index"])
def test_built_at_is_the_config_created_for_every_manifest_kind(
    registry_anon: RunningRegistry, kind: Kind
) -> None:
    repo = unique(f"kinds-{kind}")
    # Textually "10:00+02:00" sorts above "09:00Z"; as instants it is an hour earlier. The older build
    # also has the higher tag, so neither string order nor tag order can pick the right one.
    older = push_image(
        registry_anon, repo, "main-fffffff-1111111", created="2024-05-01T10:00:00.123456789+02:00", kind=kind
    )
    newer = push_image(
        registry_anon, repo, "main-0000000-1111111", created="2024-05-01T09:00:00.5Z", kind=kind
    )

    resolved, _ = resolve_once(registry_anon.host, repo)

    for pushed in (older, newer):
        assert skopeo_inspect_config(registry_anon, f"{repo}:{pushed.tag}")["created"] == pushed.created
    main = resolved["main"]
    builds = {b.tag.tag: b for b in main.candidates}
    assert builds[older.tag].built_at == utc(2024, 5, 1, 8, micro=123456)
    assert builds[newer.tag].built_at == utc(2024, 5, 1, 9, micro=500000)
    assert {b.source for b in main.candidates} == {"config.created"}
    assert {b.tag.tag: b.digest for b in main.candidates} == {
        older.tag: older.digest,
        newer.tag: newer.digest,
    }
    assert main.newest.tag.tag == newer.tag


def test_index_built_at_is_the_amd64_config_not_the_attestation_or_another_platform(
    registry_anon: RunningRegistry,
) -> None:
    repo = unique("index-platform")
    index = push_image(
        registry_anon,
        repo,
        "main-aaaaaaa-1111111",
        created=None,  # the attestation entry (first in the index) has no created at all
        kind="oci-index",
        annotations={ANNOTATION: "2019-01-01T00:00:00Z"},  # the config wins over the annotation
        platform_created={"linux/amd64": "2024-03-03T03:03:03Z", "linux/arm64": "2030-01-01T00:00:00Z"},
    )
    other = push_image(registry_anon, repo, "main-bbbbbbb-1111111", created="2024-02-02T00:00:00Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    amd64 = skopeo_inspect_config(registry_anon, f"{repo}:{index.tag}", arch="amd64")["created"]
    builds = {b.tag.tag: b for b in resolved["main"].candidates}
    assert builds[index.tag].built_at == parse_rfc3339(amd64) == utc(2024, 3, 3, 3, minute=3, second=3)
    assert builds[index.tag].source == "config.created"
    assert builds[index.tag].digest == index.digest  # the index's digest, not the platform manifest's
    assert resolved["main"].newest.tag.tag == index.tag
    assert builds[other.tag].built_at == utc(2024, 2, 2)


@pytest.mark.parametrize("kind", ["oci", "oci-index"])
def test_annotation_dates_the_build_when_the_config_has_no_created(
    registry_anon: RunningRegistry, kind: Kind
) -> None:
    repo = unique(f"annotated-{kind}")
    annotated = push_image(
        registry_anon,
        repo,
        "main-aaaaaaa-1111111",
        created=None,
        kind=kind,
        annotations={ANNOTATION: "2024-07-01T12:00:00.987654321+02:00"},
    )
    dated = push_image(registry_anon, repo, "main-bbbbbbb-1111111", created="2024-07-01T09:59:59Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert "created" not in skopeo_inspect_config(registry_anon, f"{repo}:{annotated.tag}")
    builds = {b.tag.tag: b for b in resolved["main"].candidates}
    assert builds[annotated.tag].source == "annotation"
    assert builds[annotated.tag].built_at == utc(2024, 7, 1, 10, micro=987654)
    assert resolved["main"].newest.tag.tag == annotated.tag
    assert builds[dated.tag].source == "config.created"


def test_build_without_any_date_is_unknown_and_ranks_lowest(registry_anon: RunningRegistry) -> None:
    repo = unique("undated")
    undated = push_image(registry_anon, repo, "main-fffffff-fffffff", created=None, kind="oci")
    dated = push_image(registry_anon, repo, "main-0000000-0000000", created="2021-01-01T00:00:00Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert "created" not in skopeo_inspect_config(registry_anon, f"{repo}:{undated.tag}")
    builds = {b.tag.tag: b for b in resolved["main"].candidates}
    assert builds[undated.tag].source == "unknown"
    assert builds[undated.tag].built_at is None
    assert builds[undated.tag].digest == undated.digest
    assert resolved["main"].newest.tag.tag == dated.tag


@pytest.mark.parametrize(
    "created",
    [
        "0001-01-01T00:00:00Z",  # Go's zero time.Time
        "1970-01-01T00:00:00Z",  # SOURCE_DATE_EPOCH=0
        "1979-12-31T23:59:59.999999999Z",
        pytest.param(
            "0001-01-01T00:00:00+02:00",
            id="zero-with-offset",
        ),
    ],
)
def test_zero_and_pre_1980_dates_are_unknown_and_rank_lowest(
    registry_anon: RunningRegistry, created: str
) -> None:
    repo = unique("epoch")
    implausible = push_image(registry_anon, repo, "main-fffffff-1111111", created=created)
    # 23:00-02:00 on new year's eve 1979 is 01:00Z in 1980: plausible, only the UTC instant counts.
    plausible = push_image(registry_anon, repo, "main-0000000-1111111", created="1979-12-31T23:00:00-02:00")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert skopeo_inspect_config(registry_anon, f"{repo}:{implausible.tag}")["created"] == created
    builds = {b.tag.tag: b for b in resolved["main"].candidates}
    assert (builds[implausible.tag].built_at, builds[implausible.tag].source) == (None, "unknown")
    assert builds[plausible.tag].built_at == utc(1980, 1, 1, 1)
    assert resolved["main"].newest.tag.tag == plausible.tag


# --- 2. resolution ------------------------------------------------------------------------------------


def test_newest_build_wins_whatever_the_tag_hex_and_push_order(registry_anon: RunningRegistry) -> None:
    repo = unique("order")
    push_image(registry_anon, repo, "main-8888888-8888888", created="2024-02-01T00:00:00Z")
    newest = push_image(registry_anon, repo, "main-0000001-0000001", created="2024-03-01T00:00:00Z")
    push_image(registry_anon, repo, "main-fffffff-fffffff", created="2024-01-01T00:00:00Z", kind="docker-v2")
    push_image(registry_anon, repo, "main-1234567-abcdef0", created="2023-12-01T00:00:00Z")  # pushed last

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert resolved["main"].newest.tag.tag == newest.tag
    assert resolved["main"].newest.digest == newest.digest
    assert resolved["main"].newest.built_at == utc(2024, 3, 1)
    assert len(resolved["main"].candidates) == 4


def test_ref_with_one_candidate_needs_no_manifest_or_blob_request(registry_anon: RunningRegistry) -> None:
    repo = unique("single")
    only = push_image(registry_anon, repo, "main-abcdef0-1234567", created="2024-01-01T00:00:00Z")
    push_image(registry_anon, repo, "v1.0.0-abcdef0-1234567", created="2024-01-01T00:00:00Z")

    resolved, counts = resolve_once(registry_anon.host, repo)

    assert counts == {"GET tags": 1}
    assert set(resolved) == {"main", "v1.0.0"}
    main = resolved["main"].newest
    assert (main.tag.tag, main.source, main.built_at, main.digest) == (only.tag, "only candidate", None, None)


def test_two_tags_on_one_digest_share_digest_and_built_at(registry_anon: RunningRegistry) -> None:
    repo = unique("shared-digest")
    first = push_image(
        registry_anon, repo, "main-aaaaaaa-1111111", created="2024-04-04T00:00:00Z", kind="oci-index"
    )
    tag_existing(registry_anon, repo, "main-bbbbbbb-1111111", first.digest)
    tag_existing(registry_anon, repo, "latest", first.digest)  # not a build: ignored
    older = push_image(registry_anon, repo, "main-ccccccc-1111111", created="2024-01-01T00:00:00Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert set(resolved) == {"main"}
    builds = {b.tag.tag: b for b in resolved["main"].candidates}
    assert set(builds) == {"main-aaaaaaa-1111111", "main-bbbbbbb-1111111", older.tag}
    assert builds["main-aaaaaaa-1111111"].digest == builds["main-bbbbbbb-1111111"].digest == first.digest
    assert builds["main-aaaaaaa-1111111"].built_at == builds["main-bbbbbbb-1111111"].built_at
    assert builds["main-aaaaaaa-1111111"].built_at == utc(2024, 4, 4)
    assert resolved["main"].newest.tag.tag == "main-bbbbbbb-1111111"  # a tie: the higher tag


def test_tie_on_built_at_goes_to_the_higher_tag(registry_anon: RunningRegistry) -> None:
    repo = unique("tie")
    for tag in ("main-bbbbbbb-1111111", "main-ccccccc-1111111", "main-aaaaaaa-2222222"):
        push_image(registry_anon, repo, tag, created="2024-06-06T06:06:06Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert len({b.digest for b in resolved["main"].candidates}) == 3
    assert resolved["main"].newest.tag.tag == "main-ccccccc-1111111"


def test_repushed_tag_is_re_resolved_and_its_new_built_at_used(
    registry_anon: RunningRegistry, tmp_path: Path
) -> None:
    repo = unique("repush")
    cache = BlobCache(tmp_path / "cache")
    first = push_image(registry_anon, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry_anon, repo, "main-bbbbbbb-1111111", created="2024-03-01T00:00:00Z")
    before, _ = resolve_once(registry_anon.host, repo, cache=cache)
    assert before["main"].newest.tag.tag == "main-bbbbbbb-1111111"

    again = push_image(registry_anon, repo, first.tag, created="2024-06-01T00:00:00Z")
    after, counts = resolve_once(registry_anon.host, repo, cache=cache)

    assert again.digest != first.digest
    newest = after["main"].newest
    assert (newest.tag.tag, newest.digest, newest.built_at) == (first.tag, again.digest, utc(2024, 6, 1))
    # Only the moved tag costs documents: its new manifest and config; the other comes from the cache.
    assert counts == {"GET tags": 1, "HEAD manifest-head": 2, "GET manifest": 1, "GET blob": 1}


def test_ref_containing_dashes_is_parsed_from_the_right(registry_anon: RunningRegistry) -> None:
    repo = unique("dashes")
    push_image(registry_anon, repo, "fix-login-abc1234-def5678", created="2024-01-01T00:00:00Z")
    newest = push_image(registry_anon, repo, "fix-login-abc1235-def5679", created="2024-01-02T00:00:00Z")
    push_image(registry_anon, repo, "fix-abc1234-def5678", created="2024-05-05T00:00:00Z")
    push_image(registry_anon, repo, "pr-42-9988aab-e4f5a6b", created="2024-05-05T00:00:00Z")

    resolved, _ = resolve_once(registry_anon.host, repo)

    assert set(resolved) == {"fix-login", "fix", "pr-42"}
    fix_login = resolved["fix-login"].newest
    assert (fix_login.tag.tag, fix_login.tag.commit, fix_login.tag.rt_revision) == (
        newest.tag,
        "abc1235",
        "def5679",
    )
    assert fix_login.built_at == utc(2024, 1, 2)
    assert len(resolved["fix"].candidates) == 1


# --- 3. the JFrog case ----------------------------------------------------------------------------------


def test_last_modified_is_ignored_the_newer_config_created_wins(registry_basic: RunningRegistry) -> None:
    repo = unique("jfrog")
    newer = push_image(registry_basic, repo, "main-0000000-1111111", created="2024-06-01T00:00:00Z")
    older = push_image(registry_basic, repo, "main-fffffff-1111111", created="2024-01-01T00:00:00Z")
    older_paths = {
        f"/v2/{repo}/manifests/{older.tag}",
        f"/v2/{repo}/manifests/{older.digest}",
        f"/v2/{repo}/blobs/{older.config_digest}",
    }

    def last_modified(path: str) -> str:
        # A remote repository's cache time: the older build was fetched into the cache last.
        return "Wed, 01 Jan 2025 00:00:00 GMT" if path in older_paths else "Mon, 01 Jan 2024 00:00:00 GMT"

    with lying_last_modified_proxy(registry_basic.url, last_modified) as proxy:
        resolved, _ = resolve_once(proxy.host, repo, auth=ROBOT)
        older_created = skopeo_inspect_config(proxy, f"{repo}:{older.tag}", creds=registry_basic.creds)

    assert older_created["created"] == "2024-01-01T00:00:00Z"
    # asked by tag through the proxy: with nothing cached, one GET brings the manifest and its digest
    assert ("GET", f"/v2/{repo}/manifests/{older.tag}") in {(r.method, r.path) for r in proxy.requests}
    assert resolved["main"].newest.tag.tag == newer.tag
    assert resolved["main"].newest.built_at == utc(2024, 6, 1)


# --- 4. request counts and the cache -----------------------------------------------------------------------


def push_many(registry: RunningRegistry, repo: str) -> int:
    """Three refs: main (3 builds, one an index), dev (2), v1.0.0 (1). Returns the multi-candidate count."""
    push_image(registry, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry, repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z", kind="oci-index")
    push_image(registry, repo, "main-ccccccc-1111111", created="2024-03-01T00:00:00Z", kind="docker-v2")
    push_image(registry, repo, "dev-ddddddd-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry, repo, "dev-eeeeeee-1111111", created="2023-01-01T00:00:00Z")
    push_image(registry, repo, "v1.0.0-fffffff-1111111", created="2023-01-01T00:00:00Z")
    return 5


def test_warm_run_makes_no_manifest_or_blob_request(registry_anon: RunningRegistry, tmp_path: Path) -> None:
    repo = unique("warm")
    candidates = push_many(registry_anon, repo)
    cache = BlobCache(tmp_path / "cache")

    cold, cold_counts = resolve_once(registry_anon.host, repo, cache=cache)
    warm, warm_counts = resolve_once(registry_anon.host, repo, cache=cache)

    assert cold_counts["GET manifest"] >= candidates + 1  # the index's platform manifest too
    assert cold_counts["GET blob"] >= candidates
    assert warm_counts == {"GET tags": 1, "HEAD manifest-head": candidates}
    assert warm == cold
    assert warm["main"].newest.tag.tag == "main-ccccccc-1111111"


def test_warm_run_in_token_mode_mints_one_token_and_fetches_nothing_cached(
    registry_token: RunningRegistry, tmp_path: Path
) -> None:
    repo = unique("warm-token")
    candidates = push_many(registry_token, repo)
    cache = BlobCache(tmp_path / "cache")
    resolve_once(registry_token.host, repo, cache=cache)
    mints = len(token_server(registry_token).mints)

    warm, counts = resolve_once(registry_token.host, repo, cache=cache)

    assert len(token_server(registry_token).mints) - mints == 1
    assert counts.get("GET manifest", 0) == counts.get("GET blob", 0) == 0
    assert counts["HEAD manifest-head"] == candidates
    assert counts["GET token"] == 1
    assert counts["GET tags"] <= 2  # the first listing may meet the challenge before the token exists
    assert sum(counts.values()) <= candidates + 3
    assert warm["main"].newest.tag.tag == "main-ccccccc-1111111"


# --- 5. auth modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "with_creds"),
    [("anonymous", False), ("basic", True), ("token", False), ("token", True)],
    ids=["anonymous", "basic", "token-anonymous-pull", "token-with-basic"],
)
def test_every_auth_mode_resolves_the_newest_build(
    registry_anon: RunningRegistry,
    registry_basic: RunningRegistry,
    registry_token: RunningRegistry,
    mode: str,
    with_creds: bool,
) -> None:
    registry = {"anonymous": registry_anon, "basic": registry_basic, "token": registry_token}[mode]
    repo = unique(f"auth-{mode}")
    push_image(registry, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    newest = push_image(registry, repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z")
    seen = len(registry.token_server.requests) if registry.token_server else 0

    resolved, counts = resolve_once(registry.host, repo, auth=ROBOT if with_creds else None)

    assert resolved["main"].newest.tag.tag == newest.tag
    assert resolved["main"].newest.built_at == utc(2024, 2, 1)
    if registry.token_server is not None:
        asked = registry.token_server.requests[seen:]
        assert [r.username for r in asked] == [USERNAME if with_creds else None]
        assert asked[0].query["scope"] == [f"repository:{repo}:pull"]
        assert counts["GET token"] == 1


def test_token_is_minted_once_per_host_and_scope(registry_token: RunningRegistry) -> None:
    repo, other = unique("mint-once"), unique("mint-other")
    for i in range(6):
        push_image(registry_token, repo, f"main-{i:07x}-1111111", created=f"2024-01-0{i + 1}T00:00:00Z")
    push_image(registry_token, repo, "dev-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry_token, repo, "dev-bbbbbbb-1111111", created="2024-01-02T00:00:00Z")
    push_image(registry_token, other, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    server = token_server(registry_token)

    with new_client(ROBOT) as client:
        before = len(server.mints)
        resolved = resolve(client, registry_token.host, repo)
        first = len(server.mints) - before
        resolve(client, registry_token.host, repo)  # the same client again: the token is still good
        again = len(server.mints) - before
        resolve(client, registry_token.host, other)  # another repository is another scope
        total = len(server.mints) - before

    assert resolved["main"].newest.tag.tag == "main-0000005-1111111"
    assert (first, again, total) == (1, 1, 2)
    assert {s for r in server.mints[before:] for s in r.query["scope"]} == {
        f"repository:{repo}:pull",
        f"repository:{other}:pull",
    }


@pytest.fixture(scope="module")
def registry_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A token registry of our own: its server answers `access_token`, omits expires_in, and grants
    nothing to anonymous callers."""
    with running_registry(
        tmp_path_factory.mktemp("registry-private"),
        "token",
        token_field="access_token",
        anonymous_pull=False,
        expires_in=None,
    ) as registry:
        yield registry


def test_token_server_answering_access_token_works(registry_private: RunningRegistry) -> None:
    repo = unique("access-token")
    push_image(registry_private, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    newest = push_image(registry_private, repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z")
    before = len(token_server(registry_private).mints)

    resolved, counts = resolve_once(registry_private.host, repo, auth=ROBOT)

    assert resolved["main"].newest.tag.tag == newest.tag
    assert resolved["main"].newest.built_at == utc(2024, 2, 1)
    # No expires_in: the spec's 60 s default, still one token for the whole run.
    assert len(token_server(registry_private).mints) - before == 1
    assert counts["GET token"] == 1


def test_private_registry_without_credentials_says_credentials_are_needed(
    registry_private: RunningRegistry,
) -> None:
    repo = unique("private")
    push_image(registry_private, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")

    with pytest.raises(RegistryError) as caught:
        resolve_once(registry_private.host, repo)

    assert caught.value.status == 401
    assert "credentials" in str(caught.value)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            "basic",
        ),
        "token",
    ],
)
def test_wrong_password_is_an_error_about_credentials_without_the_password(
    registry_basic: RunningRegistry, registry_token: RunningRegistry, mode: str
) -> None:
    registry = registry_basic if mode == "basic" else registry_token
    repo = unique(f"wrong-{mode}")
    push_image(registry, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    wrong = BasicCredentials(USERNAME, "not-the-Pa55word-xyz")

    with pytest.raises(RegistryError) as caught:
        resolve_once(registry.host, repo, auth=RegistryAuth(basic=wrong))

    message = str(caught.value)
    assert "credentials" in message
    assert repo in message
    assert caught.value.status == 401
    for secret in wrong.secrets:
        assert secret not in message


# --- 6. repository failures ------------------------------------------------------------------------------


def test_unknown_repository_is_a_404_naming_it(registry_anon: RunningRegistry) -> None:
    repo = unique("missing")
    with pytest.raises(RegistryError) as caught:
        resolve_once(registry_anon.host, repo)
    assert caught.value.status == 404
    assert f"{registry_anon.host}/{repo}" in str(caught.value)
    assert "404" in str(caught.value)


def write_oci_config(
    tmp_path: Path, images: dict[str, str], *, auth: str = "", default_ref: str = "main"
) -> Path:
    """A config with one `oci` source whose collections (slug -> host/repo) have only an image."""
    entries = "".join(
        f"      - slug: {slug}\n        image_registry: {image}\n        default_ref: {default_ref}\n"
        for slug, image in images.items()
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        "git:\n  enabled: false\n  data_dir: mirrors\n"
        f"sources:\n  - name: registry\n    type: oci\n{auth}    codecollections:\n{entries}"
    )
    return path


def sync_json(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, dict[str, dict[str, object]]]:
    code = run(["sync", "-c", str(config), "--no-git", "--json"])
    out = capsys.readouterr().out
    return code, {str(i["slug"]): i for i in json.loads(out)["images"]}


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated user cache and no registry logins from the environment; returns the cache dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("COLUMNS", "200")  # the table is not folded
    for name in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "xdg-cache"


@pytest.mark.parametrize("failure", ["registry-down", "repository-gone"])
def test_sync_reports_a_failing_repository_and_keeps_its_refs(
    registry_anon: RunningRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    failure: str,
) -> None:
    flaky_repo, good_repo = unique("flaky"), unique("good")
    kept = push_image(registry_anon, flaky_repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry_anon, good_repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    # The flaky repository is reached through a proxy, so the test can take its registry away.
    proxy: LyingProxy = lying_last_modified_proxy(registry_anon.url, lambda path: None)
    stopped = False
    try:
        good_image = f"{registry_anon.host}/{good_repo}"
        config = write_oci_config(tmp_path, {"flaky": f"{proxy.host}/{flaky_repo}", "good": good_image})
        code, first = sync_json(capsys, config)
        assert code == 0, first
        assert first["flaky"]["latest_tag"] == kept.tag
        if failure == "registry-down":
            proxy.stop()
            stopped = True
        else:
            gone = f"{proxy.host}/{flaky_repo}-gone"
            config = write_oci_config(tmp_path, {"flaky": gone, "good": good_image})
        newer = push_image(registry_anon, good_repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z")

        code, second = sync_json(capsys, config)
    finally:
        if not stopped:
            proxy.stop()

    assert code == 1
    error = second["flaky"]["error"]
    assert isinstance(error, str)
    assert proxy.host in error
    if failure == "repository-gone":
        assert "404" in error
    assert second["good"]["error"] is None
    assert second["good"]["latest_tag"] == newer.tag
    with Store.open(load_config(config).state.path) as store:
        flaky_rows = store.list_image_refs("flaky")
        status = store.get_image_sync("flaky")
        good_rows = store.list_image_refs("good")
    assert [(r.ref, r.image_tag, r.is_active, r.is_latest) for r in flaky_rows] == [
        ("main", kept.tag, True, True)
    ]
    assert status is not None
    assert status.error == error
    assert [(r.ref, r.image_tag) for r in good_rows] == [("main", newer.tag)]


# --- 7. sync --images semantics ---------------------------------------------------------------------------


def test_sync_writes_one_row_per_ref_with_latest_and_stable(
    registry_anon: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    repo = unique("rows")
    push_image(registry_anon, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    main = push_image(registry_anon, repo, "main-0000000-1111111", created="2024-05-01T12:00:00+02:00")
    stable = push_image(registry_anon, repo, "v1.2.0-bbbbbbb-1111111", created="2024-03-01T00:00:00Z")
    push_image(registry_anon, repo, "v1.2.0-rc1-ccccccc-1111111", created="2024-04-01T00:00:00Z")
    push_image(registry_anon, repo, "v1.1.0-ddddddd-1111111", created="2024-02-01T00:00:00Z")
    push_image(registry_anon, repo, "feature-x-eeeeeee-1111111", created="2024-06-01T00:00:00Z")
    push_image(registry_anon, repo, "latest-not-a-build", created="2024-06-01T00:00:00Z")
    config = write_oci_config(tmp_path, {"cc": f"{registry_anon.host}/{repo}"})

    code, images = sync_json(capsys, config)

    assert code == 0, images
    assert images["cc"]["latest_tag"] == main.tag
    assert images["cc"]["stable_tag"] == stable.tag
    assert images["cc"]["refs"] == 5
    with Store.open(load_config(config).state.path) as store:
        rows = {r.ref: r for r in store.list_image_refs("cc")}
    assert set(rows) == {"main", "v1.2.0", "v1.2.0-rc1", "v1.1.0", "feature-x"}
    assert [ref for ref, r in rows.items() if r.is_latest] == ["main"]
    assert (rows["main"].image_tag, rows["main"].image_digest) == (main.tag, main.digest)
    assert rows["main"].image_built_at == utc(2024, 5, 1, 10)
    assert rows["main"].built_at_source == "config.created"
    assert (rows["main"].commit_hash, rows["main"].rt_revision) == ("0000000", "1111111")
    assert rows["main"].image_registry == f"{registry_anon.host}/{repo}"
    assert rows["v1.2.0-rc1"].is_prerelease
    assert not rows["v1.2.0"].is_prerelease
    assert (rows["v1.2.0"].ref_type, rows["feature-x"].ref_type) == ("tag", "branch")
    assert rows["v1.2.0"].built_at_source == "only candidate"


def test_ref_deleted_from_the_registry_becomes_inactive(
    registry_anon: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    repo = unique("vanish")
    push_image(registry_anon, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    dev = push_image(registry_anon, repo, "dev-bbbbbbb-1111111", created="2024-01-01T00:00:00Z")
    config = write_oci_config(tmp_path, {"cc": f"{registry_anon.host}/{repo}"})
    assert sync_json(capsys, config)[0] == 0

    delete_manifest(registry_anon, repo, dev.digest)
    code, images = sync_json(capsys, config)

    assert code == 0, images
    assert images["cc"]["deactivated"] == 1
    with Store.open(load_config(config).state.path) as store:
        assert [r.ref for r in store.list_image_refs("cc")] == ["main"]
        assert {r.ref: r.is_active for r in store.list_image_refs("cc", include_inactive=True)} == {
            "dev": False,
            "main": True,
        }


def sync_then_empty_the_registry(
    registry: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, dict[str, object], list[PushedImage]]:
    """Sync two refs, delete every build from the registry (it lists `tags: null`), sync again."""
    repo = unique("emptied")
    pushed = [
        push_image(registry, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z"),
        push_image(registry, repo, "v1.0.0-bbbbbbb-1111111", created="2024-01-01T00:00:00Z"),
    ]
    config = write_oci_config(tmp_path, {"cc": f"{registry.host}/{repo}"})
    assert sync_json(capsys, config)[0] == 0
    for image in pushed:
        delete_manifest(registry, repo, image.digest)
    code, images = sync_json(capsys, config)
    assert code == 0, images
    return load_config(config).state.path, images["cc"], pushed


def test_registry_listing_no_builds_keeps_every_ref_active(
    registry_anon: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    state, summary, pushed = sync_then_empty_the_registry(registry_anon, tmp_path, capsys)

    assert summary["error"] is None
    assert summary["deactivated"] == 0
    assert "transient" in str(summary["note"])
    with Store.open(state) as store:
        rows = store.list_image_refs("cc", include_inactive=True)
    assert [(r.ref, r.image_tag, r.is_active) for r in rows] == [
        ("main", pushed[0].tag, True),
        ("v1.0.0", pushed[1].tag, True),
    ]


def test_registry_listing_no_builds_keeps_the_latest_pointer(
    registry_anon: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    state, _, pushed = sync_then_empty_the_registry(registry_anon, tmp_path, capsys)

    with Store.open(state) as store:
        rows = store.list_image_refs("cc")
    assert [(r.ref, r.is_latest) for r in rows] == [("main", True), ("v1.0.0", False)]
    assert pushed[0].tag == rows[0].image_tag


def test_sync_survives_a_tag_whose_date_overflows(
    registry_anon: RunningRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    bad, good = unique("overflow"), unique("overflow-good")
    push_image(registry_anon, bad, "main-fffffff-1111111", created="0001-01-01T00:00:00+02:00")
    dated = push_image(registry_anon, bad, "main-0000000-1111111", created="2024-01-01T00:00:00Z")
    other = push_image(registry_anon, good, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    config = write_oci_config(
        tmp_path, {"bad": f"{registry_anon.host}/{bad}", "good": f"{registry_anon.host}/{good}"}
    )

    code, images = sync_json(capsys, config)

    assert code == 0, images
    assert images["bad"]["latest_tag"] == dated.tag
    assert images["good"]["latest_tag"] == other.tag


# --- 8. resolve-latest -----------------------------------------------------------------------------------


@pytest.fixture
def main_builds(registry_anon: RunningRegistry) -> tuple[str, PushedImage]:
    repo = unique("cli")
    push_image(registry_anon, repo, "main-fffffff-1111111", created="2024-01-01T00:00:00Z")
    newest = push_image(registry_anon, repo, "main-0000000-1111111", created="2024-02-01T00:00:00Z")
    push_image(registry_anon, repo, "dev-aaaaaaa-1111111", created="2024-03-01T00:00:00Z")
    return repo, newest


def test_resolve_latest_json_names_the_newest_build_and_why(
    registry_anon: RunningRegistry,
    main_builds: tuple[str, PushedImage],
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
) -> None:
    repo, newest = main_builds
    code = run(["resolve-latest", f"{registry_anon.host}/{repo}", "--ref", "main", "--json"])
    out, err = capsys.readouterr()

    assert code == 0, err
    payload = json.loads(out)
    assert payload["repository"] == f"{registry_anon.host}/{repo}"
    assert [r["ref"] for r in payload["refs"]] == ["main"]
    found = payload["refs"][0]["newest"]
    assert found["tag"] == newest.tag
    assert found["built_at_source"] == "config.created"
    assert found["built_at"] == "2024-02-01T00:00:00Z"
    assert found["digest"] == newest.digest
    assert len(payload["refs"][0]["candidates"]) == 2
    assert payload["requests"] > 0
    assert any(cli_env.rglob("sha256/*/*"))  # the CLI's cache lives under XDG_CACHE_HOME


def test_resolve_latest_table_and_request_count_with_verbose(
    registry_anon: RunningRegistry,
    main_builds: tuple[str, PushedImage],
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
) -> None:
    repo, newest = main_builds
    code = run(["resolve-latest", f"{registry_anon.host}/{repo}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert newest.tag in out
    assert "config.created" in out
    assert "dev-aaaaaaa" not in out  # only the default ref, main
    assert "registry requests" not in err

    code = run(["-v", "resolve-latest", f"{registry_anon.host}/{repo}", "--all-refs"])
    out, err = capsys.readouterr()

    assert code == 0, err
    assert newest.tag in out
    assert "dev-aaaaaaa-1111111" in out
    counted = re.search(r"(\d+) registry requests \((.*)\)", err)
    assert counted is not None, err
    assert "GET tags: 1" in counted.group(2)
    # Warm: one listing and one HEAD per candidate of main; dev has one candidate and needs nothing.
    assert int(counted.group(1)) == 3


def test_resolve_latest_slug_uses_the_source_auth_and_default_ref(
    registry_basic: RunningRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = unique("cli-basic")
    push_image(registry_basic, repo, "develop-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    newest = push_image(registry_basic, repo, "develop-bbbbbbb-1111111", created="2024-02-01T00:00:00Z")
    push_image(registry_basic, repo, "main-ccccccc-1111111", created="2024-03-01T00:00:00Z")
    config = write_oci_config(
        tmp_path,
        {"private-cc": f"{registry_basic.host}/{repo}"},
        auth="    auth: {user_env: REG_USER, pass_env: REG_PASS}\n",
        default_ref="develop",
    )
    monkeypatch.setenv("REG_USER", USERNAME)
    monkeypatch.setenv("REG_PASS", PASSWORD)

    code = run(["resolve-latest", "private-cc", "-c", str(config), "--json"])
    out, err = capsys.readouterr()

    assert code == 0, err
    refs = json.loads(out)["refs"]
    assert [(r["ref"], r["newest"]["tag"]) for r in refs] == [("develop", newest.tag)]
    assert PASSWORD not in out + err

    monkeypatch.delenv("REG_PASS")
    code = run(["resolve-latest", "private-cc", "-c", str(config), "--json"])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert "REG_PASS" in err


def test_resolve_latest_without_builds_of_the_ref_exits_1_with_a_message(
    registry_anon: RunningRegistry, capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    repo = unique("cli-nobuilds")
    push_image(registry_anon, repo, "dev-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")

    code = run(["resolve-latest", f"{registry_anon.host}/{repo}", "--ref", "main", "--json"])
    out, err = capsys.readouterr()

    assert code == 1
    assert out == ""
    assert "no builds of main" in err
    assert repo in err
