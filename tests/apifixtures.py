"""Fixtures for the JSON API tests: configs with `static` image sources and git mirrors, written as
an operator would write them, and small helpers to talk to a server over loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.waiting import wait_until

ADMIN_TOKEN = "admin-Token-for-tests-0123456789"
PUBLIC_BASE_URL = "https://cc-catalog.example.com/git"
RT_REVISION = "1111111"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def build(
    ref: str, commit: str, *, built_at: str | None = None, digest: str | None = None
) -> dict[str, object]:
    """One entry of a static_path JSON file: a build of `ref` at `commit` (7+ hex digits); refs
    like v1.2.0 are tags, as a build system writing the file would say."""
    return {
        "ref": ref,
        "ref_type": "tag" if re.match(r"v\d", ref) else "branch",
        "commit": commit,
        "rt_revision": RT_REVISION,
        "image_tag": image_tag(ref, commit),
        "image_digest": digest,
        "built_at": built_at,
    }


def image_tag(ref: str, commit: str) -> str:
    return f"{ref.replace('/', '-')}-{commit}-{RT_REVISION}"


@dataclass(frozen=True)
class Collection:
    """A CodeCollection of the test config; `builds` (when given) become its static_path file."""

    slug: str
    git_url: str | None = None
    builds: Sequence[Mapping[str, object]] | None = None
    visibility: str = "public"
    name: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    stable_ref: str | None = None  # what the static file names as stable

    def registry(self) -> str:
        return f"registry.example.com/runwhen/{self.slug}"


def static_file(config_path: Path, slug: str) -> Path:
    return config_path.parent / "static" / f"{slug}.json"


def write_builds(
    config_path: Path, slug: str, builds: Sequence[Mapping[str, object]], *, stable_ref: str | None = None
) -> None:
    path = static_file(config_path, slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {"default_ref": "main"} | ({"stable_ref": stable_ref} if stable_ref else {})
    path.write_text(json.dumps({**names, "refs": list(builds)}))


def write_catalog_config(
    path: Path,
    collections: Sequence[Collection],
    *,
    git: Mapping[str, object] | None = None,
    state_path: str | None = "state/state.sqlite3",
) -> Path:
    """Write a YAML config with one static source; `git` overrides keys of the git block."""
    entries: list[dict[str, object]] = []
    for cc in collections:
        entry: dict[str, object] = {"slug": cc.slug, "visibility": cc.visibility}
        if cc.name:
            entry["name"] = cc.name
        if cc.git_url:
            entry["git_url"] = cc.git_url
        if cc.builds is not None:
            write_builds(path, cc.slug, cc.builds, stable_ref=cc.stable_ref)
            entry["static_path"] = str(static_file(path, cc.slug).relative_to(path.parent))
            entry["image_registry"] = cc.registry()
        entry.update(cc.extra)
        entries.append(entry)
    data: dict[str, Any] = {
        "git": {
            "enabled": True,
            "data_dir": "mirrors",
            "lock_timeout_seconds": 5,
            "public_base_url": PUBLIC_BASE_URL,
            **(git or {}),
        },
        "sources": [{"name": "offline", "type": "static", "codecollections": entries}],
    }
    if state_path is not None:
        data["state"] = {"path": state_path}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET /api/v1/admin/jobs/{id} until the job is no longer running; its last body."""

    def finished() -> dict[str, Any] | None:
        response = client.get(f"/api/v1/admin/jobs/{job_id}", headers=bearer())
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["state"] != "running" else None

    found = wait_until(finished, timeout, what=f"job {job_id} to finish")
    assert found is not None
    return found


def wait_for_answer(
    client: httpx.Client, path: str, predicate: Callable[[httpx.Response], bool], *, timeout: float = 10.0
) -> httpx.Response:
    """GET `path` until `predicate(response)` holds (the config poll runs every 2 s); that response."""

    def answer() -> httpx.Response | None:
        response = client.get(path)
        return response if predicate(response) else None

    found = wait_until(answer, timeout, what=f"{path} to satisfy the condition", interval=0.1)
    assert found is not None
    return found
