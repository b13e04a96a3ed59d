"""`upstream` sources in a tiered deployment: a site catalog rides on a connected cccatalog `serve`
(a real one, over loopback), re-publishing its refs; with the source's auth sent only to its origin,
a timeout, 404 as "no refs", and failures that keep the previous rows."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cccatalog.catalog.store import Store
from cccatalog.catalog.upstream import UpstreamError
from cccatalog.catalog.upstream import rows as upstream_rows
from cccatalog.cli import run
from cccatalog.config import CodeCollection, load_config
from tests.apifixtures import ADMIN_TOKEN, Collection, bearer, build, image_tag, write_catalog_config
from tests.servefixtures import running_server, serve_process
from tests.upstreamfixtures import catalog_gate

CATALOG = "/api/v1/catalog/codecollections"
TOKEN = "upstream-Token-0123456789abcdef"
ALPHA_BUILDS = [
    build("main", "aaaaaa1", built_at="2026-01-01T00:00:00Z"),
    build("main", "aaaaaa2", built_at="2026-02-01T00:00:00Z"),
    build("develop", "ddddddd", built_at="2026-02-02T00:00:00Z"),
    build("v1.1.0", "1111aaa"),
    build("v1.2.0", "1212aaa", digest="sha256:" + "c" * 64),
    build("v1.2.0-rc1", "12c1aaa"),
    build("feature/login", "eeeeeee"),
]


@pytest.fixture
def connected(tmp_path: Path) -> Path:
    """The connected catalog's config, polled once: alpha's file says develop is latest (the site's
    config says main: the upstream's flag must win) and v1.2.0 is stable; beta is hidden there."""
    path = write_catalog_config(
        tmp_path / "connected" / "config.yaml",
        [
            Collection("alpha", builds=ALPHA_BUILDS, stable_ref="v1.2.0"),
            Collection("beta", builds=[build("main", "bbbbbbb")], visibility="hidden"),
        ],
        git={"enabled": False},
    )
    static = json.loads((path.parent / "static" / "alpha.json").read_text())
    (path.parent / "static" / "alpha.json").write_text(json.dumps({**static, "default_ref": "develop"}))
    assert run(["-q", "sync", "-c", str(path)]) == 0
    return path


@pytest.fixture
def connected_url(connected: Path) -> Iterator[str]:
    with running_server(load_config(connected)) as server:
        yield server.url


def site_config(
    tmp_path: Path,
    upstream_url: str | None,
    slugs: dict[str, str | None],
    *,
    auth: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Path:
    """A site config with one upstream source; `slugs` maps each slug to its own upstream_url."""
    options: dict[str, Any] = {}
    if upstream_url:
        options["upstream_url"] = upstream_url
    if timeout is not None:
        options["timeout"] = timeout
    source: dict[str, Any] = {
        "name": "connected-catalog",
        "type": "upstream",
        "options": options,
        "codecollections": [
            {"slug": slug, "default_ref": "main", **({"upstream_url": url} if url else {})}
            for slug, url in slugs.items()
        ],
    }
    if auth:
        source["auth"] = auth
    data = {"git": {"enabled": False, "data_dir": "git"}, "state": {"path": "state.db"}, "sources": [source]}
    path = tmp_path / "site" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sync_site(path: Path, capsys: pytest.CaptureFixture[str], expected: int = 0) -> dict[str, Any]:
    capsys.readouterr()
    code = run(["sync", "-c", str(path), "--json"])
    out = capsys.readouterr().out
    assert code == expected, out
    summary: dict[str, Any] = json.loads(out)
    return summary


def refs_of(path: Path, slug: str) -> dict[str, Any]:
    with Store.open(load_config(path).state.path) as store:
        return {r.ref: r for r in store.list_image_refs(slug)}


def without_sync_time(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "synced_at"} for r in refs]


def test_a_site_catalog_republishes_a_connected_serves_refs_as_they_are(
    tmp_path: Path, connected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_process(connected) as (_, connected_url):
        site = site_config(tmp_path, connected_url, {"alpha": None, "beta": None, "unknown-there": None})
        summary = sync_site(site, capsys)
        upstream_refs = httpx.get(f"{connected_url}{CATALOG}/alpha/refs").json()
        upstream_entry = httpx.get(f"{connected_url}{CATALOG}/alpha").json()

    images = {i["slug"]: i for i in summary["images"]}
    assert (images["alpha"]["refs"], images["alpha"]["error"]) == (6, None)
    assert (images["beta"]["refs"], images["beta"]["error"]) == (1, None)  # hidden there, resolvable
    assert (images["unknown-there"]["refs"], images["unknown-there"]["error"]) == (0, None)  # a 404
    with running_server(load_config(site)) as server, httpx.Client(base_url=server.url) as client:
        site_refs = client.get(f"{CATALOG}/alpha/refs").json()
        site_entry = client.get(f"{CATALOG}/alpha").json()
        assert client.get(f"{CATALOG}/unknown-there/refs").json() == []
    assert without_sync_time(site_refs) == without_sync_time(upstream_refs)
    flags = {r["ref"]: (r["is_latest"], r["is_prerelease"]) for r in site_refs}
    assert flags["develop"] == (True, True)  # the upstream's latest, not the site's default_ref
    assert flags["main"] == (False, True)
    assert flags["v1.2.0"] == (False, False)
    assert flags["v1.2.0-rc1"] == (False, True)
    assert (site_entry["latest_image_tag"], site_entry["stable_image_tag"]) == (
        upstream_entry["latest_image_tag"],
        upstream_entry["stable_image_tag"],
    )
    assert site_entry["stable_image_tag"] == image_tag("v1.2.0", "1212aaa")


def test_a_collections_own_upstream_url_wins_over_the_sources(
    tmp_path: Path, connected_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_config(tmp_path, "http://127.0.0.1:9", {"alpha": connected_url, "beta": None})
    summary = sync_site(site, capsys, expected=1)
    images = {i["slug"]: i for i in summary["images"]}
    assert images["alpha"]["error"] is None
    assert images["alpha"]["latest_tag"] == image_tag("develop", "ddddddd")
    assert "127.0.0.1:9" in images["beta"]["error"]


def test_a_failing_upstream_keeps_the_previous_rows_and_says_why(
    tmp_path: Path, connected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(load_config(connected)) as server:
        site = site_config(tmp_path, server.url, {"alpha": None})
        sync_site(site, capsys)
        before = refs_of(site, "alpha")
    summary = sync_site(site, capsys, expected=1)  # the connected catalog is gone
    assert "upstream catalog http://127.0.0.1:" in summary["images"][0]["error"]
    assert refs_of(site, "alpha") == before
    with Store.open(load_config(site).state.path) as store:
        status = store.get_image_sync("alpha")
    assert status is not None
    assert status.error is not None
    assert "/api/v1/catalog/codecollections/alpha/refs" in status.error


@pytest.mark.slow
def test_an_upstream_that_never_answers_fails_after_options_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with catalog_gate(stall=threading.Event()) as gate:
        site = site_config(tmp_path, gate.url, {"alpha": None}, timeout=1)
        summary = sync_site(site, capsys, expected=1)
    assert "no answer within 1 s" in summary["images"][0]["error"]
    assert gate.paths == [f"{CATALOG}/alpha/refs"]


AUTH_CASES = {
    "bearer": ({"token_env": "UPSTREAM_TOKEN"}, {"UPSTREAM_TOKEN": TOKEN}, f"Bearer {TOKEN}"),
    "basic": (
        {"user_env": "UPSTREAM_USER", "pass_env": "UPSTREAM_PASS"},
        {"UPSTREAM_USER": "site", "UPSTREAM_PASS": TOKEN},
        "Basic c2l0ZTp1cHN0cmVhbS1Ub2tlbi0wMTIzNDU2Nzg5YWJjZGVm",  # site:<TOKEN>
    ),
}


@pytest.mark.parametrize("case", AUTH_CASES)
def test_the_sources_auth_is_sent_to_the_upstream(
    tmp_path: Path,
    connected_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    auth, env, sent = AUTH_CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with catalog_gate(target=connected_url, required_authorization=sent) as gate:
        site = site_config(tmp_path, gate.url, {"alpha": None}, auth=auth)
        summary = sync_site(site, capsys)
    assert summary["images"][0]["refs"] == 6
    assert gate.seen_authorization == [sent]


def test_a_rejected_token_fails_the_collection_without_showing_it(
    tmp_path: Path, connected_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_TOKEN", TOKEN)
    with catalog_gate(target=connected_url, required_authorization="Bearer another") as gate:
        site = site_config(tmp_path, gate.url, {"alpha": None}, auth={"token_env": "UPSTREAM_TOKEN"})
        capsys.readouterr()
        assert run(["sync", "-c", str(site), "--json"]) == 1
        captured = capsys.readouterr()
    assert "HTTP 401" in json.loads(captured.out)["images"][0]["error"]
    assert TOKEN not in captured.out + captured.err
    with Store.open(load_config(site).state.path) as store:
        status = store.get_image_sync("alpha")
    assert status is not None
    assert TOKEN not in str(status.error)
    assert gate.seen_authorization == [f"Bearer {TOKEN}"]


def test_credentials_never_follow_a_redirect_to_another_origin(
    tmp_path: Path, connected_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_TOKEN", TOKEN)
    with (
        catalog_gate(target=connected_url) as elsewhere,
        catalog_gate(redirect_to=elsewhere.url, required_authorization=f"Bearer {TOKEN}") as front,
    ):
        site = site_config(tmp_path, front.url, {"alpha": None}, auth={"token_env": "UPSTREAM_TOKEN"})
        summary = sync_site(site, capsys)
    assert summary["images"][0]["refs"] == 6  # the answer came from the other origin
    assert front.seen_authorization == [f"Bearer {TOKEN}"]
    assert elsewhere.seen_authorization == [None]
    assert elsewhere.paths == [f"{CATALOG}/alpha/refs"]


def test_upstream_polls_run_on_an_air_gapped_site_and_stop_at_the_image_guard(
    tmp_path: Path, connected_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """git.runtime_sync: false does not stop them (a site catalog riding on an internal catalog);
    images.runtime_sync: false does, in sync (exit 2) and in the admin API (reported as held back)."""
    site = site_config(tmp_path, connected_url, {"alpha": None})
    data = yaml.safe_load(site.read_text())
    data["git"]["runtime_sync"] = False
    site.write_text(yaml.safe_dump(data))
    assert sync_site(site, capsys)["images"][0]["refs"] == 6

    data["images"] = {"runtime_sync": False}
    site.write_text(yaml.safe_dump(data))
    assert run(["-q", "sync", "-c", str(site), "--no-git"]) == 2
    assert "images.runtime_sync is false" in capsys.readouterr().err
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)
    with running_server(load_config(site)) as server:
        held = httpx.post(f"{server.url}/api/v1/admin/sync-catalog?wait=true", headers=bearer()).json()
        allowed = httpx.post(
            f"{server.url}/api/v1/admin/sync-catalog?wait=true&allow_runtime_sync=true", headers=bearer()
        ).json()
    assert (held["collections_processed"], held["held_back"]) == (0, ["alpha"])
    assert "images.runtime_sync is false" in held["skipped"]
    assert (allowed["collections_processed"], allowed["refs_upserted"]) == (1, 6)
    assert "held_back" not in allowed


# --- the rows, from answers a real catalog does not give ----------------------------------------


def upstream_row(ref: str, **fields: object) -> dict[str, object]:
    return {"ref": ref, "image_tag": f"{ref.replace('/', '-')}-aaaaaaa-1111111", **fields}


def test_an_older_catalog_without_flags_gets_them_derived_as_for_a_registry() -> None:
    cc = CodeCollection(slug="alpha", source="up", default_ref="main", image_registry="r.example.com/a")
    rows = {
        r.ref: r
        for r in upstream_rows(cc, [upstream_row(ref) for ref in ("main", "v1.0.0", "v1.1.0-rc1")], shown="u")
    }
    assert {ref: (r.is_latest, r.is_stable, r.is_prerelease, r.ref_type) for ref, r in rows.items()} == {
        "main": (True, False, True, "branch"),
        "v1.0.0": (False, True, False, "tag"),
        "v1.1.0-rc1": (False, False, True, "tag"),
    }
    assert rows["main"].image_registry == "r.example.com/a"


def test_inactive_rows_of_the_upstream_are_not_republished_as_active() -> None:
    cc = CodeCollection(slug="alpha", source="up")
    payload = [upstream_row("main", is_latest=True), upstream_row("gone", is_active=False)]
    assert [r.ref for r in upstream_rows(cc, payload, shown="u")] == ["main"]


@pytest.mark.parametrize(
    "payload",
    [{"refs": []}, [{"ref": "main"}], [{"image_tag": "x"}], ["main"], [{"ref": 1, "image_tag": "x"}]],
)
def test_an_answer_that_is_not_a_refs_list_fails_the_collection(payload: object) -> None:
    with pytest.raises(UpstreamError, match="upstream catalog u: "):
        upstream_rows(CodeCollection(slug="alpha", source="up"), payload, shown="u")
