"""The environment variables cccatalog reads: its own name first, then the predecessor's
(cc-catalog-svc) name, so a predecessor deployment keeps its environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CONFIG = ("CCCATALOG_CONFIG", "CC_CATALOG_CONFIG_FILE")
STATE_FILE = ("CCCATALOG_STATE_FILE",)
STATE_URL = ("CCCATALOG_STATE_URL",)
DB_URL = ("CC_CATALOG_DB_URL",)
HOST = ("CCCATALOG_HOST", "CC_CATALOG_HOST")
PORT = ("CCCATALOG_PORT", "CC_CATALOG_PORT")
ADMIN_TOKEN = ("CCCATALOG_ADMIN_TOKEN", "CC_CATALOG_ADMIN_TOKEN")
LOG_LEVEL = ("CCCATALOG_LOG_LEVEL", "CC_CATALOG_LOG_LEVEL")
LOG_FORMAT = ("CCCATALOG_LOG_FORMAT",)
DISABLE_SCHEDULER = ("CCCATALOG_DISABLE_SCHEDULER", "CC_CATALOG_DISABLE_SCHEDULER")
BAKE_TOKEN = ("CCCATALOG_BAKE_TOKEN",)

# What each one is for: docs/configuration.md's table of variables is generated from this.
DOCS: dict[tuple[str, ...], str] = {
    CONFIG: "the config file (`--config` wins)",
    STATE_URL: "the state database, `postgresql://user:password@host:5432/db` (wins over "
    "`CCCATALOG_STATE_FILE`, `CC_CATALOG_DB_URL` and the file's `state.*`); a `sqlite:///<path>` "
    "names a state file",
    STATE_FILE: "the SQLite state file (wins over `state.path`)",
    DB_URL: "the predecessor's database URL: a `sqlite:///<path>` names the state file, a "
    "`postgresql://…` the database replicas share",
    ("PGPASSWORD",): "libpq's: the state database's password when `state.url` names none",
    HOST: "`serve`'s listen address (`--host` wins; `serve.host` is the default)",
    PORT: "`serve`'s listen port (`--port` wins; `serve.port` is the default)",
    ADMIN_TOKEN: "the admin API's bearer token; unset, the admin endpoints answer 503",
    LOG_LEVEL: "the log level without `-v`/`-q`: DEBUG, INFO, WARNING, ERROR or CRITICAL",
    LOG_FORMAT: "`text` or `json` (`--log-format` wins)",
    DISABLE_SCHEDULER: "`1`, `true`, `yes` or `on`: `serve` runs no scheduler (`0`, `false`, `no`, `off`: "
    "it runs; anything else is refused)",
    BAKE_TOKEN: "set by `bake --token-file` (never read from yours) when `git.auth` names no "
    "variable: the file's token, for git's environment only",
}


def first(environ: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The value of the first of `names` that is set and non-empty."""
    return next((value for name in names if (value := environ.get(name))), None)


def first_name(environ: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first of `names` that is set and non-empty (the one `first` takes its value from)."""
    return next((name for name in names if environ.get(name)), None)


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def flag(environ: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first of `names` set to a true word (1/true/yes/on), or None when all are unset or false.
    Any other value is refused: a typo must not silently read as false."""
    from cccatalog.errors import UsageError

    found = None
    for name in names:
        value = environ.get(name, "").strip().lower()
        if value not in _TRUE_WORDS | _FALSE_WORDS:
            raise UsageError(
                f"{name}: expected 1, true, yes or on (or 0, false, no, off), got {environ[name]!r}"
            )
        if found is None and value in _TRUE_WORDS:
            found = name
    return found
