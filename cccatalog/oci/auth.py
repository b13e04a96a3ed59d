"""Registry authentication: challenges, the token flow, and a token cache per (host, scope).

The predecessor minted a new token before every call (a 401 and a token request each time: 15
requests where 6 do). Here a token is reused until shortly before it expires.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cccatalog.credentials import BasicCredentials

_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
DEFAULT_TOKEN_SECONDS = 60  # the distribution spec's default when a token server omits expires_in
_EXPIRY_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """What we may present to a registry: Basic credentials (also sent to its token server) or a
    static bearer token. Neither: anonymous, which may still go through the token flow."""

    basic: BasicCredentials | None = None
    bearer: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return (*(self.basic.secrets if self.basic else ()), *((self.bearer,) if self.bearer else ()))


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lowercase
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="https://x/token",service="x",scope="..."` -> Challenge; None if unparsable."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


class TokenCache:
    """Bearer tokens by (host, scope), dropped a few seconds before they expire. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, host: str, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get((host, scope))
            if entry is None:
                return None
            token, expires = entry
            if self._clock() >= expires:
                del self._tokens[(host, scope)]
                return None
            return token

    def put(self, host: str, scope: str, token: str, expires_in: float | None) -> None:
        lifetime = expires_in if expires_in and expires_in > 0 else DEFAULT_TOKEN_SECONDS
        with self._lock:
            self._tokens[(host, scope)] = (token, self._clock() + max(lifetime - _EXPIRY_MARGIN, 1.0))

    def drop(self, host: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((host, scope), None)
