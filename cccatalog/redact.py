"""Redaction: the one function every error, log line and stored message passes through.

Two layers: the exact secret values cccatalog knows about (and their encodings), and patterns for
secrets it does not know (Authorization headers, credentials embedded in URLs, GitHub token shapes).
And the two ways a URL is shown: `strip_url_credentials` for upstream and registry URLs, whose
userinfo is usually a bare token, and `mask_url_password` for database URLs, whose user name is not
a secret but whose password (in the userinfo or as `?password=`) is.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

# A GitHub token, whoever it belongs to (also: pasted into the config where a variable NAME belongs).
GITHUB_TOKEN = re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}")

# scheme://userinfo@ in a URL anywhere in a text.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s'\"]+)@")


def _mask_userinfo(match: re.Match[str]) -> str:
    """Any userinfo is a credential (a bare token is common over HTTPS), except the harmless user name
    of an ssh URL (ssh://git@host)."""
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower() in ("ssh://", "git+ssh://", "ssh+git://") and ":" not in userinfo:
        return match.group(0)
    return f"{scheme}{MASK}@"


_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Basic abc", "authorization=Bearer abc", also inside `-c http.extraHeader=...`
    (re.compile(r"(?i)(authorization\s*[:=]\s*)(basic|bearer|token)?\s*[^\s'\"]+"), r"\1\2 " + MASK),
    (re.compile(r"(?i)(extraheader\s*=\s*)[^\n]*"), r"\1" + MASK),
    (re.compile(rf"\b(?:{GITHUB_TOKEN.pattern})\b"), MASK),
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
        text = _URL_USERINFO.sub(_mask_userinfo, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def strip_url_credentials(url: str) -> str:
    """A URL safe to show, store and put in repo config: any userinfo replaced by the mask (an ssh URL
    keeps its user name: `ssh://git@host`, and so does the scp form `git@host:path`)."""
    if "://" not in url and "@" in url:
        userinfo, _, rest = url.rpartition("@")
        return f"{MASK}@{rest}" if ":" in userinfo else url
    return _URL_USERINFO.sub(_mask_userinfo, url)


def mask_url_password(url: str) -> str:
    """A URL whose user name is no secret (a database's) as messages show it: the password masked
    wherever it was given, in the userinfo or as `?password=`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
        query = [(k, MASK if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))
    except ValueError:
        return "<the state database URL, which cannot be parsed>"


def url_password(url: str) -> str | None:
    """The password a URL carries (in its userinfo or as `?password=`), to register with a Redactor."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        return next(iter(parse_qs(parts.query).get("password", [])), None)
    except ValueError:
        return None
