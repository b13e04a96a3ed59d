"""Database URLs as the state accepts them: PostgreSQL in its several spellings, SQLite files in
SQLAlchemy's form, and how a URL is shown and redacted (its password never appears)."""

from __future__ import annotations

from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit


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


def display_url(url: str) -> str:
    """A database URL as messages show it: the password masked wherever it was given."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))
    except ValueError:
        return "<the state database URL, which cannot be parsed>"


def url_password(url: str) -> str | None:
    """The password a database URL carries (in its userinfo or as `?password=`), for redaction."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        return next(iter(parse_qs(parts.query).get("password", [])), None)
    except ValueError:
        return None
