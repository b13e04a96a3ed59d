"""RFC 3339 as cccatalog reads it from registries, state files, manifests and the predecessor's
database, and writes it in JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cccatalog.timestamps import NaiveTime, parse_rfc3339, rfc3339

T = datetime(2026, 11, 25, 21, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T21:00:00Z", T),
        ("2026-11-25t21:00:00z", T),
        ("2026-11-25T22:30:00+01:30", T),
        ("2026-11-25T21:00:00.123456789Z", T.replace(microsecond=123456)),  # Go's nine digits
        ("  2026-11-25T21:00:00Z\n", T),
        ("2026-11-25T21:00:00", T),  # no zone: UTC, as the predecessor's naive columns mean it
        ("2026-11-25 21:00:00.000000", T),  # SQLAlchemy's text form on SQLite
    ],
)
def test_every_form_a_peer_writes_reads_as_the_same_utc_instant(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_a_time_without_a_zone_is_refused_where_one_is_required() -> None:
    with pytest.raises(NaiveTime):
        parse_rfc3339("2026-11-25T21:00:00", assume_utc=False)
    assert parse_rfc3339("2026-11-25T21:00:00Z", assume_utc=False) == T


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-25T25:00:00Z"])
def test_text_that_is_not_a_time_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"Invalid isoformat string|out of range|must be in"):
        parse_rfc3339(text)


def test_what_is_written_reads_back() -> None:
    local = T.astimezone(timezone(timedelta(hours=-5)))
    assert rfc3339(local) == "2026-11-25T21:00:00Z"
    assert parse_rfc3339(rfc3339(local) or "") == T
