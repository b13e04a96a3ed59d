"""Registry authentication: challenges, the token flow (as an `httpx.Auth`), and a token cache per
(host, scope).

The predecessor minted a new token before every call (a 401 and a token request each time: 15
requests where 6 do). Here a token is reused until shortly before it expires.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

import httpx

from cccatalog.config import Source
from cccatalog.credentials import BasicCredentials, Credentials, TokenCredentials, credentials_from
from cccatalog.redact import Redactor

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

    @classmethod
    def of(cls, creds: Credentials | None) -> RegistryAuth | None:
        """A token (JFrog access token, GHCR PAT) is a static bearer token; Basic credentials are
        presented to the registry or its token server, as its challenge asks."""
        if isinstance(creds, TokenCredentials):
            return cls(bearer=creds.token)
        return cls(basic=creds) if creds is not None else None


AuthFor = Callable[[str], RegistryAuth | None]


def source_auth(source: Source, environ: Mapping[str, str], redactor: Redactor) -> AuthFor:
    """The credentials a source's auth block gives each registry host; every secret handed out is
    registered with `redactor` first."""

    def auth_for(host: str) -> RegistryAuth | None:
        key = f"sources[{source.name}].auth"
        auth = RegistryAuth.of(credentials_from(source.auth, key=key, host=host, environ=environ))
        if auth is not None:
            redactor.add(*auth.secrets)
        return auth

    return auth_for


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


class RegistryTokenAuth(httpx.Auth):
    """httpx's auth hook for registries: what to present, and how to meet a 401's challenge.

    Per request it presents, in order: a static bearer token; a token cached for (host, scope);
    Basic credentials to a host known to want them. On a 401 it answers the challenge once: a Basic
    challenge with the credentials, a Bearer challenge by asking its realm for a token (Basic
    credentials go to the token server, which is the only place they are needed) and caching it.
    A second 401 is left to the caller, which says it as a credentials problem.
    """

    # Only the token server's answer is read (in `_token_from`): reading every response here would
    # load each blob whole into memory before a streamed GET could hand out its first chunk.
    requires_response_body = False

    def __init__(self, auth_for: Callable[[str], RegistryAuth | None], tokens: TokenCache) -> None:
        self.auth_for = auth_for
        self.tokens = tokens
        self._basic_hosts: set[str] = set()
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        host = request.url.netloc.decode("ascii")
        scope = scope_of(request.url.path, method=request.method, query=request.url.query.decode())
        auth = self.auth_for(host)
        if authorization := self._present(host, scope, auth):
            request.headers["Authorization"] = authorization
        response = yield request
        if response.status_code != 401 or (auth is not None and auth.bearer):
            return  # a refused static token: minting cannot help
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return
        if challenge.scheme == "basic":
            with self._lock:
                self._basic_hosts.add(host)
            # Retried once, when this request went without them: deciding by "first 401 from this
            # host" instead refused every request that was already on its way when the first one
            # learnt the host wants Basic (concurrent image copies on a fresh client).
            sent = request.headers.get("Authorization")
            if auth is not None and auth.basic is not None and sent != auth.basic.authorization:
                request.headers["Authorization"] = auth.basic.authorization
                yield request
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return
        self.tokens.drop(host, scope)  # the cached one, if any, was just refused
        token_response = yield _token_request(challenge, scope, auth)
        token, expires_in = _token_from(token_response)
        self.tokens.put(host, scope, token, expires_in)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _present(self, host: str, scope: str, auth: RegistryAuth | None) -> str | None:
        if auth is not None and auth.bearer:
            return f"Bearer {auth.bearer}"
        if token := self.tokens.get(host, scope):
            return f"Bearer {token}"
        with self._lock:
            basic_host = host in self._basic_hosts
        if auth is not None and auth.basic is not None and basic_host:
            return auth.basic.authorization
        return None


class TokenRefused(Exception):
    """The token server refused or gave no token: `status` is its answer (401/403: the credentials)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


def scope_of(path: str, *, method: str = "GET", query: str = "") -> str:
    """The scope a registry API call needs: `/v2/<name>/(tags|manifests|blobs)/...` read is
    `repository:<name>:pull`; a write (POST, PUT, PATCH, DELETE) `repository:<name>:pull,push`; a
    cross-repository mount (`?mount=&from=<other>`) also `repository:<other>:pull`, space-separated."""
    name = path.removeprefix("/v2/")
    for marker in ("/tags/", "/manifests/", "/blobs/"):
        if marker in name:
            name = name[: name.rindex(marker)]
            break
    if method in ("GET", "HEAD"):
        return f"repository:{name}:pull"
    scope = f"repository:{name}:pull,push"
    mounted_from = parse_qs(query).get("from", [""])[0]
    if mounted_from and mounted_from != name:
        scope += f" repository:{mounted_from}:pull"
    return scope


def _token_request(challenge: Challenge, scope: str, auth: RegistryAuth | None) -> httpx.Request:
    params: dict[str, str | list[str]] = {"scope": scope.split(" ")}
    if service := challenge.params.get("service"):
        params["service"] = service
    headers = {"Authorization": auth.basic.authorization} if auth is not None and auth.basic else {}
    return httpx.Request(
        "GET", challenge.params["realm"], params=params, headers=headers, extensions={KIND: "token"}
    )


def _token_from(response: httpx.Response) -> tuple[str, float | None]:
    response.read()  # the one response body the flow needs (see `requires_response_body`)
    if response.status_code in (401, 403):
        raise TokenRefused("refused by the token server", response.status_code)
    if response.status_code >= 400:
        raise TokenRefused(f"the token server answered HTTP {response.status_code}", response.status_code)
    try:
        data = response.json()
    except (ValueError, RecursionError):
        data = None
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise TokenRefused("the token server answered without a token", response.status_code)
    expires = data.get("expires_in") if isinstance(data, dict) else None
    return token, float(expires) if isinstance(expires, int | float) else None


# The request extension naming what a request is for (`tags`, `manifest`, `blob`, `token`): counted
# per request sent, redirect hops included.
KIND = "cccatalog.kind"
