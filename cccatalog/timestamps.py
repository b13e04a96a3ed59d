"""Timestamps as cccatalog writes them in JSON (RFC 3339, UTC, whole seconds, with `Z`) and as it
reads them from anywhere: registries, state files, manifests, the predecessor's database."""

from __future__ import annotations

from datetime import UTC, datetime


class NaiveTime(ValueError):
    """A time without a zone where one is required."""


def rfc3339(value: datetime | None) -> str | None:
    """`2026-11-25T21:00:00Z` for an aware datetime; None stays None."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_rfc3339(text: str, *, assume_utc: bool = True) -> datetime:
    """An aware UTC datetime from RFC 3339 text: `Z` or an offset, a lowercase `t` or `z`, fractions
    of up to nine digits (Go writes nine; six are kept). A time without a zone is UTC when
    `assume_utc` (what the predecessor's naive-UTC columns hold), else NaiveTime. ValueError (or
    OverflowError, for a time that falls off the calendar in UTC) for anything else."""
    parsed = datetime.fromisoformat(text.strip().upper())
    if parsed.tzinfo is None:
        if not assume_utc:
            raise NaiveTime(f"{text!r} has no time zone")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
