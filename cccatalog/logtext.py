"""What a value may carry into a log record: one line, every control character written as its escape.

A record is formatted from our format string and values, and a value may come from outside: a
request line, a path, git's stderr echoing a client's bytes. Such a value must not start a forged
record (a newline), drive a terminal (ESC, CSI) or end a line for readers that split on NEL or the
Unicode separators. The logging filter escapes every string value this way; a value of our own that
is meant to span lines (a traceback we formatted and redacted) is passed as `Verbatim`.
"""

from __future__ import annotations

# C0 controls but TAB, DEL, the C1 controls (NEL is U+0085, CSI U+009B), the line and paragraph separators
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127, *range(0x80, 0xA0)) if c != 9}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
# The same characters inside a JSON string: json.dumps(ensure_ascii=False) escapes C0 itself
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)}


class Verbatim(str):
    """A value of ours logged as it is, lines and all (still redacted)."""

    __slots__ = ()


def printable(text: str) -> str:
    """`text` as part of one log line: every control character written as its escape."""
    return text if isinstance(text, Verbatim) else text.translate(_ESCAPES)


def json_line(text: str) -> str:
    """A JSON document (one line) with the C1 controls and separators escaped as `\\uXXXX`."""
    return text.translate(_JSON_ESCAPES)
