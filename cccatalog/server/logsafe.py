"""What `serve` may write about a request: its target with query values and credentials masked.

Clients put things in URLs that must not reach a log file: a token sent as `?token=...` (refused, but
seen), `Authorization`-like text pasted into a path, a user:password in an absolute-form target. Only
the values of the parameters the routes read are kept; every other value is written as `***`, and a
name is kept only when it looks like a parameter name. Control characters (C0, DEL, C1 and the
Unicode line separators) are replaced so a request cannot forge log lines or drive a terminal.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

from cccatalog.redact import MASK, Redactor

# the query parameters some route reads: their values are useful in a log and are not secret
ALLOWED_PARAMETERS = frozenset(
    {
        "service",
        "pointer",
        "ref",
        "visibility",
        "only_with_image",
        "include_inactive",
        "allow_runtime_sync",
        "wait",
    }
)
MAX_LOGGED = 512

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|token)(?:\s|%20|\+|=|:|%3a)+[^\s/&?;]+")
_PATTERNS = Redactor()  # no values: only the patterns (Authorization headers, URL userinfo, token shapes)
# C0, DEL, C1 (NEL ends a line for many readers, CSI drives a terminal), the Unicode separators
_CONTROL = str.maketrans(dict.fromkeys((*range(32), 127, *range(0x80, 0xA0), 0x2028, 0x2029), "?"))


def loggable_target(target: str) -> str:
    """`target` (or a whole request line) as it may appear in a log line."""
    path, sep, query = target[:MAX_LOGGED].partition("?")
    if sep:
        query = "&".join(_parameter(part) for part in query.split("&"))
    return _PATTERNS(_redact_path(path) + sep + query).translate(_CONTROL)


def _parameter(part: str) -> str:
    name, eq, _ = part.partition("=")
    if unquote_plus(name) in ALLOWED_PARAMETERS:
        return part
    if eq and _NAME.fullmatch(name):
        return f"{name}={MASK}"
    return MASK


def _redact_path(path: str) -> str:
    masked = _CREDENTIAL.sub(r"\1 " + MASK, path)
    if "%" in masked:
        decoded = unquote(masked)
        redacted = _PATTERNS(_CREDENTIAL.sub(r"\1 " + MASK, decoded))
        if redacted != decoded:
            return redacted
    return masked


def access_fields(
    client: str, method: str | None, target: str, *, route: str, status: int, sent: int, seconds: float | None
) -> dict[str, object]:
    """The fields of an access log line, for `--log-format json`; `target` must be loggable already."""
    fields: dict[str, object] = {"client": client, "method": method, "path": target, "route": route}
    fields.update(status=status or None, bytes=sent)
    if seconds is not None:
        fields["duration_ms"] = round(seconds * 1000, 3)
    return fields
