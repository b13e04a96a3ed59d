"""`serve` verifies its mirrors against the manifest in data_dir at start-up: every listed repo present,
complete and at the listed refs, and the manifest signed when `transfer.allowed_signers` is set. A
manifest that fails makes the replica unready; a repo that fails is reported ("degraded") and the
replica stays ready, serving the others."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.cli import run
from cccatalog.config import load_config
from cccatalog.errors import ConfigError
from tests.gitfixtures import Upstream
from tests.servefixtures import running_server
from tests.transferfixtures import SIGNER, Keys, Sides, make_keys

MakeUpstream = Callable[[str], Upstream]


def baked(tmp_path: Path, make_upstream: MakeUpstream, *, sign: Keys | None = None, trust: str = "") -> Sides:
    sides = Sides(tmp_path, {slug: make_upstream(slug).url for slug in ("alpha", "beta")})
    sides.write({}, site_extra=trust)
    signing = ["--sign-key", str(sign.key)] if sign else []
    assert run(["-q", "bake", "-c", str(sides.connected), "--dest", str(sides.site_mirrors), *signing]) == 0
    return sides


def readiness(sides: Sides) -> tuple[int, list[str]]:
    with running_server(load_config(sides.site)) as server:
        answer = httpx.get(f"{server.url}/readyz")
    return answer.status_code, answer.json().get("problems", [])


def repo_warnings(sides: Sides) -> tuple[int, str, list[str]]:
    with running_server(load_config(sides.site)) as server:
        answer = httpx.get(f"{server.url}/readyz")
    body = answer.json()
    return answer.status_code, body["status"], body.get("warnings", [])


def test_a_missing_baked_repo_is_reported_and_serve_stays_ready(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    sides = baked(tmp_path, make_upstream)
    assert readiness(sides) == (200, [])
    shutil.rmtree(sides.site_mirrors / "beta.git")
    (sides.site.parent / "state" / "state.sqlite3").unlink()
    assert repo_warnings(sides) == (
        200,
        "degraded",
        [f"beta: listed in the manifest but missing from {sides.site_mirrors}"],
    )


def test_a_half_made_baked_repo_is_reported_and_serve_stays_ready(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    sides = baked(tmp_path, make_upstream)
    (sides.site_mirrors / "alpha.git" / "HEAD").write_text("ref: refs/heads/never-fetched\n")
    assert repo_warnings(sides) == (
        200,
        "degraded",
        ["alpha: half-made or damaged (HEAD does not resolve to a commit)"],
    )


def test_a_signed_bake_is_ready_and_a_changed_manifest_is_not(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    keys = make_keys(tmp_path / "keys")
    trust = f"transfer:\n  allowed_signers: {keys.allowed_signers}\n  signer: {SIGNER}\n"
    sides = baked(tmp_path / "site", make_upstream, sign=keys, trust=trust)
    assert (sides.site_mirrors / "manifest.json.sig").is_file()
    assert readiness(sides) == (200, [])

    manifest = sides.site_mirrors / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["repos"] = [r for r in doc["repos"] if r["slug"] != "beta"]  # hide a repo from the check
    manifest.write_text(json.dumps(doc))
    status, problems = readiness(sides)
    assert status == 503
    assert any("manifest.json does not match its signature" in p for p in problems), problems


def test_an_unsigned_manifest_is_a_problem_once_signers_are_configured(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    keys = make_keys(tmp_path / "keys")
    sides = baked(
        tmp_path / "site", make_upstream, trust=f"transfer:\n  allowed_signers: {keys.allowed_signers}\n"
    )
    status, problems = readiness(sides)
    assert status == 503
    assert any("is not signed (manifest.json.sig is missing)" in p for p in problems), problems


def test_a_signer_without_an_allowed_signers_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("transfer:\n  signer: release@example.org\n  extra: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "transfer.extra: unknown key (expected one of: allowed_signers, signer)",
        "transfer.signer: is set without transfer.allowed_signers (the file that holds its key)",
    ]
