"""Logging setup: narration to stderr (Rich on a terminal, plain otherwise, or one JSON object per
line for a log pipeline), every record redacted.

The level comes from -v/-q; without them, from `CCCATALOG_LOG_LEVEL` or the predecessor's
`CC_CATALOG_LOG_LEVEL` (DEBUG, INFO, WARNING, ERROR, CRITICAL), which then also bounds what `serve`
prints (its access log is INFO); else warnings and errors only, plus `serve`'s access log.

`--log-format json` (or `CCCATALOG_LOG_FORMAT=json`): each record is one line
`{"time", "level", "logger", "message", ...fields}`, where the fields are what the caller passed as
`extra=` (the access log: client, method, path, route, status, bytes, duration_ms) and a traceback
is an `exc` field of the same line. Redaction runs on the message and on every string field.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from cccatalog import envvars
from cccatalog.logtext import json_line, printable
from cccatalog.redact import Redactor

LOGGER_NAME = "cccatalog"
LOG_FORMAT_VAR = envvars.LOG_FORMAT[0]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


# What every LogRecord carries; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RedactingFilter(logging.Filter):
    """Last line of defence: escape control characters in the values a text record is formatted with
    (the format string is ours; a value may come from a client), format the record, then mask anything
    secret-looking in it: the message,
    the traceback and, when the handler writes them (`fields`: JSON lines), every string field passed
    with `extra=`. A text handler never writes those fields, and redacting them costs each of serve's
    requests more than answering an advertisement from memory takes."""

    def __init__(self, redactor: Redactor, *, fields: bool = True) -> None:
        super().__init__()
        self.redactor = redactor
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and not self.fields:
            # a text line ends at a newline; a JSON line escapes its own (and C1: `json_line`)
            record.args = tuple(printable(a) if isinstance(a, str) else a for a in record.args)
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if self.fields:
            for key, value in extra_fields(record).items():
                setattr(record, key, self._redacted(value))
        return True

    def _redacted(self, value: object) -> object:
        if isinstance(value, str):
            return self.redactor(value)
        if isinstance(value, list | tuple):
            return [self._redacted(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._redacted(v) for k, v in value.items()}
        return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (RFC 3339, UTC, milliseconds, `Z`), level,
    logger, message, the record's `extra=` fields, and `exc` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exc:
            line["exc"] = exc
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json_line(json.dumps(line, default=str, ensure_ascii=False))


def emits_json() -> bool:
    """True when the cccatalog logger writes JSON lines: then everything said on stderr goes through it."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger(LOGGER_NAME).handlers)


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
    verbosity: int,
    redactor: Redactor,
    *,
    environ: Mapping[str, str] | None = None,
    log_format: LogFormat = LogFormat.TEXT,
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
    if log_format is LogFormat.JSON:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=verbosity > 1)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(redactor, fields=log_format is LogFormat.JSON))
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
