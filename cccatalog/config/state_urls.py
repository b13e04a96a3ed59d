"""Database URLs as the state accepts them: PostgreSQL in its several spellings, SQLite files in
SQLAlchemy's form (how one is shown, its password masked, is `redact.mask_url_password`)."""

from __future__ import annotations


def postgres_url(url: str) -> str | None:
    """`url` in libpq's form when it names a PostgreSQL database (`postgres://`, SQLAlchemy's
    `postgresql+psycopg2://` and the like are the same database), else None."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or not (scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")):
        return None
    return f"postgresql://{rest}"


def sqlite_path(url: str) -> str | None:
    """The file of `sqlite:///<path>` (SQLAlchemy form: `sqlite:////abs`, `sqlite:///rel`), else None."""
    scheme, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    if not sep or not (scheme == "sqlite" or scheme.startswith("sqlite+")) or path in ("", ":memory:"):
        return None
    return path
