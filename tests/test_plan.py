"""Which repos a sync covers: decided from the config alone, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cccatalog.config import parse_config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.sync import plan_sync

BASE = {
    "git": {"enabled": True, "data_dir": "/srv/git"},
    "sources": [
        {
            "name": "one",
            "type": "oci",
            "codecollections": [
                {"slug": "a", "git_url": "https://example.com/a"},
                {"slug": "b", "git_url": "https://example.com/b"},
                {"slug": "images-only", "image_registry": "ghcr.io/x/images-only"},
            ],
        },
        {"name": "two", "type": "static", "codecollections": [{"slug": "c", "git_url": "file:///srv/up/c"}]},
    ],
}


def plan(
    git_overrides: dict[str, object], only: tuple[str, ...] = (), *, ignore_enabled: bool = False
) -> list[str]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["git"].update(git_overrides)
    config = parse_config(data, path=Path("/etc/cccatalog/config.yaml"))
    return [t.slug for t in plan_sync(config, only=only, ignore_enabled=ignore_enabled)]


@pytest.mark.parametrize(
    ("overrides", "only", "expected"),
    [
        ({}, (), ["a", "b", "c"]),
        ({"codecollections": ["c", "a"]}, (), ["a", "c"]),
        ({}, ("b",), ["b"]),
        ({}, ("c", "images-only"), ["c"]),
        ({"codecollections": ["a", "b"]}, ("b",), ["b"]),
        ({"enabled": False}, (), []),
    ],
)
def test_plan_covers_collections_with_a_git_url(
    overrides: dict[str, object], only: tuple[str, ...], expected: list[str]
) -> None:
    assert plan(overrides, only) == expected


def test_bake_plans_even_when_git_is_disabled() -> None:
    assert plan({"enabled": False}, ignore_enabled=True) == ["a", "b", "c"]


def test_only_must_name_a_configured_collection() -> None:
    with pytest.raises(UsageError, match="--only nope: no CodeCollection with that slug"):
        plan({}, ("nope",))


@pytest.mark.parametrize(
    ("overrides", "only"),
    [({}, ("images-only",)), ({"codecollections": ["a"]}, ("b",))],
)
def test_only_naming_a_collection_without_a_mirror_plans_no_git_work(
    overrides: dict[str, object], only: tuple[str, ...]
) -> None:
    assert plan(overrides, only) == []
