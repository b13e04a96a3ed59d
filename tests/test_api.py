"""serve's JSON API over a real loopback socket: the predecessor's catalog, git status and admin contract,
the git_url rewrite, background sync jobs, the start-up backfill, `serve --get` and the OpenAPI document.

Image refs come from `static` sources and mirrors from real `sync` runs against file:// upstreams.
"""

from __future__ import annotations

import base64
import calendar
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cccatalog.cli import run
from cccatalog.config import Config, load_config
from cccatalog.jobs import run_lock_path
from tests.apifixtures import (
    ADMIN_TOKEN,
    PUBLIC_BASE_URL,
    RFC3339_UTC,
    Collection,
    bearer,
    build,
    image_tag,
    wait_for_answer,
    wait_for_job,
    write_builds,
    write_catalog_config,
)
from tests.gitfixtures import Upstream, git, http_upstream
from tests.servefixtures import running_server, serve_process, synced_config

MakeUpstream = Callable[[str], Upstream]

CATALOG = "/api/v1/catalog/codecollections"
REPOS = "/api/v1/git/repos"
ADMIN = "/api/v1/admin"
TOKEN_VARS = ("CCCATALOG_ADMIN_TOKEN", "CC_CATALOG_ADMIN_TOKEN")

ENTRY_FIELDS = {
    "slug",
    "name",
    "git_url",
    "visibility",
    "latest_image_tag",
    "stable_image_tag",
    "image_registry",
    "last_synced",
}
IMAGE_REF_FIELDS = {
    "ref",
    "ref_type",
    "image_registry",
    "image_tag",
    "image_digest",
    "commit_hash",
    "rt_revision",
    "image_built_at",
    "is_latest",
    "is_prerelease",
    "is_active",
    "synced_at",
}
# cccatalog adds where image_built_at came from (registry config, label, static file, unknown)
IMAGE_REF_EXTRA = {"built_at_source"}
RESOLVE_FIELDS = {
    "slug",
    "requested",
    "image_tag",
    "image_registry",
    "image_digest",
    "commit_hash",
    "rt_revision",
    # the predecessor's image-mirroring fields: null unless a destination is asked for and holds the build
    "destination",
    "target_image_ref",
    "target_digest",
}
REPO_FIELDS = {
    "slug",
    "upstream_url",
    "public_url",
    "present",
    "head_commit",
    "last_synced",
    "last_sync_error",
    "freshness_seconds",
    "default_branch",
    "replica",
}

DIGEST = "sha256:" + "e" * 64
ALPHA_BUILDS = [
    build("main", "aaaaaa1", built_at="2026-01-01T00:00:00Z"),
    build("main", "aaaaaa2", built_at="2026-02-01T01:00:00+01:00"),  # the newest main; an offset, not Z
    build("v1.2.0-rc1", "bbbbbbb", built_at="2026-03-01T00:00:00Z"),  # newer, but a pre-release
    build("v1.2.0", "ccccccc", built_at="2026-02-15T00:00:00Z"),
    build("v1.1.0", "ddddddd"),
    build("feature/login", "eeeeeee", digest=DIGEST),
    build("dev", "fffffff"),  # gone by the second sync: inactive
]
LATEST_TAG = image_tag("main", "aaaaaa2")
STABLE_TAG = image_tag("v1.2.0", "ccccccc")
LOGIN_TAG = image_tag("feature/login", "eeeeeee")


@dataclass(frozen=True)
class Site:
    """alpha (public, images), beta (hidden, images), gamma (public, no images), delta (images, no git),
    mirrored and polled by two real syncs; `dev` of alpha went inactive on the second."""

    path: Path
    config: Config
    upstreams: dict[str, Upstream]

    @property
    def data_dir(self) -> Path:
        return self.config.git.data_dir

    def mirror_url(self, slug: str) -> str:
        return f"{PUBLIC_BASE_URL}/{slug}.git"


def make_site(tmp_path: Path, make_upstream: MakeUpstream, *, git: dict[str, object] | None = None) -> Site:
    upstreams = {slug: make_upstream(slug) for slug in ("alpha", "beta", "gamma")}
    collections = [
        Collection("gamma", upstreams["gamma"].url),
        Collection(
            "alpha", upstreams["alpha"].url, ALPHA_BUILDS, name="Alpha CodeCollection", stable_ref="v1.2.0"
        ),
        Collection("delta", None, [build("main", "1234567")]),
        Collection("beta", upstreams["beta"].url, [build("main", "7654321")], visibility="hidden"),
    ]
    path = write_catalog_config(tmp_path / "config.yaml", collections, git=git)
    assert run(["-q", "sync", "-c", str(path), "--allow-runtime-sync"]) == 0
    write_builds(path, "alpha", [b for b in ALPHA_BUILDS if b["ref"] != "dev"], stable_ref="v1.2.0")
    assert run(["-q", "sync", "-c", str(path), "--no-git"]) == 0
    return Site(path, load_config(path), upstreams)


@pytest.fixture
def site(tmp_path: Path, make_upstream: MakeUpstream) -> Site:
    return make_site(tmp_path, make_upstream)


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin token in the environment `running_server` reads when it is built."""
    monkeypatch.delenv("CC_CATALOG_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)


@contextmanager
def api(config: Config) -> Iterator[httpx.Client]:
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def client(site: Site, admin_env: None) -> Iterator[httpx.Client]:
    with api(site.config) as c:
        yield c


def get_json(client: httpx.Client, path: str, status: int = 200) -> Any:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def timestamps(value: object) -> list[object]:
    """Every value of a `*_at` or `last_synced` key, at any depth."""
    if isinstance(value, list):
        return [t for item in value for t in timestamps(item)]
    if isinstance(value, dict):
        found: list[object] = []
        for key, item in value.items():
            found += [item] if key.endswith("_at") or key == "last_synced" else timestamps(item)
        return found
    return []


def git_route(client: httpx.Client, slug: str) -> int:
    return client.get(f"/git/{slug}.git/info/refs", params={"service": "git-upload-pack"}).status_code


def slugs(entries: list[dict[str, Any]]) -> list[str]:
    return [e["slug"] for e in entries]


# --- catalog ----------------------------------------------------------------------------------------


def test_list_is_ordered_by_slug_and_hides_collections_without_images(client: httpx.Client) -> None:
    assert slugs(get_json(client, CATALOG)) == ["alpha", "beta", "delta"]
    assert slugs(get_json(client, f"{CATALOG}?only_with_image=true")) == ["alpha", "beta", "delta"]
    assert slugs(get_json(client, f"{CATALOG}?only_with_image=false")) == ["alpha", "beta", "delta", "gamma"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("visibility=public", ["alpha", "delta"]),
        ("visibility=hidden", ["beta"]),
        ("visibility=public&only_with_image=false", ["alpha", "delta", "gamma"]),
        ("visibility=", ["alpha", "beta", "delta"]),
    ],
)
def test_list_filters_by_visibility(client: httpx.Client, query: str, expected: list[str]) -> None:
    assert slugs(get_json(client, f"{CATALOG}?{query}")) == expected


@pytest.mark.parametrize("query", ["visibility=secret", "only_with_image=maybe"])
def test_list_rejects_bad_query_values_with_422(client: httpx.Client, query: str) -> None:
    assert "detail" in get_json(client, f"{CATALOG}?{query}", 422)


def test_entries_have_the_predecessor_fields_and_utc_z_timestamps(client: httpx.Client) -> None:
    entries = {e["slug"]: e for e in get_json(client, f"{CATALOG}?only_with_image=false")}
    for entry in entries.values():
        assert set(entry) == ENTRY_FIELDS
    alpha = entries["alpha"]
    assert alpha["name"] == "Alpha CodeCollection"
    assert alpha["visibility"] == "public"
    assert alpha["latest_image_tag"] == LATEST_TAG
    assert alpha["stable_image_tag"] == STABLE_TAG  # the static file names it
    assert alpha["image_registry"] == "registry.example.com/runwhen/alpha"
    assert entries["beta"]["visibility"] == "hidden"
    assert entries["beta"]["name"] == "beta"  # no name in the config: the slug, as the predecessor
    assert entries["gamma"]["latest_image_tag"] is None
    assert entries["gamma"]["last_synced"] is None
    detail = get_json(client, f"{CATALOG}/alpha")
    assert set(detail) == ENTRY_FIELDS | {"refs"}
    for ref in detail["refs"]:
        assert set(ref) == IMAGE_REF_FIELDS | IMAGE_REF_EXTRA
    found = timestamps([entries, detail, get_json(client, f"{CATALOG}/alpha/refs?include_inactive=true")])
    assert [t for t in found if t is not None], "no timestamps to check"
    for value in found:
        assert value is None or (isinstance(value, str) and RFC3339_UTC.fullmatch(value)), value
    main = next(r for r in detail["refs"] if r["ref"] == "main")
    assert main["image_built_at"] == "2026-02-01T00:00:00Z"  # +01:00 converted to UTC


def test_detail_lists_active_refs_and_resolves_hidden_collections(client: httpx.Client) -> None:
    alpha = get_json(client, f"{CATALOG}/alpha")
    assert [r["ref"] for r in alpha["refs"]] == ["feature/login", "main", "v1.1.0", "v1.2.0", "v1.2.0-rc1"]
    main = next(r for r in alpha["refs"] if r["ref"] == "main")
    assert main["image_tag"] == LATEST_TAG
    assert main["is_latest"] is True
    assert main["commit_hash"] == "aaaaaa2"
    assert main["rt_revision"] == "1111111"
    assert main["is_active"] is True
    rc1 = next(r for r in alpha["refs"] if r["ref"] == "v1.2.0-rc1")
    assert (rc1["is_prerelease"], rc1["ref_type"]) == (True, "tag")
    beta = get_json(client, f"{CATALOG}/beta")
    assert beta["visibility"] == "hidden"
    assert beta["latest_image_tag"] == image_tag("main", "7654321")
    assert [r["ref"] for r in beta["refs"]] == ["main"]
    assert get_json(client, f"{CATALOG}/gamma")["refs"] == []


def test_refs_hide_inactive_ones_unless_asked(client: httpx.Client) -> None:
    active = get_json(client, f"{CATALOG}/alpha/refs")
    assert "dev" not in [r["ref"] for r in active]
    assert all(r["is_active"] for r in active)
    assert get_json(client, f"{CATALOG}/alpha/refs?include_inactive=false") == active
    everything = {r["ref"]: r for r in get_json(client, f"{CATALOG}/alpha/refs?include_inactive=true")}
    assert set(everything) == {r["ref"] for r in active} | {"dev"}
    assert everything["dev"]["is_active"] is False
    assert everything["dev"]["image_tag"] == image_tag("dev", "fffffff")


def test_an_inactive_ref_is_still_answered_with_is_active_false(client: httpx.Client) -> None:
    """As the predecessor: the build of `dev` is gone from the source, its row is kept and shown."""
    body = get_json(client, f"{CATALOG}/alpha/refs/dev")
    assert set(body) == IMAGE_REF_FIELDS | IMAGE_REF_EXTRA
    assert (body["ref"], body["image_tag"], body["is_active"]) == ("dev", image_tag("dev", "fffffff"), False)
    assert body["is_latest"] is False
    assert "dev" not in [r["ref"] for r in get_json(client, f"{CATALOG}/alpha")["refs"]]


@pytest.mark.parametrize("ref", ["feature/login", "feature%2Flogin", "feature%2flogin"])
def test_a_ref_containing_a_slash_is_found_raw_or_percent_encoded(client: httpx.Client, ref: str) -> None:
    url = httpx.URL(f"{str(client.base_url).rstrip('/')}{CATALOG}/alpha/refs/{ref}")
    assert ref.encode() in url.raw_path  # httpx sends the path as written, %2F included
    response = client.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == IMAGE_REF_FIELDS | IMAGE_REF_EXTRA
    assert (body["ref"], body["image_tag"], body["image_digest"]) == ("feature/login", LOGIN_TAG, DIGEST)


@pytest.mark.parametrize(
    ("query", "requested", "tag", "commit"),
    [
        ("pointer=latest", "latest", LATEST_TAG, "aaaaaa2"),
        ("pointer=stable", "stable", STABLE_TAG, "ccccccc"),
        ("ref=v1.2.0-rc1", "v1.2.0-rc1", image_tag("v1.2.0-rc1", "bbbbbbb"), "bbbbbbb"),
        ("ref=feature/login", "feature/login", LOGIN_TAG, "eeeeeee"),
        ("ref=" + quote("feature/login", safe=""), "feature/login", LOGIN_TAG, "eeeeeee"),
    ],
)
def test_resolve_answers_pointers_and_refs(
    client: httpx.Client, query: str, requested: str, tag: str, commit: str
) -> None:
    body = get_json(client, f"{CATALOG}/alpha/resolve?{query}")
    assert set(body) == RESOLVE_FIELDS
    assert body == {
        "slug": "alpha",
        "requested": requested,
        "image_tag": tag,
        "image_registry": "registry.example.com/runwhen/alpha",
        "image_digest": DIGEST if requested == "feature/login" else None,
        "commit_hash": commit,
        "rt_revision": "1111111",
        "destination": None,
        "target_image_ref": None,
        "target_digest": None,
    }


def test_resolve_with_a_destination_that_is_not_configured_is_a_404(client: httpx.Client) -> None:
    """The predecessor's answer; a configured destination that does not hold the build (yet) answers
    nulls (tests/test_destinations_registry.py has both)."""
    answer = client.get(f"{CATALOG}/alpha/resolve?pointer=latest&destination=acme-jfrog")
    assert (answer.status_code, answer.json()) == (404, {"detail": "unknown destination: acme-jfrog"})


def test_resolve_works_for_hidden_collections(client: httpx.Client) -> None:
    assert get_json(client, f"{CATALOG}/beta/resolve?pointer=latest")["image_tag"] == image_tag(
        "main", "7654321"
    )


@pytest.mark.parametrize("query", ["", "pointer=latest&ref=main", "pointer=&ref=", "other=1"])
def test_resolve_needs_exactly_one_of_pointer_or_ref(client: httpx.Client, query: str) -> None:
    body = get_json(client, f"{CATALOG}/alpha/resolve?{query}", 400)
    assert "exactly one" in body["detail"]


def test_resolve_rejects_an_unknown_pointer_with_422(client: httpx.Client) -> None:
    assert "pointer" in get_json(client, f"{CATALOG}/alpha/resolve?pointer=newest", 422)["detail"]


@pytest.mark.parametrize(
    "path",
    [
        f"{CATALOG}/nope",
        f"{CATALOG}/nope/refs",
        f"{CATALOG}/nope/refs/main",
        f"{CATALOG}/nope/resolve?pointer=latest",
        f"{CATALOG}/alpha/refs/nope",
        f"{CATALOG}/alpha/resolve?ref=nope",
        f"{CATALOG}/alpha/resolve?ref=dev",
        f"{CATALOG}/gamma/resolve?pointer=latest",  # no images at all
        f"{CATALOG}/alpha/nope",
        f"{REPOS}/nope",
        f"{REPOS}/delta",  # a collection without git_url is not mirrored
    ],
)
def test_unknown_things_are_404_with_a_detail(client: httpx.Client, path: str) -> None:
    body = get_json(client, path, 404)
    assert list(body) == ["detail"]
    assert isinstance(body["detail"], str)
    assert body["detail"]


def test_unknown_slug_detail_names_the_slug(client: httpx.Client) -> None:
    assert get_json(client, f"{CATALOG}/nope", 404) == {"detail": "unknown codecollection: nope"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_read_only_endpoints_refuse_other_methods(client: httpx.Client, method: str) -> None:
    response = client.request(method, CATALOG)
    assert response.status_code == 405
    assert "detail" in response.json()


# --- git_url rewrite --------------------------------------------------------------------------------


def git_urls(client: httpx.Client) -> dict[str, str | None]:
    return {e["slug"]: e["git_url"] for e in get_json(client, f"{CATALOG}?only_with_image=false")}


def test_git_url_is_the_mirror_url_while_the_mirror_is_servable(site: Site, client: httpx.Client) -> None:
    assert git_urls(client) == {
        "alpha": site.mirror_url("alpha"),
        "beta": site.mirror_url("beta"),
        "delta": None,  # no git_url configured, nothing mirrored
        "gamma": site.mirror_url("gamma"),
    }
    assert get_json(client, f"{CATALOG}/beta")["git_url"] == site.mirror_url("beta")
    assert git_route(client, "alpha") == 200


def _rename(repo: Path) -> Callable[[], None]:
    aside = repo.with_name(repo.name + ".moved")
    repo.rename(aside)

    def restore() -> None:
        aside.rename(repo)

    return restore


def _remove(repo: Path) -> Callable[[], None]:
    shutil.rmtree(repo)
    return lambda: None


def _drop_packs(repo: Path) -> Callable[[], None]:
    """A half-made repo: HEAD and refs are there, the objects are not."""
    packs, aside = repo / "objects" / "pack", repo.parent / "packs-aside"
    shutil.move(packs, aside)
    packs.mkdir()

    def restore() -> None:
        packs.rmdir()
        shutil.move(aside, packs)

    return restore


@pytest.mark.parametrize("damage", [_rename, _remove, _drop_packs], ids=["renamed", "removed", "half-made"])
def test_git_url_flips_to_upstream_as_soon_as_the_mirror_is_not_servable(
    site: Site, client: httpx.Client, damage: Callable[[Path], Callable[[], None]]
) -> None:
    assert git_urls(client)["alpha"] == site.mirror_url("alpha")
    restore = damage(site.data_dir / "alpha.git")

    assert git_urls(client)["alpha"] == site.upstreams["alpha"].url
    assert get_json(client, f"{CATALOG}/alpha")["git_url"] == site.upstreams["alpha"].url
    assert get_json(client, f"{REPOS}/alpha")["present"] is False
    assert git_route(client, "alpha") == 404
    assert git_urls(client)["gamma"] == site.mirror_url("gamma")  # the others are untouched
    assert get_json(client, "/readyz")["repos_servable"] == 2

    restore()
    if (site.data_dir / "alpha.git").exists():
        assert git_urls(client)["alpha"] == site.mirror_url("alpha")
        assert git_route(client, "alpha") == 200


def test_git_url_flips_back_when_a_reload_stops_mirroring_the_slug(site: Site, client: httpx.Client) -> None:
    assert git_urls(client)["alpha"] == site.mirror_url("alpha")
    write_catalog_config(
        site.path,
        [
            Collection("alpha", site.upstreams["alpha"].url, ALPHA_BUILDS),
            Collection("gamma", site.upstreams["gamma"].url),
        ],
        git={"codecollections": ["gamma"]},  # alpha stays in the catalog, no longer mirrored
    )
    response = client.post(f"{ADMIN}/reload-config", headers=bearer())
    assert response.status_code == 200, response.text
    assert response.json()["codecollections"] == 2

    assert git_urls(client) == {"alpha": site.upstreams["alpha"].url, "gamma": site.mirror_url("gamma")}
    assert git_route(client, "alpha") == 404
    assert git_route(client, "gamma") == 200
    assert slugs(get_json(client, REPOS)) == ["gamma"]
    assert "unknown git repo" in get_json(client, f"{REPOS}/alpha", 404)["detail"]
    assert get_json(client, "/readyz")["repos_configured"] == 1

    write_catalog_config(site.path, [Collection("alpha", site.upstreams["alpha"].url, ALPHA_BUILDS)])
    assert client.post(f"{ADMIN}/reload-config", headers=bearer()).status_code == 200
    assert git_urls(client) == {"alpha": site.mirror_url("alpha")}  # the mirror on disk counts again
    assert git_route(client, "alpha") == 200


def test_disabling_git_in_a_reload_stops_the_rewrite_and_the_status_api(
    site: Site, client: httpx.Client
) -> None:
    write_catalog_config(
        site.path, [Collection("alpha", site.upstreams["alpha"].url, ALPHA_BUILDS)], git={"enabled": False}
    )
    assert client.post(f"{ADMIN}/reload-config", headers=bearer()).status_code == 200
    assert git_urls(client) == {"alpha": site.upstreams["alpha"].url}
    assert git_route(client, "alpha") == 404
    assert "disabled" in get_json(client, REPOS, 404)["detail"]


def test_a_reload_that_fails_validation_keeps_the_previous_config(site: Site, client: httpx.Client) -> None:
    site.path.write_text(site.path.read_text() + "surprise: true\n")
    response = client.post(f"{ADMIN}/reload-config", headers=bearer())
    assert response.status_code == 422
    assert "previous config" in response.json()["detail"]
    assert git_urls(client)["alpha"] == site.mirror_url("alpha")


@pytest.mark.slow
def test_removing_a_slug_from_the_file_takes_effect_within_the_poll(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `serve` process notices the rewritten file on its own (2 s poll), no admin call."""
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    with serve_process(site.path) as (_, url), httpx.Client(base_url=url, timeout=10) as client:
        assert git_urls(client)["alpha"] == site.mirror_url("alpha")
        assert git_route(client, "alpha") == 200
        write_catalog_config(site.path, [Collection("gamma", site.upstreams["gamma"].url)])
        wait_for_answer(client, f"{CATALOG}/alpha", lambda r: r.status_code == 404)
        assert git_route(client, "alpha") == 404
        assert git_urls(client) == {"gamma": site.mirror_url("gamma")}
        assert slugs(get_json(client, REPOS)) == ["gamma"]


def test_timestamps_are_utc_whatever_the_servers_timezone(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    with (
        serve_process(site.path, env={"TZ": "Asia/Kolkata"}) as (_, url),
        httpx.Client(base_url=url) as client,
    ):
        alpha = get_json(client, f"{CATALOG}/alpha")
        repo = get_json(client, f"{REPOS}/alpha")
    main = next(r for r in alpha["refs"] if r["ref"] == "main")
    assert main["image_built_at"] == "2026-02-01T00:00:00Z"
    now = time.time()
    for value in (alpha["last_synced"], main["synced_at"], repo["last_synced"]):
        assert RFC3339_UTC.fullmatch(value), value
        assert abs(now - calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))) < 120


def test_without_public_base_url_git_url_stays_upstream(tmp_path: Path, make_upstream: MakeUpstream) -> None:
    up = make_upstream("alpha")
    path = write_catalog_config(
        tmp_path / "config.yaml", [Collection("alpha", up.url, [build("main", "1234567")])]
    )
    path.write_text(path.read_text().replace(f"  public_base_url: {PUBLIC_BASE_URL}\n", ""))
    config = synced_config(path)
    assert config.git.public_base_url is None
    with api(config) as client:
        assert get_json(client, f"{CATALOG}/alpha")["git_url"] == up.url
        repo = get_json(client, f"{REPOS}/alpha")
        assert (repo["present"], repo["public_url"]) == (True, None)
        assert git_route(client, "alpha") == 200


# --- git status -------------------------------------------------------------------------------------


def test_git_repos_report_every_mirror(site: Site, client: httpx.Client) -> None:
    repos = get_json(client, REPOS)
    assert slugs(repos) == ["alpha", "beta", "gamma"]
    for repo in repos:
        assert set(repo) == REPO_FIELDS
        up = site.upstreams[repo["slug"]]
        assert repo["present"] is True
        assert repo["head_commit"] == up.sha("main")
        assert repo["default_branch"] == "main"
        assert repo["upstream_url"] == up.url
        assert repo["public_url"] == site.mirror_url(repo["slug"])
        assert repo["last_sync_error"] is None
        assert RFC3339_UTC.fullmatch(repo["last_synced"])
        assert isinstance(repo["freshness_seconds"], int)
        assert 0 <= repo["freshness_seconds"] < 120
        assert repo["replica"] == socket.gethostname()  # whose disk: serve.replica_id is not set


def test_git_repo_detail_adds_the_local_path(site: Site, client: httpx.Client) -> None:
    detail = get_json(client, f"{REPOS}/alpha")
    assert set(detail) == REPO_FIELDS | {"local_path"}
    assert Path(detail["local_path"]) == site.data_dir / "alpha.git"
    listed = next(r for r in get_json(client, REPOS) if r["slug"] == "alpha")
    assert {k: v for k, v in detail.items() if k not in ("local_path", "freshness_seconds")} == {
        k: v for k, v in listed.items() if k != "freshness_seconds"
    }


def test_git_repos_are_404_when_git_is_disabled(tmp_path: Path, make_upstream: MakeUpstream) -> None:
    up = make_upstream("alpha")
    path = write_catalog_config(
        tmp_path / "config.yaml",
        [Collection("alpha", up.url, [build("main", "1234567")])],
        git={"enabled": False},
    )
    with api(synced_config(path)) as client:
        for target in (REPOS, f"{REPOS}/alpha"):
            body = get_json(client, target, 404)
            assert list(body) == ["detail"]
            assert "disabled" in body["detail"]
        assert get_json(client, f"{CATALOG}/alpha")["git_url"] == up.url


def secret_forms(token: str) -> list[str]:
    """How a token can leak: itself, percent-encoded, base64 alone and inside a Basic header."""
    return [
        token,
        quote(token, safe=""),
        base64.b64encode(token.encode()).decode().rstrip("="),
        base64.b64encode(f"x-access-token:{token}".encode()).decode().rstrip("="),
    ]


@pytest.mark.parametrize("failure", ["401", "unreachable"])
def test_a_failed_sync_is_reported_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, admin_env: None, failure: str
) -> None:
    token = "s3cret-Upstream-Value-0123456789"  # no GitHub token shape: only redaction by value hides it
    monkeypatch.setenv("UPSTREAM_TOKEN", token)
    (tmp_path / "served").mkdir()
    with http_upstream(tmp_path / "served", required_authorization="Basic bm90LXRoaXM=") as upstream:
        url = upstream.repo_url("secret") if failure == "401" else "http://127.0.0.1:9/secret"
        path = write_catalog_config(
            tmp_path / "config.yaml",
            [Collection("secret", url, [build("main", "1234567")])],
            git={"auth": {"token_env": "UPSTREAM_TOKEN"}},
        )
        assert run(["-q", "sync", "-c", str(path)]) == 1
        bodies: list[str] = []
        with api(load_config(path)) as client:
            detail = get_json(client, f"{REPOS}/secret")
            assert detail["present"] is False
            assert detail["head_commit"] is None
            assert detail["last_sync_error"]
            assert detail["upstream_url"] == url
            waited = client.post(f"{ADMIN}/sync-git?wait=true", headers=bearer())
            assert waited.status_code == 200, waited.text
            assert [e["slug"] for e in waited.json()["errors"]] == ["secret"]
            started = client.post(f"{ADMIN}/sync-git", headers=bearer())
            assert started.status_code == 202
            job = wait_for_job(client, started.json()["job_id"])
            assert job["state"] == "succeeded"  # the job ran; the repo failed
            assert job["result"]["errors"][0]["error"]
            bodies += [waited.text, started.text, json.dumps(job)]
            for target in (REPOS, f"{REPOS}/secret", f"{CATALOG}?only_with_image=false", f"{CATALOG}/secret"):
                bodies.append(client.get(target).text)
    if failure == "401":
        sent = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        assert f"Basic {sent}" in upstream.seen_authorization, "the token was never sent upstream"
    for body in bodies:
        for form in secret_forms(token):
            assert form not in body


# --- admin auth -------------------------------------------------------------------------------------


def admin_calls(job_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", f"{ADMIN}/sync-git?wait=true"),
        ("POST", f"{ADMIN}/sync-catalog?wait=true"),
        ("POST", f"{ADMIN}/reload-config"),
        ("GET", f"{ADMIN}/jobs/{job_id}"),
    ]


@pytest.mark.parametrize(
    "env",
    [{}, {"CCCATALOG_ADMIN_TOKEN": ""}, {"CC_CATALOG_ADMIN_TOKEN": ""}],
    ids=["unset", "ours-empty", "predecessors-empty"],
)
def test_admin_endpoints_answer_503_without_a_configured_token(
    site: Site, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with api(site.config) as client:
        for method, path in admin_calls("sync-git-1"):
            for headers in ({}, bearer(), {"Authorization": "Bearer"}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 503, (method, path, response.text)
                assert "detail" in response.json()


@pytest.mark.parametrize("variable", TOKEN_VARS)
def test_admin_auth_missing_wrong_and_right_token(
    site: Site, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, ADMIN_TOKEN)
    with api(site.config) as client:
        started = client.post(f"{ADMIN}/sync-git", headers=bearer())
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        wait_for_job(client, job_id)
        for i, (method, path) in enumerate(admin_calls(job_id)):
            for headers in ({}, {"Authorization": f"Basic {ADMIN_TOKEN}"}, {"Authorization": "Bearer"}):
                missing = client.request(method, path, headers=headers)
                assert missing.status_code == 401, (method, path, headers, missing.text)
                assert missing.headers["www-authenticate"].lower().startswith("bearer")
                assert "detail" in missing.json()
            # Each call's wrong tokens come from their own loopback address: more than 10 wrong tokens
            # from one address within a minute are answered 429 (tests/test_security_http.py).
            transport = httpx.HTTPTransport(local_address=f"127.0.0.{10 + i}")
            with httpx.Client(base_url=client.base_url, transport=transport) as guesser:
                for wrong in ("nope", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper()):
                    forbidden = guesser.request(method, path, headers=bearer(wrong))
                    assert forbidden.status_code == 403, (method, path, forbidden.text)
                    assert "detail" in forbidden.json()
            right = client.request(method, path, headers=bearer())
            assert right.status_code == 200, (method, path, right.text)


@pytest.mark.slow
def test_the_predecessors_token_variable_works_in_a_real_process_and_ours_wins(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    reload = f"{ADMIN}/reload-config"
    with serve_process(site.path, env={"CC_CATALOG_ADMIN_TOKEN": "legacy-token-1234"}) as (_, url):
        assert httpx.post(url + reload, headers=bearer("legacy-token-1234")).status_code == 200
        assert httpx.post(url + reload, headers=bearer(ADMIN_TOKEN)).status_code == 403
        assert httpx.post(url + reload).status_code == 401
    both = {"CC_CATALOG_ADMIN_TOKEN": "legacy-token-1234", "CCCATALOG_ADMIN_TOKEN": ADMIN_TOKEN}
    with serve_process(site.path, env=both) as (_, url):
        assert httpx.post(url + reload, headers=bearer(ADMIN_TOKEN)).status_code == 200
        assert httpx.post(url + reload, headers=bearer("legacy-token-1234")).status_code == 403


def test_reload_config_answers_the_predecessors_counts(client: httpx.Client) -> None:
    body = client.post(f"{ADMIN}/reload-config", headers=bearer()).json()
    assert set(body) == {"status", "sources", "destinations", "codecollections"}
    # counts, as the predecessor's (this site configures no destination)
    assert (body["sources"], body["destinations"], body["codecollections"]) == (1, 0, 4)


def test_a_collection_a_reload_adds_shows_the_head_of_its_mirror_on_disk(
    site: Site, client: httpx.Client, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    """Its mirror was made under another config (or baked): its status is read from disk, as at
    start-up, instead of head_commit null."""
    zeta = make_upstream("zeta")
    (tmp_path / "other").mkdir()
    other = write_catalog_config(
        tmp_path / "other" / "config.yaml",
        [Collection("zeta", zeta.url)],
        git={"data_dir": str(site.data_dir)},
        state_path="other-state.db",
    )
    assert run(["-q", "sync", "-c", str(other)]) == 0
    assert (site.data_dir / "zeta.git").is_dir()
    assert "unknown git repo" in get_json(client, f"{REPOS}/zeta", 404)["detail"]

    collections = [Collection(slug, site.upstreams[slug].url) for slug in ("alpha", "beta", "gamma")]
    write_catalog_config(site.path, [*collections, Collection("zeta", zeta.url)])
    assert client.post(f"{ADMIN}/reload-config", headers=bearer()).status_code == 200
    repo = get_json(client, f"{REPOS}/zeta")
    assert (repo["present"], repo["head_commit"], repo["default_branch"]) == (True, zeta.sha("main"), "main")
    assert get_json(client, f"{REPOS}/alpha")["head_commit"] == site.upstreams["alpha"].sha("main")


def test_sync_catalog_counts_only_collections_polled_and_names_the_source_of_each_error(
    site: Site, client: httpx.Client
) -> None:
    (site.path.parent / "static" / "alpha.json").write_text("{not json")
    result = client.post(f"{ADMIN}/sync-catalog?wait=true", headers=bearer()).json()
    assert result["collections_processed"] == 2  # beta and delta; alpha failed
    [error] = result["errors"]
    assert (error["source"], error["slug"]) == ("offline", "alpha")
    assert "invalid JSON" in error["error"]
    assert get_json(client, f"{CATALOG}/alpha")["latest_image_tag"] == LATEST_TAG  # kept


def test_reload_config_status_is_ok_like_the_predecessors(client: httpx.Client) -> None:
    assert client.post(f"{ADMIN}/reload-config", headers=bearer()).json()["status"] == "ok"


# --- sync jobs --------------------------------------------------------------------------------------

GIT_SUMMARY = {"enabled", "runtime_sync", "repos_processed", "repos_updated", "errors"}
CATALOG_SUMMARY = {"collections_processed", "refs_upserted", "refs_deactivated", "errors"}


def test_sync_git_runs_as_a_background_job(site: Site, client: httpx.Client) -> None:
    new_head = site.upstreams["alpha"].commit("after the first sync")
    response = client.post(f"{ADMIN}/sync-git", headers=bearer())
    assert response.status_code == 202, response.text
    started = response.json()
    assert response.headers["location"] == f"{ADMIN}/jobs/{started['job_id']}"
    assert started["url"] == response.headers["location"]
    assert started["state"] in ("running", "succeeded")
    assert RFC3339_UTC.fullmatch(started["started_at"])

    job = wait_for_job(client, started["job_id"])
    assert job["state"] == "succeeded", job
    assert job["error"] is None
    assert RFC3339_UTC.fullmatch(job["finished_at"])
    result = job["result"]
    assert set(result) >= GIT_SUMMARY
    assert (result["enabled"], result["runtime_sync"]) == (True, True)
    # repos_updated keeps the predecessor's meaning (synced successfully), repos_changed is new
    assert (result["repos_processed"], result["repos_updated"], result["repos_changed"]) == (3, 3, 1)
    assert result["errors"] == []
    assert "skipped" not in result
    assert get_json(client, f"{REPOS}/alpha")["head_commit"] == new_head


def test_sync_git_wait_answers_the_summary_synchronously(site: Site, client: httpx.Client) -> None:
    new_head = site.upstreams["beta"].commit("after the first sync")
    response = client.post(f"{ADMIN}/sync-git?wait=true", headers=bearer())
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) >= GIT_SUMMARY
    assert (result["repos_processed"], result["repos_updated"], result["repos_changed"]) == (3, 3, 1)
    assert result["errors"] == []
    assert get_json(client, f"{REPOS}/beta")["head_commit"] == new_head


def test_sync_git_of_unchanged_repos_counts_them_updated_as_the_predecessor_did(
    site: Site, client: httpx.Client
) -> None:
    result = client.post(f"{ADMIN}/sync-git?wait=true", headers=bearer()).json()
    assert (result["repos_processed"], result["repos_updated"], result["repos_changed"]) == (3, 3, 0)
    assert [r["action"] for r in result["repos"]] == ["unchanged"] * 3


def test_sync_catalog_as_a_job_and_with_wait(site: Site, client: httpx.Client) -> None:
    write_builds(
        site.path,
        "alpha",
        [b for b in ALPHA_BUILDS if b["ref"] not in ("dev", "feature/login")],
        stable_ref="v1.2.0",
    )
    response = client.post(f"{ADMIN}/sync-catalog", headers=bearer())
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{ADMIN}/jobs/{response.json()['job_id']}"
    job = wait_for_job(client, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert set(job["result"]) >= CATALOG_SUMMARY
    # alpha: main, v1.2.0-rc1, v1.2.0, v1.1.0; beta: main; delta: main
    assert {k: job["result"][k] for k in CATALOG_SUMMARY} == {
        "collections_processed": 3,
        "refs_upserted": 6,
        "refs_deactivated": 1,
        "errors": [],
    }
    assert get_json(client, f"{CATALOG}/alpha/refs/feature%2Flogin")["is_active"] is False
    waited = client.post(f"{ADMIN}/sync-catalog?wait=true", headers=bearer())
    assert waited.status_code == 200, waited.text
    assert {k: waited.json()[k] for k in CATALOG_SUMMARY} == {
        "collections_processed": 3,
        "refs_upserted": 6,
        "refs_deactivated": 0,
        "errors": [],
    }


def test_unknown_job_is_404(client: httpx.Client) -> None:
    response = client.get(f"{ADMIN}/jobs/sync-git-999", headers=bearer())
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.slow
def test_two_sync_git_requests_at_once_the_second_gets_409(
    tmp_path: Path, make_upstream: MakeUpstream, admin_env: None
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with http_upstream(tmp_path / "served") as upstream:
        path = write_catalog_config(
            tmp_path / "config.yaml",
            [Collection("alpha", upstream.repo_url("alpha"), [build("main", "1234567")])],
        )
        upstream.stall_seconds = 1.0  # every upstream request: the clone takes seconds
        with api(load_config(path)) as client:
            with ThreadPoolExecutor(2) as pool:
                answers = list(
                    pool.map(lambda _: client.post(f"{ADMIN}/sync-git", headers=bearer()), range(2))
                )
            assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
            job_id = next(a for a in answers if a.status_code == 202).json()["job_id"]
            busy = next(a for a in answers if a.status_code == 409).json()
            assert list(busy) == ["detail"]
            for query in ("", "?wait=true", "?allow_runtime_sync=true"):
                again = client.post(f"{ADMIN}/sync-git{query}", headers=bearer())
                assert again.status_code == 409, again.text
            # the other kind of job is not held up
            catalog = client.post(f"{ADMIN}/sync-catalog?wait=true", headers=bearer())
            assert catalog.status_code == 200, catalog.text
            assert client.get(f"{ADMIN}/jobs/{job_id}").status_code == 401  # the job needs the token too

            job = wait_for_job(client, job_id)
            assert job["state"] == "succeeded", job
            assert (job["result"]["repos_updated"], job["result"]["errors"]) == (1, [])
            upstream.stall_seconds = 0
            after = client.post(f"{ADMIN}/sync-git", headers=bearer())
            assert after.status_code == 202, after.text
            assert wait_for_job(client, after.json()["job_id"])["state"] == "succeeded"


HOLD_LOCK = """
import sys
from pathlib import Path
from cccatalog.gitmirror.locks import file_lock
with file_lock(Path(sys.argv[1]), timeout=10, what="a cron sync"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(("half", "action"), [("git", "sync-git"), ("images", "sync-catalog")])
def test_a_cron_sync_holding_the_run_lock_makes_the_admin_sync_409(
    site: Site, client: httpx.Client, half: str, action: str
) -> None:
    lock = run_lock_path(site.config, half)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        for query in ("", "?wait=true"):
            busy = client.post(f"{ADMIN}/{action}{query}", headers=bearer())
            assert busy.status_code == 409, busy.text
            assert "another cccatalog process" in busy.json()["detail"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    started = client.post(f"{ADMIN}/{action}", headers=bearer())
    assert started.status_code == 202, started.text
    assert wait_for_job(client, started.json()["job_id"])["state"] == "succeeded"


def test_runtime_sync_false_skips_git_unless_explicitly_allowed(
    tmp_path: Path, make_upstream: MakeUpstream, admin_env: None
) -> None:
    site = make_site(tmp_path, make_upstream, git={"runtime_sync": False})
    new_head = site.upstreams["alpha"].commit("not fetched by default")
    with api(site.config) as client:
        for query in ("?wait=true", "?wait=true&allow_runtime_sync=false"):
            response = client.post(f"{ADMIN}/sync-git{query}", headers=bearer())
            assert response.status_code == 200, response.text
            skipped = response.json()
            assert set(skipped) >= GIT_SUMMARY
            assert skipped["skipped"]
            assert (skipped["enabled"], skipped["runtime_sync"]) == (True, False)
            assert (skipped["repos_processed"], skipped["repos_updated"]) == (0, 0)
        assert get_json(client, f"{REPOS}/alpha")["head_commit"] != new_head

        response = client.post(f"{ADMIN}/sync-git?wait=true&allow_runtime_sync=true", headers=bearer())
        allowed = response.json()
        assert "skipped" not in allowed
        assert (allowed["repos_processed"], allowed["repos_changed"], allowed["errors"]) == (3, 1, [])
        assert get_json(client, f"{REPOS}/alpha")["head_commit"] == new_head


def test_sync_catalog_of_static_sources_is_not_held_by_the_git_air_gap_guard(
    tmp_path: Path, make_upstream: MakeUpstream, admin_env: None
) -> None:
    site = make_site(tmp_path, make_upstream, git={"runtime_sync": False})
    write_builds(
        site.path,
        "alpha",
        [b for b in ALPHA_BUILDS if b["ref"] not in ("dev", "feature/login")],
        stable_ref="v1.2.0",
    )
    with api(site.config) as client:
        result = client.post(f"{ADMIN}/sync-catalog?wait=true", headers=bearer()).json()
        assert "skipped" not in result
        assert result["refs_deactivated"] == 1


# --- start-up backfill ------------------------------------------------------------------------------


def test_baked_mirrors_without_a_state_file_are_reported_at_start(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = make_upstream("alpha")
    path = write_catalog_config(tmp_path / "config.yaml", [Collection("alpha", up.url)])
    config = synced_config(path)
    shutil.rmtree(config.state.path.parent)  # the image carries the mirrors, not the state
    assert not config.state.path.exists()
    with api(config) as client:
        repo = get_json(client, f"{REPOS}/alpha")
        assert repo["present"] is True
        assert repo["head_commit"] == up.sha("main")
        assert repo["default_branch"] == "main"
        assert repo["last_sync_error"] is None
        assert get_json(client, f"{CATALOG}/alpha")["git_url"] == f"{PUBLIC_BASE_URL}/alpha.git"
    assert config.state.path.exists()


# --- serve --get ------------------------------------------------------------------------------------


def test_serve_get_prints_the_status_and_the_json_body(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["serve", "--get", f"{CATALOG}?only_with_image=false", "-c", str(site.path)])
    out = capsys.readouterr().out
    assert code == 0, out
    status, _, body = out.partition("\n")
    assert status == "200"
    assert slugs(json.loads(body)) == ["alpha", "beta", "delta", "gamma"]


@pytest.mark.parametrize("target", ["/nope", f"{CATALOG}/nope"])
def test_serve_get_of_a_missing_thing_exits_1(
    site: Site, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    code = run(["serve", "--get", target, "-c", str(site.path)])
    out = capsys.readouterr().out
    assert code == 1, out
    status, _, body = out.partition("\n")
    assert status == "404"
    assert "detail" in json.loads(body)


# --- OpenAPI ----------------------------------------------------------------------------------------


def inline_refs(node: Any, schemas: dict[str, Any]) -> Any:
    """The schema with every `#/components/schemas/X` reference replaced by X (none are recursive)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return inline_refs(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
        return {k: inline_refs(v, schemas) for k, v in node.items()}
    if isinstance(node, list):
        return [inline_refs(v, schemas) for v in node]
    return node


def documented(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def check_against_doc(doc: dict[str, Any], operation: dict[str, Any], response: httpx.Response) -> None:
    """The status is documented and the body matches the documented schema."""
    from openapi_schema_validator import OAS30Validator

    responses = operation["responses"]
    status = str(response.status_code)
    assert status in responses, f"{response.request.url}: {status} not documented: {response.text}"
    schema = responses[status]["content"]["application/json"]["schema"]
    OAS30Validator(inline_refs(schema, doc["components"]["schemas"])).validate(response.json())


def test_the_openapi_document_is_valid(client: httpx.Client) -> None:
    pytest.importorskip("openapi_spec_validator")
    from openapi_spec_validator import validate

    doc = get_json(client, "/api/openapi.json")
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/catalog/codecollections/{slug}/refs/{ref}", "/api/v1/admin/jobs/{job_id}"} <= set(
        doc["paths"]
    )


def test_every_documented_path_answers_a_documented_status(client: httpx.Client) -> None:
    pytest.importorskip("openapi_schema_validator")
    doc = get_json(client, "/api/openapi.json")
    started = client.post(f"{ADMIN}/sync-git", headers=bearer())
    job_id = started.json()["job_id"]
    wait_for_job(client, job_id)
    values = {"slug": "alpha", "ref": "feature/login", "job_id": job_id}
    query = {f"{CATALOG}/{{slug}}/resolve": "?pointer=stable"}
    jobs: list[str] = []
    for path, method, operation in documented(doc):
        if "{name}" in path or "{id}" in path:
            continue  # a site with destinations and mirror jobs: tests/test_destinations_registry.py
        target = path.format(**values) + query.get(path, "")
        response = client.request(method, target, headers=bearer())
        assert response.status_code != 404, f"{method} {target}: {response.text}"
        check_against_doc(doc, operation, response)
        if response.status_code == 202:
            jobs.append(response.json()["job_id"])
    for started_id in jobs:
        assert wait_for_job(client, started_id)["state"] == "succeeded"


def test_unknown_path_parameters_answer_a_documented_404(client: httpx.Client) -> None:
    pytest.importorskip("openapi_schema_validator")
    doc = get_json(client, "/api/openapi.json")
    checked = 0
    for path, method, operation in documented(doc):
        if "{" not in path:
            continue
        target = path.format(slug="nope", ref="nope", job_id="nope", name="nope", id="999")
        response = client.request(
            method, target + ("?pointer=latest" if "resolve" in path else ""), headers=bearer()
        )
        assert response.status_code == 404, f"{method} {target}: {response.text}"
        check_against_doc(doc, operation, response)
        checked += 1
    assert checked == 9


def test_admin_error_statuses_are_documented(site: Site, client: httpx.Client) -> None:
    doc = get_json(client, "/api/openapi.json")
    site.path.write_text(site.path.read_text() + "surprise: true\n")
    for path in (f"{ADMIN}/reload-config", f"{ADMIN}/sync-git?allow_runtime_sync=maybe"):
        response = client.post(path, headers=bearer())
        assert response.status_code == 422
        assert "422" in doc["paths"][path.split("?")[0]]["post"]["responses"]


# --- health -----------------------------------------------------------------------------------------


def test_healthz_and_readyz_report_ok_with_counts(client: httpx.Client) -> None:
    assert get_json(client, "/healthz") == {"status": "ok"}
    ready = get_json(client, "/readyz")
    assert ready["status"] == "ok"
    assert (ready["repos_configured"], ready["repos_servable"]) == (3, 3)


def test_readyz_is_503_when_git_is_enabled_and_data_dir_is_missing(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = make_upstream("alpha")
    path = write_catalog_config(tmp_path / "config.yaml", [Collection("alpha", up.url)])
    config = load_config(path)
    assert not config.git.data_dir.exists()
    with api(config) as client:
        assert get_json(client, "/healthz") == {"status": "ok"}
        body = get_json(client, "/readyz", 503)
        assert body["status"] != "ok"
        assert any("data_dir" in problem for problem in body["problems"])
        assert get_json(client, f"{REPOS}/alpha")["present"] is False
    config.git.data_dir.mkdir()
    with api(config) as client:
        assert get_json(client, "/readyz")["status"] == "ok"
