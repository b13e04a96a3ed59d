"""Logging setup: narration to stderr (Rich on a terminal, plain otherwise), every record redacted.

The level comes from -v/-q; without them, from `CCCATALOG_LOG_LEVEL` or the predecessor's
`CC_CATALOG_LOG_LEVEL` (DEBUG, INFO, WARNING, ERROR, CRITICAL), which then also bounds what `serve`
prints (its access log is INFO); else warnings and errors only, plus `serve`'s access log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from rich.console import Console
from rich.logging import RichHandler

from cccatalog import envvars
from cccatalog.redact import Redactor

LOGGER_NAME = "cccatalog"


class RedactingFilter(logging.Filter):
    """Last line of defence: format the record, then mask anything secret-looking in it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level_from_env(environ: Mapping[str, str]) -> tuple[int | None, str | None]:
    """(the level the environment asks for or None, a problem to report or None)."""
    for name in envvars.LOG_LEVEL:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if value.upper() in _LEVELS:
            return logging.getLevelName(value.upper()), None
        return None, f"{name}={value!r} is not a log level ({', '.join(_LEVELS)}); using the default"
    return None, None


def setup_logging(
    verbosity: int, redactor: Redactor, *, environ: Mapping[str, str] | None = None
) -> logging.Logger:
    """verbosity: -1 quiet (errors only), 0 warnings (or the environment's level), 1 info, 2+ debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    from_env, problem = level_from_env(os.environ if environ is None else environ)
    if verbosity != 0:
        from_env = None
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=verbosity > 1)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    if from_env is not None:
        # The handler's level bounds loggers that set their own (serve's access log), too.
        level = from_env
        handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    if problem:
        logger.warning("%s", problem)
    return logger


def announce_server_logs(verbosity: int) -> None:
    """A server says what it serves and logs each request (at info), unless told to be quiet."""
    if verbosity >= 0:
        for name in ("cccatalog.access", "cccatalog.serve"):
            logging.getLogger(name).setLevel(logging.INFO)
