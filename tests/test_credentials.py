"""Credentials come from the environment variables an auth block names, or from a Docker config."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cccatalog.config import AuthConfig
from cccatalog.credentials import BasicCredentials, docker_config_lookup, resolve, url_host
from cccatalog.errors import CredentialError


def test_token_becomes_github_basic_auth() -> None:
    creds = resolve(AuthConfig(token_env="T"), key="git.auth", host="github.com", environ={"T": "tok"})
    assert creds == BasicCredentials("x-access-token", "tok")
    assert creds.authorization == "Basic " + base64.b64encode(b"x-access-token:tok").decode()


def test_user_and_password() -> None:
    creds = resolve(
        AuthConfig(user_env="U", pass_env="P"), key="git.auth", host="h", environ={"U": "u", "P": "p"}
    )
    assert creds == BasicCredentials("u", "p")


def test_anonymous_block_gives_no_credentials() -> None:
    assert resolve(AuthConfig(), key="git.auth", host="h", environ={}) is None


def test_unset_variable_is_named_with_its_key_path() -> None:
    with pytest.raises(
        CredentialError, match=r"sources\[0\].auth.pass_env: environment variable P is not set"
    ):
        resolve(AuthConfig(user_env="U", pass_env="P"), key="sources[0].auth", host="h", environ={"U": "u"})


def test_password_is_hidden_from_repr() -> None:
    assert "hunter2" not in repr(BasicCredentials("u", "hunter2"))


@pytest.mark.parametrize(
    ("key", "entry"),
    [
        ("ghcr.io", {"auth": base64.b64encode(b"bot:pw").decode()}),
        ("https://ghcr.io", {"username": "bot", "password": "pw"}),
        (
            "https://ghcr.io/v1/",
            {"auth": base64.b64encode(b"bot:pw").decode(), "username": "x", "password": "y"},
        ),
    ],
)
def test_docker_config_entry_forms(key: str, entry: dict[str, str], tmp_path: Path) -> None:
    text = json.dumps({"auths": {"other.io": {"auth": "eDp5"}, key: entry}})
    assert docker_config_lookup(text, "ghcr.io", origin="o") == BasicCredentials("bot", "pw")
    (tmp_path / "config.json").write_text(text)
    assert docker_config_lookup(str(tmp_path / "config.json"), "GHCR.io", origin="o") == BasicCredentials(
        "bot", "pw"
    )


def test_docker_config_without_the_host_is_anonymous() -> None:
    assert docker_config_lookup('{"auths": {"other.io": {}}}', "ghcr.io", origin="o") is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("/no/such/file.json", "cannot read Docker config"),
        ("{not json", "not valid JSON"),
        ('{"auths": []}', "no 'auths' mapping"),
        ('{"auths": {"ghcr.io": {"auth": "bm9jb2xvbg=="}}}', "not base64 of user:password"),
        ('{"auths": {"ghcr.io": {"username": "u"}}}', "neither 'auth' nor username and password"),
    ],
)
def test_broken_docker_configs_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        docker_config_lookup(raw, "ghcr.io", origin="git.auth.dockerconfigjson_env (X)")


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://github.com/org/x", "github.com"),
        ("https://tok@GitHub.com:8443/x", "github.com:8443"),
        ("ghcr.io/org/x", "ghcr.io"),
        ("localhost:5000/x", "localhost:5000"),
    ],
)
def test_url_host(url: str, host: str) -> None:
    assert url_host(url) == host
