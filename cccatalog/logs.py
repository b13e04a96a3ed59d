"""Logging setup: narration to stderr (Rich on a terminal, plain otherwise), every record redacted."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

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


def setup_logging(verbosity: int, redactor: Redactor) -> logging.Logger:
    """verbosity: -1 quiet (errors only), 0 warnings, 1 info, 2+ debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
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
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def announce_server_logs(verbosity: int) -> None:
    """A server says what it serves and logs each request (at info), unless told to be quiet."""
    if verbosity >= 0:
        for name in ("cccatalog.access", "cccatalog.serve"):
            logging.getLogger(name).setLevel(logging.INFO)
