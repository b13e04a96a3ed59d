"""Newest-build resolution as pure functions: dates, ranking, which index entry counts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cccatalog.oci.resolve import (
    SOURCE_CONFIG,
    SOURCE_UNKNOWN,
    Build,
    _platform_child,
    parse_created,
    pick_newest,
)
from cccatalog.oci.tags import parse_tag


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25T12:00:00+02:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25T10:00:00.123456789Z", datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-25T10:00:00.5-01:30", datetime(2026, 11, 25, 11, 30, 0, 500000, tzinfo=UTC)),
        ("2026-11-25T10:00:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("1970-01-01T00:00:00Z", None),
        ("1979-12-31T23:59:59Z", None),
        ("", None),
        (None, None),
        (1700000000, None),
        ("yesterday", None),
    ],
)
def test_created_dates(value: object, expected: datetime | None) -> None:
    assert parse_created(value) == expected


def build(tag: str, when: datetime | None) -> Build:
    parsed = parse_tag(tag)
    assert parsed is not None
    return Build(parsed, None, when, SOURCE_CONFIG if when else SOURCE_UNKNOWN)


def test_newest_by_build_time_not_by_tag_or_hex_order() -> None:
    older = build("main-fffffff-fffffff", datetime(2026, 1, 1, tzinfo=UTC))
    newer = build("main-0000000-0000000", datetime(2026, 6, 1, tzinfo=UTC))
    assert pick_newest([older, newer]) is newer


def test_unknown_dates_rank_lowest_and_ties_break_on_tag() -> None:
    unknown = build("main-fffffff-fffffff", None)
    dated = build("main-1111111-1111111", datetime(2020, 1, 1, tzinfo=UTC))
    assert pick_newest([unknown, dated]) is dated
    same = datetime(2026, 1, 1, tzinfo=UTC)
    a, b = build("main-aaaaaaa-1111111", same), build("main-bbbbbbb-1111111", same)
    assert pick_newest([b, a]) is b
    assert pick_newest(
        [build("main-aaaaaaa-1111111", None), build("main-bbbbbbb-1111111", None)]
    ).tag.tag == ("main-bbbbbbb-1111111")


@pytest.mark.parametrize(
    ("manifests", "chosen"),
    [
        (
            [
                {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
            ],
            "sha256:amd",
        ),
        (
            [
                {
                    "digest": "sha256:att",
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                },
                {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            ],
            "sha256:arm",
        ),
        ([{"digest": "sha256:only", "platform": {"os": "unknown", "architecture": "unknown"}}], None),
        ([], None),
    ],
)
def test_index_is_followed_to_its_first_real_platform(
    manifests: list[dict[str, object]], chosen: str | None
) -> None:
    assert _platform_child({"manifests": manifests}) == chosen
