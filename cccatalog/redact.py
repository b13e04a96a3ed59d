"""Redaction: the one function every error, log line and stored message passes through.

Two layers: the exact secret values cccatalog knows about (and their encodings), and patterns for
secrets it does not know (Authorization headers, credentials embedded in URLs, GitHub token shapes).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Basic abc", "authorization=Bearer abc", also inside `-c http.extraHeader=...`
    (re.compile(r"(?i)(authorization\s*[:=]\s*)(basic|bearer|token)?\s*[^\s'\"]+"), r"\1\2 " + MASK),
    (re.compile(r"(?i)(extraheader\s*=\s*)[^\n]*"), r"\1" + MASK),
    # credentials embedded in a URL: any userinfo over HTTP(S) (a bare token is common there),
    # and user:password over any scheme (ssh://git@host keeps its harmless user name)
    (re.compile(r"(?i)\b(https?://)[^/@\s'\"]+@"), r"\1" + MASK + "@"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@\s:'\"]+:)[^/@\s'\"]+@"), r"\1" + MASK + "@"),
    # GitHub token shapes, whoever they belong to
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b"), MASK),
)

# Values shorter than this are not redacted by value: masking every "x" or "1" would destroy messages.
_MIN_SECRET_LEN = 4


def encodings_of(secret: str) -> set[str]:
    """The forms a secret shows up in: itself, percent-encoded, and base64 (bare and as `x:secret`)."""
    forms = {secret, quote(secret, safe="")}
    forms.add(base64.b64encode(secret.encode()).decode().rstrip("="))
    return {f for f in forms if len(f) >= _MIN_SECRET_LEN}


class Redactor:
    """Masks known secret values and secret-looking patterns. Thread-safe; secrets can be added later."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        with self._lock:
            values = set(self._values)
            for secret in secrets:
                if secret and len(secret) >= _MIN_SECRET_LEN:
                    values |= encodings_of(secret)
            # longest first, so a secret that contains another is masked whole
            self._values = tuple(sorted(values, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def strip_url_credentials(url: str) -> str:
    """A URL safe to show, store and put in repo config: any userinfo replaced by the mask."""
    for pattern, replacement in _PATTERNS[2:4]:
        url = pattern.sub(replacement, url)
    return url
