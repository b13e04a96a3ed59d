"""Canonical tags and semver, table-driven: what counts as a build of which ref, and which is stable."""

from __future__ import annotations

import pytest

from cccatalog.oci.tags import CanonicalTag, group_by_ref, is_prerelease, parse_tag, stable_ref


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("main-10792f4-6e4bc81", CanonicalTag("main-10792f4-6e4bc81", "main", "10792f4", "6e4bc81")),
        ("pr-42-9988aab-e4f5a6b", CanonicalTag("pr-42-9988aab-e4f5a6b", "pr-42", "9988aab", "e4f5a6b")),
        (
            "fix-login-abc1234-def5678",
            CanonicalTag("fix-login-abc1234-def5678", "fix-login", "abc1234", "def5678"),
        ),
        (
            "fix-abc1234-deadbee-1234567",
            CanonicalTag("fix-abc1234-deadbee-1234567", "fix-abc1234", "deadbee", "1234567"),
        ),
        (
            "v1.2.0-rc1-abcdef0-1234567",
            CanonicalTag("v1.2.0-rc1-abcdef0-1234567", "v1.2.0-rc1", "abcdef0", "1234567"),
        ),
        (
            "main-" + "a" * 40 + "-" + "b" * 40,
            CanonicalTag("main-" + "a" * 40 + "-" + "b" * 40, "main", "a" * 40, "b" * 40),
        ),
    ],
)
def test_canonical_tags_parse_from_the_right(tag: str, expected: CanonicalTag) -> None:
    assert parse_tag(tag) == expected


@pytest.mark.parametrize(
    "tag",
    [
        "latest",
        "main",
        "2026-11-25",
        "main-10792F4-6e4bc81",
        "main-10792f-6e4bc81",
        "-10792f4-6e4bc81",
        "main-10792f4",
        "sha256-" + "a" * 64 + ".sig",
        "sha256-" + "a" * 64,
        "a" * 64,
        "main-10792f4-6e4bc81-",
    ],
)
def test_tags_that_are_not_builds_are_ignored(tag: str) -> None:
    assert parse_tag(tag) is None


def test_group_by_ref_skips_nulls_and_non_builds() -> None:
    groups = group_by_ref(
        ["main-aaaaaaa-bbbbbbb", None, "latest", "main-ccccccc-ddddddd", "dev-1111111-2222222"]
    )
    assert list(groups) == ["dev", "main"]
    assert [c.tag for c in groups["main"]] == ["main-aaaaaaa-bbbbbbb", "main-ccccccc-ddddddd"]


@pytest.mark.parametrize(
    ("refs", "stable"),
    [
        (["v1.2.0-rc1", "v1.2.0"], "v1.2.0"),
        (["v1.2.0", "v1.2.0-rc1"], "v1.2.0"),
        (["v1.3.0-rc1", "v1.2.0"], "v1.2.0"),
        (["v1.10.0", "v1.9.0", "v1.2.0"], "v1.10.0"),
        (["1.2", "v1.2.1"], "v1.2.1"),
        (["main", "pr-42", "v2.0.0-beta.1"], None),
        (["main"], None),
    ],
)
def test_stable_is_the_highest_release(refs: list[str], stable: str | None) -> None:
    assert stable_ref(refs) == stable


@pytest.mark.parametrize(
    ("ref", "pre"), [("v1.2.0-rc1", True), ("v1.2.0", False), ("main", False), ("1.0.0-alpha.1", True)]
)
def test_prerelease(ref: str, pre: bool) -> None:
    assert is_prerelease(ref) is pre


def test_ref_type() -> None:
    assert parse_tag("v1.2.0-aaaaaaa-bbbbbbb") is not None
    assert parse_tag("v1.2.0-aaaaaaa-bbbbbbb").ref_type == "tag"  # type: ignore[union-attr]
    assert parse_tag("main-aaaaaaa-bbbbbbb").ref_type == "branch"  # type: ignore[union-attr]
