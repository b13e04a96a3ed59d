"""The environment variables cccatalog reads: its own name first, then the predecessor's
(cc-catalog-svc) name, so a predecessor deployment keeps its environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CONFIG = ("CCCATALOG_CONFIG", "CC_CATALOG_CONFIG_FILE")
STATE_FILE = ("CCCATALOG_STATE_FILE",)
DB_URL = ("CC_CATALOG_DB_URL",)
HOST = ("CCCATALOG_HOST", "CC_CATALOG_HOST")
PORT = ("CCCATALOG_PORT", "CC_CATALOG_PORT")
ADMIN_TOKEN = ("CCCATALOG_ADMIN_TOKEN", "CC_CATALOG_ADMIN_TOKEN")
LOG_LEVEL = ("CCCATALOG_LOG_LEVEL", "CC_CATALOG_LOG_LEVEL")
DISABLE_SCHEDULER = ("CCCATALOG_DISABLE_SCHEDULER", "CC_CATALOG_DISABLE_SCHEDULER")


def first(environ: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The value of the first of `names` that is set and non-empty."""
    return next((value for name in names if (value := environ.get(name))), None)


def first_name(environ: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first of `names` that is set and non-empty (the one `first` takes its value from)."""
    return next((name for name in names if environ.get(name)), None)
