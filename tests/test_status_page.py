"""The status page at `/` and `/ui`, read over a real socket: what it shows per repository, per
CodeCollection and for the server, and what it must never do (list a hidden collection, let a header,
a name or a stored error inject markup, show a secret, point a browser at another host).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from tests.apifixtures import Collection, build, write_catalog_config
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream
from tests.pagefixtures import Page, three_repos
from tests.robustfixtures import raw_request
from tests.servefixtures import running_server, synced_config

MakeUpstream = Callable[[str], Upstream]
CANARY = "ghp_" + "C4n4ryT0ken" * 4


def get_page(url: str, **headers: str) -> tuple[httpx.Response, Page]:
    response = httpx.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return response, Page(response.text)


def test_each_repository_has_a_row_with_its_freshness_head_and_clone_url(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = load_config(three_repos(make_upstream, write_config, tmp_path))
    with running_server(config) as server:
        response, page = get_page(f"{server.url}/")

    assert response.headers["content-type"] == "text/html; charset=utf-8"
    fresh, failing = page.ids["repo-fresh"], page.ids["repo-failing"]
    assert fresh["data-freshness"] == "fresh"
    assert failing["data-freshness"] == "failing"
    assert page.ids["clone-fresh"]["class"] == "url"
    assert f"{server.url}/git/fresh.git" in response.text
    assert f"{server.url}/git/failing.git" in response.text, "a failing repo still serves its last mirror"
    text = page.all_text
    assert "Last sync failed" in text
    assert "does not appear to be a git repository" in text
    assert "1 failing" in text
    # the copy buttons are hidden until the script shows them: without JavaScript the URL is text
    assert (
        "button",
        {"type": "button", "class": "copy", "data-copy": "clone-fresh", "hidden": None},
    ) in page.tags


def test_a_hidden_collection_is_not_listed(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = load_config(three_repos(make_upstream, write_config, tmp_path))
    with running_server(config) as server:
        response, _ = get_page(f"{server.url}/ui")

    assert "secretive" not in response.text
    assert "1 hidden collection is not listed" in response.text


def test_a_repository_never_synced_is_stale_and_not_served(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    synced_config(write_config({"alpha": up.url}))
    config = load_config(write_config({"alpha": up.url, "ghost": "file:///nonexistent/ghost"}, name="b.yaml"))
    with running_server(config) as server:
        _, page = get_page(f"{server.url}/")

    assert page.ids["repo-ghost"]["data-freshness"] == "stale"
    assert "clone-ghost" not in page.ids
    assert "not served: no complete mirror yet" in page.all_text
    assert "1 stale" in page.all_text


def test_a_mirror_older_than_the_budget_is_stale(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    config = synced_config(path)
    with Store.open(config.state.path) as store:
        mirror = store.get_mirror("alpha")
        assert mirror is not None
        assert mirror.head_commit
        three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
        store.record_mirror_success(
            "alpha",
            upstream_url="x",
            action="updated",
            head_commit=mirror.head_commit,
            default_branch="main",
            refs_fingerprint="x",
            attempted_at=three_hours_ago,
            finished_at=three_hours_ago,
        )
    with running_server(config) as server:
        _, page = get_page(f"{server.url}/")
    assert page.ids["repo-alpha"]["data-freshness"] == "stale"
    assert "3h ago" in page.all_text

    path.write_text(path.read_text() + "serve:\n  freshness_budget_minutes: 240\n")
    with running_server(load_config(path)) as server:
        _, page = get_page(f"{server.url}/")
    assert page.ids["repo-alpha"]["data-freshness"] == "fresh"
    assert "synced within the last 4h" in page.all_text


def test_collections_show_latest_and_stable_with_built_time_and_digest(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    path = write_catalog_config(
        tmp_path / "catalog.yaml",
        [
            Collection(
                "alpha",
                name="Alpha <Tools>",
                builds=[
                    build("main", "aaaaaaa", built_at="2026-01-02T03:04:05Z", digest=digest),
                    build("v1.2.0", "bbbbbbb", built_at="2025-12-01T00:00:00Z"),
                ],
                stable_ref="v1.2.0",
            ),
            Collection("hush", builds=[build("main", "ccccccc")], visibility="hidden"),
        ],
        git={"enabled": False},
    )
    assert run(["-q", "sync", "-c", str(path)]) == 0
    with running_server(load_config(path)) as server:
        response, page = get_page(f"{server.url}/")

    row = page.ids["cc-alpha"]
    assert row["data-slug"] == "alpha"
    assert "main-aaaaaaa-1111111" in response.text
    assert "v1.2.0-bbbbbbb-1111111" in response.text
    assert digest in response.text
    assert 'datetime="2026-01-02T03:04:05Z"' in response.text
    assert "Alpha &lt;Tools&gt;" in response.text
    assert "<Tools>" not in response.text
    assert "hush" not in response.text
    assert "Git mirroring is off" in page.all_text


def test_every_text_is_escaped_and_stored_errors_are_redacted(
    make_upstream: MakeUpstream, write_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    hostile = (
        f'remote: <script>alert(1)</script><img src="https://evil.example/x.png"> '
        f"https://user:{CANARY}@github.com/x Authorization: Bearer {CANARY} admin-Token-1234567890"
    )
    with Store.open(config.state.path) as store:
        store.record_mirror_failure(
            "alpha", upstream_url="x", action="failed", error=hostile, attempted_at=datetime.now(UTC)
        )
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", "admin-Token-1234567890")
    with running_server(config) as server:
        response, page = get_page(f"{server.url}/")

    assert "<script>alert" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert not [tag for tag, attrs in page.tags if tag == "img"]
    assert CANARY not in response.text
    assert "admin-Token-1234567890" not in response.text
    assert "***" in page.all_text


@pytest.mark.parametrize(
    "hostile",
    [
        '/x"><script>alert(1)</script>',
        "//evil.example",
        "/a/../b",
        "https://evil.example/",
        "/ok%0d%0aSet-Cookie:a=b",
        "/a;b=c",
        "/a b",
    ],
)
def test_a_forwarded_prefix_that_is_not_a_plain_path_is_ignored(
    make_upstream: MakeUpstream, write_config: MakeConfig, hostile: str
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        reply = raw_request(server.url, "GET", "/", headers={"X-Forwarded-Prefix": hostile})

    body = reply.body.decode()
    assert reply.status == 200
    assert "evil.example" not in body
    assert "<script>alert" not in body
    assert "set-cookie" not in reply.headers
    assert 'href="/metrics"' in body, "the prefix was used although it is not a plain path"


def test_a_forwarded_prefix_and_the_mount_path_shape_every_link_and_derived_clone_url(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url}, git_extra="  mount_path: /repos\n")
    config = synced_config(path)
    with running_server(config) as server:
        response, page = get_page(
            f"{server.url}/", **{"X-Forwarded-Prefix": "/cc-catalog/", "X-Forwarded-Proto": "https"}
        )
        host = server.url.removeprefix("http://")

    assert f"https://{host}/cc-catalog/repos/alpha.git" in response.text
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a"]
    assert links
    assert all(str(link).startswith("/cc-catalog/") for link in links), links
    assert "/cc-catalog/metrics" in links


def test_the_configured_prefix_and_public_base_url_are_used_without_headers(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config(
        {"alpha": make_upstream("alpha").url},
        git_extra="  public_base_url: https://git.example.com/mirrors\n",
    )
    path.write_text(path.read_text() + "serve:\n  path_prefix: /status-behind-proxy\n")
    config = synced_config(path)
    with running_server(config) as server:
        response, page = get_page(f"{server.url}/", Host='evil"><b>x</b>')

    assert "https://git.example.com/mirrors/alpha.git" in response.text
    assert "/status-behind-proxy/api/v1/git/repos" in [
        attrs["href"] for tag, attrs in page.tags if tag == "a"
    ]
    assert "<b>x</b>" not in response.text


def test_a_hostile_host_header_never_becomes_a_clone_url(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        response, _ = get_page(f"{server.url}/", Host='evil.example"><script>x</script>')

    assert "<script>x" not in response.text
    assert "evil.example" not in response.text
    assert ">/git/alpha.git<" in response.text  # no usable host: the path alone


def test_the_page_asks_for_nothing_from_anywhere_and_says_so_in_its_policy(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        response, page = get_page(f"{server.url}/")

    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    for tag, attrs in page.tags:
        assert tag not in ("img", "iframe", "object", "embed", "form"), tag
        for name in ("src", "href", "action"):
            ref = attrs.get(name)
            if ref is not None:
                assert ref.startswith("/") or ref == "data:,", (tag, name, ref)
    assert not [url for url in re.findall(r"https?://[^\s\"'<]+", response.text) if server.url not in url]
    assert len(response.content) < 40_000


def test_head_has_no_body_and_other_methods_are_refused(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        head = raw_request(server.url, "HEAD", "/")
        post = raw_request(server.url, "POST", "/ui", body=b"x")

    assert head.status == 200
    assert head.body == b""
    assert post.status == 405


def test_the_server_block_shows_version_config_and_a_failed_reload(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    config = synced_config(path)
    with running_server(config) as server:
        _, page = get_page(f"{server.url}/")
        assert "Last reload failed" not in page.all_text
        path.write_text("git: [this is not a mapping\n")
        assert not server.api.live.reload()
        _, after = get_page(f"{server.url}/")

    text = page.all_text
    assert "Version" in text
    assert str(config.path) in text
    assert "0 of 8 allowed at once" in text
    assert str(config.state.path) in text
    assert "Last reload failed" in after.all_text
    assert "stays in effect" in after.all_text


def test_a_baked_mirror_is_shown_as_baked_with_its_bake_time(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    bake_config = write_config({"alpha": up.url}, name="bake.yaml")
    dest = tmp_path / "baked"
    dest.mkdir()
    assert run(["-q", "bake", "-c", str(bake_config), "--dest", str(dest)]) == 0
    serve_config = tmp_path / "serve.yaml"
    data = yaml.safe_load(bake_config.read_text())
    data["git"]["data_dir"] = str(dest)
    data["state"] = {"path": str(tmp_path / "state" / "state.sqlite3")}
    serve_config.write_text(yaml.safe_dump(data))
    with running_server(load_config(serve_config)) as server:
        _, page = get_page(f"{server.url}/")

    assert page.ids["repo-alpha"]["data-freshness"] == "baked"
    assert "baked" in page.all_text
    assert "as baked" in page.all_text
