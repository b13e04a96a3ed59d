"""Which repos a sync covers: decided from the config alone, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cccatalog.config import RefScope, parse_config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.mirror import LocalState, RemoteRefs
from cccatalog.gitmirror.sync import UpdatePlan, plan_sync, plan_update

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


# --- what a published mirror needs: decided from its refs and the upstream's, before any change ---

A, B, C = "a" * 40, "b" * 40, "c" * 40
MAIN, DEV, TAG, PULL = "refs/heads/main", "refs/heads/dev", "refs/tags/v1.0.0", "refs/pull/7/head"


def local(refs: dict[str, str], head: str | None = MAIN) -> LocalState:
    return LocalState(head, refs.get(head or ""), refs)


def remote(refs: dict[str, str], head: str | None = MAIN) -> RemoteRefs:
    return RemoteRefs(head, refs)


@pytest.mark.parametrize(
    ("mirror", "upstream", "scope", "expected"),
    [
        pytest.param(
            local({MAIN: A, TAG: B}),
            remote({MAIN: A, TAG: B}),
            "branches-and-tags",
            UpdatePlan(),
            id="unchanged: nothing to do",
        ),
        pytest.param(
            local({MAIN: A}),
            remote({MAIN: B}),
            "branches-and-tags",
            UpdatePlan(fetch=True),
            id="a new commit: fetch",
        ),
        pytest.param(
            local({MAIN: A}),
            remote({MAIN: A, TAG: C}),
            "branches-and-tags",
            UpdatePlan(fetch=True),
            id="a new tag: fetch",
        ),
        pytest.param(
            local({MAIN: A, DEV: B}),
            remote({MAIN: A}),
            "branches-and-tags",
            UpdatePlan(fetch=True),
            id="a deleted branch: fetch (it prunes)",
        ),
        pytest.param(
            local({MAIN: A, DEV: B}),
            remote({MAIN: A, DEV: B}, head=DEV),
            "branches-and-tags",
            UpdatePlan(new_head=DEV),
            id="the default branch moved: set HEAD only",
        ),
        pytest.param(
            local({MAIN: A, PULL: C}),
            remote({MAIN: A}),
            "branches-and-tags",
            UpdatePlan(drop=(PULL,)),
            id="a clone --mirror's pull refs: dropped, nothing fetched",
        ),
        pytest.param(
            local({MAIN: A, PULL: C}),
            remote({MAIN: A, PULL: C}),
            "all",
            UpdatePlan(),
            id="scope all keeps pull refs",
        ),
        pytest.param(
            local({MAIN: A, DEV: B}),
            remote({MAIN: A, DEV: B}, head=None),
            "branches-and-tags",
            UpdatePlan(),
            id="an upstream that does not say its HEAD keeps ours",
        ),
        pytest.param(
            local({MAIN: A}),
            remote({}),
            "branches-and-tags",
            UpdatePlan(refused="the upstream advertises no branches or tags; the mirror was kept as it is"),
            id="an empty upstream is refused, not mirrored to nothing",
        ),
        pytest.param(
            local({MAIN: A, DEV: B}),
            remote({DEV: B}),
            "branches-and-tags",
            UpdatePlan(
                refused="the upstream's default branch refs/heads/main does not exist; "
                "the mirror was kept as it is"
            ),
            id="an upstream that lost its default branch is refused",
        ),
        pytest.param(
            local({MAIN: A, PULL: C}, head=None),
            remote({MAIN: B}),
            "branches-and-tags",
            UpdatePlan(drop=(PULL,), fetch=True, new_head=MAIN),
            id="everything at once",
        ),
    ],
)
def test_plan_update(mirror: LocalState, upstream: RemoteRefs, scope: RefScope, expected: UpdatePlan) -> None:
    plan = plan_update(mirror, upstream, scope)
    assert plan == expected
    assert plan.changes == bool(expected.drop or expected.fetch or expected.new_head)
