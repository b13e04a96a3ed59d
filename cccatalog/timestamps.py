"""Timestamps as cccatalog writes them in JSON: RFC 3339, UTC, whole seconds, with `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    """`2026-11-25T21:00:00Z` for an aware datetime; None stays None."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None
