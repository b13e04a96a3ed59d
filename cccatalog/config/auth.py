"""Credentials blocks: the names of the environment variables that hold a secret, never the secret
(at most one form per block). `git.auth` and `sources[].auth` are an AuthConfig; a destination's
`auth` is the predecessor's own spelling of the same forms."""

from __future__ import annotations

from dataclasses import dataclass

from cccatalog.config.settings import setting


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Names of environment variables holding credentials; at most one form is set."""

    token_env: str | None = setting(
        doc="a token: sent to git upstreams as GitHub's Basic `x-access-token:<token>`, to registries "
        "and other catalogs as a Bearer token"
    )
    user_env: str | None = setting(doc="a user name, with `pass_env`: Basic credentials")
    pass_env: str | None = setting(doc="the password of `user_env`")
    dockerconfigjson_env: str | None = setting(
        doc="a Docker `config.json` (a path, or the JSON itself: a mounted pull secret); the host is "
        "looked up in its `auths`"
    )

    @property
    def is_anonymous(self) -> bool:
        return not (self.token_env or self.user_env or self.dockerconfigjson_env)


@dataclass(frozen=True, slots=True)
class DestinationAuth:
    """The predecessor's destination auth block: names of environment variables, at most one form."""

    token_env: str | None = setting(
        doc="an access token: `jfrog` presents it as Basic `_:<token>` (the predecessor's, Artifactory's "
        "convention), `registry` as a Bearer token; only ever to this destination's host"
    )
    user_env: str | None = setting(doc="a user name, with `pass_env`: Basic credentials")
    pass_env: str | None = setting(doc="the password (or an access token used as one) of `user_env`")
    docker_config_env: str | None = setting(
        doc="a Docker `config.json` (a path, or the JSON itself); the destination's host is looked up in it"
    )

    def as_auth(self) -> AuthConfig:
        """The same credentials as every other auth block reads them."""
        return AuthConfig(self.token_env, self.user_env, self.pass_env, self.docker_config_env)
