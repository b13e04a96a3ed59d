"""The predecessor's air-gapped deployment: `git.runtime_sync: false` stops git egress and nothing
else. Its image catalog still polls the site's internal registry (here a real registry on loopback)
from `sync --no-git`, the admin API and the scheduler; `static` sources are never held back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.cli import run
from cccatalog.config import load_config
from tests.apifixtures import ADMIN_TOKEN, bearer
from tests.gitfixtures import Upstream
from tests.registry import RunningRegistry, push_image
from tests.servefixtures import running_server

CATALOG = "/api/v1/catalog/codecollections"


def airgap_config(tmp_path: Path, registry: RunningRegistry, repo: str, git_url: str) -> Path:
    """The shape of the predecessor's config.airgap.yaml: baked git, an internal registry."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "scheduler: {catalog_poll_minutes: 15, git_sync_minutes: 60}\n"
        "git:\n  enabled: true\n  data_dir: git\n  runtime_sync: false\n"
        "  public_base_url: https://cc-catalog.example.com/git\n"
        "sources:\n  - name: internal-registry\n    type: oci\n    codecollections:\n"
        f"      - slug: rw-cli-codecollection\n        git_url: {git_url}\n"
        f"        image_registry: {registry.host}/{repo}\n"
    )
    return path


@pytest.fixture
def pushed(registry_anon: RunningRegistry) -> str:
    repo = f"airgap/{uuid.uuid4().hex[:10]}"
    push_image(registry_anon, repo, "main-aaaaaaa-1111111", created="2026-01-01T00:00:00Z")
    push_image(registry_anon, repo, "v1.0.0-bbbbbbb-1111111", created="2026-01-02T00:00:00Z")
    return repo


def test_sync_no_git_polls_the_internal_registry_on_an_air_gapped_config(
    tmp_path: Path,
    registry_anon: RunningRegistry,
    pushed: str,
    make_upstream: Callable[[str], Upstream],
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = make_upstream("rw-cli-codecollection")
    path = airgap_config(tmp_path, registry_anon, pushed, upstream.url)

    assert run(["sync", "-c", str(path), "--no-git", "--json"]) == 0
    [image] = json.loads(capsys.readouterr().out)["images"]
    assert (image["refs"], image["latest_tag"], image["stable_tag"], image["error"]) == (
        2,
        "main-aaaaaaa-1111111",
        "v1.0.0-bbbbbbb-1111111",
        None,
    )
    assert not (tmp_path / "git" / "rw-cli-codecollection.git").exists()

    # a whole sync would fetch git: refused, and the message says how to run the image half
    assert run(["sync", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "git.runtime_sync is false" in err
    assert "--no-git" in err
    assert not (tmp_path / "git" / "rw-cli-codecollection.git").exists()


def test_admin_sync_catalog_polls_the_registry_and_sync_git_stays_held(
    tmp_path: Path,
    registry_anon: RunningRegistry,
    pushed: str,
    make_upstream: Callable[[str], Upstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = make_upstream("rw-cli-codecollection")
    path = airgap_config(tmp_path, registry_anon, pushed, upstream.url)
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)
    with running_server(load_config(path)) as server, httpx.Client(base_url=server.url) as client:
        catalog = client.post("/api/v1/admin/sync-catalog?wait=true", headers=bearer()).json()
        git = client.post("/api/v1/admin/sync-git?wait=true", headers=bearer()).json()
        resolved = client.get(f"{CATALOG}/rw-cli-codecollection/resolve?pointer=latest")
    assert {k: catalog[k] for k in ("collections_processed", "refs_upserted", "errors")} == {
        "collections_processed": 1,
        "refs_upserted": 2,
        "errors": [],
    }
    assert "skipped" not in catalog
    assert (git["runtime_sync"], git["repos_processed"]) == (False, 0)
    assert "git.runtime_sync is false" in git["skipped"]
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["image_tag"] == "main-aaaaaaa-1111111"
