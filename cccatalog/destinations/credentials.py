"""Whose credentials go where when a build is copied: a destination's only to its own host, a
collection's source credentials only to the host of its `image_registry`. Every secret handed out is
registered with the redactor before it is used."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cccatalog.config import Config, Destination
from cccatalog.credentials import BasicCredentials, TokenCredentials, credentials_from, url_host
from cccatalog.oci.auth import RegistryAuth
from cccatalog.redact import Redactor

AuthFor = Callable[[str], RegistryAuth | None]


def destination_auth(destination: Destination, environ: Mapping[str, str], redactor: Redactor) -> AuthFor:
    def auth_for(host: str) -> RegistryAuth | None:
        if host != destination.host:
            return None  # its credentials belong to its own host alone
        creds = credentials_from(
            destination.auth.as_auth(),
            key=f"destinations[{destination.name}].auth",
            host=host,
            environ=environ,
        )
        if isinstance(creds, TokenCredentials) and destination.type == "jfrog":
            # Artifactory takes an access token as the password of `_` (the predecessor's way).
            creds = BasicCredentials("_", creds.token)
        auth = RegistryAuth.of(creds)
        if auth is not None:
            redactor.add(*auth.secrets)
        return auth

    return auth_for


def source_auth(config: Config, slug: str, environ: Mapping[str, str], redactor: Redactor) -> AuthFor:
    cc = config.collection(slug)
    source = config.source(cc.source) if cc else None
    own_host = url_host(cc.image_registry) if cc and cc.image_registry else None

    def auth_for(asked: str) -> RegistryAuth | None:
        if source is None or source.type != "oci" or asked != own_host:
            return None
        creds = credentials_from(source.auth, key=f"sources[{source.name}].auth", host=asked, environ=environ)
        auth = RegistryAuth.of(creds)
        if auth is not None:
            redactor.add(*auth.secrets)
        return auth

    return auth_for
