"""Credentials named by an `auth` block: read from the environment (or a Docker config), never from YAML.

The values live only in these objects (whose repr hides them) and in the redactor that masks them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cccatalog.config import AuthConfig
from cccatalog.errors import CredentialError


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)

    @property
    def authorization(self) -> str:
        """The HTTP Authorization header value (GitHub wants Basic with `x-access-token` for tokens)."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every form of these credentials that must never be shown."""
        return (self.password, self.authorization.split(" ", 1)[1])


def url_host(url: str) -> str | None:
    """Host (with port) of an http(s)/ssh URL, or of a registry reference like `ghcr.io/org/x`."""
    if "://" not in url:
        url = "//" + url
    netloc = urlsplit(url).netloc
    return netloc.rsplit("@", 1)[-1].lower() or None


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """A token as an auth block gives it (`token_env`): how it is presented depends on the service."""

    token: str = field(repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.token,)


Credentials = TokenCredentials | BasicCredentials


def credentials_from(
    auth: AuthConfig, *, key: str, host: str | None, environ: Mapping[str, str]
) -> Credentials | None:
    """What an auth block delivers for `host`: a token, Basic credentials, or None (anonymous, or a
    Docker config without an entry for the host). The one reading of the three auth forms.

    `key` is the block's key path (`git.auth`, `sources[0].auth`) for error messages.
    """
    if auth.token_env:
        return TokenCredentials(env_value(environ, auth.token_env, f"{key}.token_env"))
    if auth.user_env and auth.pass_env:
        return BasicCredentials(
            env_value(environ, auth.user_env, f"{key}.user_env"),
            env_value(environ, auth.pass_env, f"{key}.pass_env"),
        )
    if auth.dockerconfigjson_env and host:
        raw = env_value(environ, auth.dockerconfigjson_env, f"{key}.dockerconfigjson_env")
        return docker_config_lookup(
            raw, host, origin=f"{key}.dockerconfigjson_env ({auth.dockerconfigjson_env})"
        )
    return None


def resolve(
    auth: AuthConfig, *, key: str, host: str | None, environ: Mapping[str, str]
) -> BasicCredentials | None:
    """Credentials for a git upstream: GitHub wants a token as Basic `x-access-token:<token>`."""
    creds = credentials_from(auth, key=key, host=host, environ=environ)
    if isinstance(creds, TokenCredentials):
        return BasicCredentials("x-access-token", creds.token)
    return creds


def authorization(creds: Credentials) -> str:
    """The Authorization header for an HTTP API: a token as Bearer, Basic as Basic."""
    return f"Bearer {creds.token}" if isinstance(creds, TokenCredentials) else creds.authorization


def env_value(environ: Mapping[str, str], name: str, key: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise CredentialError(
            f"{key}: environment variable {name} is not set or empty; export it or remove the key"
        )
    return value


def docker_config_lookup(raw: str, host: str, *, origin: str) -> BasicCredentials | None:
    """Find `host` in a Docker config.json given as its path or its JSON text (a mounted pull secret)."""
    text = raw
    if not raw.lstrip().startswith("{"):
        try:
            text = Path(raw).read_text(encoding="utf-8")
        except OSError as exc:
            raise CredentialError(f"{origin}: cannot read Docker config {raw}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialError(f"{origin}: Docker config is not valid JSON (line {exc.lineno})") from None
    except RecursionError:
        raise CredentialError(f"{origin}: Docker config is JSON nested too deeply") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise CredentialError(f"{origin}: Docker config has no 'auths' mapping")
    for registry, entry in auths.items():
        if url_host(str(registry)) == host.lower() and isinstance(entry, dict):
            return _entry_credentials(entry, host, origin)
    return None


def _entry_credentials(entry: Mapping[str, object], host: str, origin: str) -> BasicCredentials:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            sep = ""
        if not sep:
            raise CredentialError(f"{origin}: the 'auth' entry for {host} is not base64 of user:password")
        return BasicCredentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name and secret:
        return BasicCredentials(name, secret)
    raise CredentialError(f"{origin}: the entry for {host} has neither 'auth' nor username and password")


def user_registry_files(environ: Mapping[str, str]) -> list[Path]:
    """Where a user's registry logins live, in the order skopeo/podman and docker look."""
    home = Path(environ.get("HOME", "~")).expanduser()
    files = []
    if auth_file := environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(auth_file))
    if runtime := environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers" / "auth.json")
    files.append(
        Path(environ["DOCKER_CONFIG"]) / "config.json"
        if environ.get("DOCKER_CONFIG")
        else home / ".docker" / "config.json"
    )
    return files


def user_registry_credentials(host: str, environ: Mapping[str, str]) -> BasicCredentials | None:
    """A registry login from the user's Docker/Podman auth files (`docker login`, `skopeo login`).

    Credential helpers (`credsStore`) are not run: only logins stored in the files are used.
    """
    hosts = [host, "index.docker.io", "docker.io"] if host == "registry-1.docker.io" else [host]
    for path in user_registry_files(environ):
        if not path.is_file():
            continue
        for candidate in hosts:
            creds = docker_config_lookup(str(path), candidate, origin=str(path))
            if creds is not None:
                return creds
    return None
