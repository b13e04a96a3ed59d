"""`cccatalog bake` into a directory, its manifest, and serve's start-up check against it."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.cli import run
from tests.gitfixtures import Upstream, git, http_upstream, mirror_refs
from tests.servefixtures import running_server

MakeUpstream = Callable[[str], Upstream]
TOKEN = "ghp_" + "BakeT0kenSecret" * 2


def bake_config(tmp_path: Path, repos: dict[str, str], *, auth: str = "") -> Path:
    entries = "".join(f"      - slug: {slug}\n        git_url: {url}\n" for slug, url in repos.items())
    git_block = auth or "  enabled: false\n"
    path = tmp_path / "config.bake.yaml"
    path.write_text(
        f"git:\n{git_block}sources:\n  - name: bake\n    type: oci\n    codecollections:\n{entries}"
    )
    return path


def test_bake_mirrors_every_collection_and_writes_a_manifest(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha, beta = make_upstream("alpha"), make_upstream("beta")
    dest = tmp_path / "baked"
    code = run(
        [
            "bake",
            "-c",
            str(bake_config(tmp_path, {"alpha": alpha.url, "beta": beta.url})),
            "--dest",
            str(dest),
        ]
    )
    assert code == 0, capsys.readouterr()
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [r["slug"] for r in manifest["repos"]] == ["alpha", "beta"]
    entry = manifest["repos"][0]
    assert entry["head_commit"] == alpha.sha("main")
    assert entry["default_branch"] == "main"
    assert entry["refs"] == mirror_refs(dest / "alpha.git") == alpha.refs("refs/heads", "refs/tags")
    assert entry["pack_size_bytes"] > 0
    assert len(entry["refs_fingerprint"]) == 64
    assert manifest["cccatalog_version"]
    assert manifest["baked_at"].endswith("Z")
    for path in (dest / "alpha.git").rglob("*"):
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH, path
        if path.is_dir():
            assert mode & stat.S_IXOTH, path
    assert list((dest / "alpha.git" / "objects" / "pack").glob("*.bitmap"))


def test_bake_takes_the_token_from_a_file_and_never_writes_it(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    header = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    secret = tmp_path / "secret"
    secret.write_text(TOKEN + "\n")
    dest = tmp_path / "baked"
    with http_upstream(tmp_path / "served", required_authorization=header) as server:
        config = bake_config(
            tmp_path, {"alpha": server.repo_url("alpha")}, auth="  auth:\n    token_env: GH_TOKEN\n"
        )
        code = run(["bake", "-c", str(config), "--dest", str(dest), "--token-file", str(secret), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    for text in (out, err, (dest / "manifest.json").read_text(), (dest / "alpha.git" / "config").read_text()):
        assert TOKEN not in text
        assert header.split()[1] not in text


@pytest.mark.parametrize("auth", ["  auth:\n    token_env: GH_TOKEN\n", ""], ids=["token_env", "no-auth"])
def test_an_explicit_token_file_wins_over_a_variable_already_set(
    make_upstream: MakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str
) -> None:
    # a stale token left in the build environment must not silently replace the one asked for
    monkeypatch.setenv("GH_TOKEN", "ghp_stale")
    monkeypatch.setenv("CCCATALOG_BAKE_TOKEN", "ghp_stale")
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    header = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    secret = tmp_path / "secret"
    secret.write_text(TOKEN + "\n")
    with http_upstream(tmp_path / "served", required_authorization=header) as server:
        config = bake_config(tmp_path, {"alpha": server.repo_url("alpha")}, auth=auth)
        code = run(
            ["-q", "bake", "-c", str(config), "--dest", str(tmp_path / "baked"), "--token-file", str(secret)]
        )
    assert code == 0
    assert (tmp_path / "baked" / "alpha.git").is_dir()


def test_bake_fails_with_the_reason_per_repo_and_writes_no_manifest(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = bake_config(
        tmp_path, {"alpha": make_upstream("alpha").url, "gone": (tmp_path / "nope").as_uri()}
    )
    dest = tmp_path / "baked"
    assert run(["bake", "-c", str(config), "--dest", str(dest), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    errors = {r["slug"]: r["error"] for r in summary["repos"]}
    assert errors["alpha"] is None
    assert "does not appear to be a git repository" in errors["gone"]
    assert not (dest / "manifest.json").exists()


def test_bake_with_nothing_to_mirror_is_a_usage_error_that_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "sources:\n  - name: s\n    type: oci\n    codecollections:\n"
        "      - slug: a\n        image_registry: ghcr.io/x/a\n"
    )
    assert run(["bake", "-c", str(path), "--dest", str(tmp_path / "d")]) == 2
    assert "nothing to bake" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_serve_reports_baked_repos_that_do_not_match_the_manifest(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha, beta = make_upstream("alpha"), make_upstream("beta")
    dest = tmp_path / "baked"
    assert (
        run(
            [
                "bake",
                "-c",
                str(bake_config(tmp_path, {"alpha": alpha.url, "beta": beta.url})),
                "--dest",
                str(dest),
            ]
        )
        == 0
    )
    serve_config = tmp_path / "config.yaml"
    serve_config.write_text(
        f"git:\n  enabled: true\n  runtime_sync: false\n  data_dir: {dest}\n"
        f"state:\n  path: {tmp_path / 'state' / 'state.sqlite3'}\n"
        f"sources:\n  - name: s\n    type: oci\n    codecollections:\n"
        f"      - slug: alpha\n        git_url: {alpha.url}\n"
        f"      - slug: beta\n        git_url: {beta.url}\n"
    )
    from cccatalog.config import load_config

    with running_server(load_config(serve_config)) as server:
        assert httpx.get(f"{server.url}/readyz").json()["status"] == "ok"
        repos = httpx.get(f"{server.url}/api/v1/git/repos").json()
        assert {r["slug"]: r["head_commit"] for r in repos} == {
            "alpha": alpha.sha("main"),
            "beta": beta.sha("main"),
        }

    git("--git-dir", str(dest / "beta.git"), "update-ref", "refs/heads/main", "HEAD~0")
    git("--git-dir", str(dest / "beta.git"), "tag", "sneaky", "HEAD")
    (tmp_path / "state" / "state.sqlite3").unlink()
    with running_server(load_config(serve_config)) as server:
        ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200, "one repo's state leaves the replica ready"
    assert ready.json()["status"] == "degraded"
    assert "beta: its refs differ from the manifest (1: refs/tags/sneaky)" in json.dumps(ready.json())
    assert "alpha" not in json.dumps(ready.json()["warnings"])


def test_a_baked_directory_holds_only_mirrors_and_the_manifest(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    dest = tmp_path / "baked"
    assert (
        run(
            [
                "-q",
                "bake",
                "-c",
                str(bake_config(tmp_path, {"alpha": make_upstream("alpha").url})),
                "--dest",
                str(dest),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in dest.iterdir()) == ["alpha.git", "manifest.json"]
