"""Redaction: known secrets in every encoding, and secret-shaped text nobody told us about."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from cccatalog.credentials import BasicCredentials
from cccatalog.redact import MASK, Redactor, strip_url_credentials

SECRET = "s3cr3t/value+with=chars"


@pytest.mark.parametrize(
    "form",
    [SECRET, quote(SECRET, safe=""), base64.b64encode(SECRET.encode()).decode().rstrip("=")],
    ids=["plain", "percent-encoded", "base64"],
)
def test_known_secret_is_masked_in_every_encoding(form: str) -> None:
    assert Redactor([SECRET])(f"before {form} after") == f"before {MASK} after"


def test_credentials_register_the_header_form_too() -> None:
    creds = BasicCredentials("x-access-token", "tok-123456")
    redactor = Redactor(creds.secrets)
    text = f"curl -H 'Authorization: {creds.authorization}' failed; raw {creds.authorization.split()[1]}"
    out = redactor(text)
    assert "tok-123456" not in out
    assert creds.authorization.split()[1] not in out


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("fatal: unable to access 'https://user:hunter22@github.com/x/': 403", "hunter22"),
        (
            "fatal: https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x",
            "ghp_abcdefghijklmnopqrstuvwxyz0123",
        ),
        ("> Authorization: Basic eC1hY2Nlc3MtdG9rZW46Zm9v", "eC1hY2Nlc3MtdG9rZW46Zm9v"),
        ("authorization: bearer abc.def.ghi", "abc.def.ghi"),
        ("-c http.extraHeader=Authorization: Basic Zm9vOmJhcg==", "Zm9vOmJhcg=="),
        (
            "token github_pat_11ABCDEFG0123456789_abcdefghijklmnop in log",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        ),
        ("ssh://deploy:pw-9999@host/x", "pw-9999"),
    ],
)
def test_unknown_secrets_are_masked_by_shape(text: str, leaked: str) -> None:
    assert leaked not in Redactor()(text)


def test_harmless_text_is_left_alone() -> None:
    text = "fatal: repository 'https://github.com/org/repo/' not found; ssh://git@github.com/org/repo"
    assert Redactor()(text) == text


def test_short_values_are_not_used_to_mask() -> None:
    assert Redactor(["ab", ""])("abc ab") == "abc ab"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://tok@github.com/x", f"https://{MASK}@github.com/x"),
        ("https://u:p@github.com/x", f"https://{MASK}@github.com/x"),
        ("ssh://git@github.com/x", "ssh://git@github.com/x"),
        ("git@github.com:org/x", "git@github.com:org/x"),
        ("file:///srv/x", "file:///srv/x"),
        ("git://tok-123456@host/x", f"git://{MASK}@host/x"),
        ("ssh://deploy:pw-9999@host/x", f"ssh://{MASK}@host/x"),
        ("user:pw-9999@host:org/x", f"{MASK}@host:org/x"),
    ],
)
def test_strip_url_credentials(url: str, shown: str) -> None:
    assert strip_url_credentials(url) == shown
