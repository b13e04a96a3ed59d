"""What an operator reads about a hostile client tells the truth: a log record stays one record
whatever bytes a request carries (text and JSON, from a real `serve` process), the admin token is
masked wherever a client pastes it, guesses spread over many addresses are bounded as a whole, and
JSON answers cannot be sniffed into HTML."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cccatalog.config import Config
from cccatalog.server.auth_limit import MAX_FAILURES_ALL, FailureLimiter
from tests.gitfixtures import GIT_ENV, Upstream
from tests.robustfixtures import pkt_line
from tests.securityfixtures import exchange, request
from tests.servefixtures import running_server, serve_process, synced_config
from tests.waiting import wait_until

pytestmark = pytest.mark.security

ADMIN_TOKEN = "adm1n-Token-pasted-0123456789"
CT = "Content-Type: application/x-git-upload-pack-request"
# Characters that end a line for some reader of a log (Python's splitlines, less, journald, a
# terminal) or drive a terminal
LINE_BREAKERS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
TERMINAL = ("\x1b", "\x9b")


@dataclass(frozen=True)
class Site:
    config: Config
    path: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("signals-site")
    with pytest.MonkeyPatch.context() as mp:
        (root / "home").mkdir()
        mp.setenv("HOME", str(root / "home"))
        for key, value in GIT_ENV.items():
            mp.setenv(key, value)
        up = Upstream(root / "upstreams" / "alpha")
        path = root / "config.yaml"
        path.write_text(
            "git:\n  enabled: true\n  data_dir: mirrors\nsources:\n  - name: t\n    type: static\n"
            f"    codecollections:\n      - slug: alpha\n        git_url: {up.url}\n"
        )
        yield Site(synced_config(path), path)


def upload_pack(body: bytes, *headers: str) -> bytes:
    return request(
        "POST", "/git/alpha.git/git-upload-pack", CT, *headers, f"Content-Length: {len(body)}", body=body
    )


HOSTILE = [
    # refused request lines with C1 controls: NEL (U+0085) ends a line, CSI (U+009B) is ESC [
    b"GET /healthz\x85FORGED-NEL 2026-01-01 00:00:00,000 ERROR fake HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /healthz\x9b2J\x1b[31mFORGED-CSI HTTP/1.1\r\nHost: t\r\n\r\n",
    "GET /healthz\u2028FORGED-LS HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
    # git echoes the client's bytes, newline included, in its error message
    upload_pack(
        pkt_line(b"command=bogus\nFORGED-GIT-V2 2026-01-01 ERROR fake\n") + b"0000", "Git-Protocol: version=2"
    ),
    upload_pack(pkt_line(b"want zzzz\nFORGED-GIT-V0\r\x1b[2J\n") + b"0000" + pkt_line(b"done\n")),
    # the admin token pasted into a path, percent-encoded, and into a query value kept in the log
    request("GET", f"/api/v1/{ADMIN_TOKEN}"),
    request("GET", f"/api/v1/catalog/codecollections?visibility={ADMIN_TOKEN}"),
    request("GET", "/api/v1/" + "".join(f"%{b:02X}" for b in ADMIN_TOKEN.encode())),
]


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_hostile_bytes_never_split_a_log_record_and_the_admin_token_is_masked(
    site: Site, log_format: str
) -> None:
    env = {"CCCATALOG_ADMIN_TOKEN": ADMIN_TOKEN}
    with serve_process(site.path, env=env, options=("--log-format", log_format)) as (proc, url):
        for data in HOSTILE:
            exchange(url, data)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    records = err.splitlines()  # Python's splitlines: every line break a log reader might honour
    assert records
    for record in records:
        if log_format == "json":
            json.loads(record)
        else:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", record), record
    forged = [r for r in records if "FORGED" in r]
    assert len(forged) == 5, forged  # each hostile request is one record, never two
    assert not [c for c in (*LINE_BREAKERS, *TERMINAL) if c in err.replace("\n", "")]
    assert "FORGED-GIT-V2" in err
    if log_format == "json":  # one record whose message holds the newline, as JSON escapes it
        assert any("bogus\nFORGED-GIT-V2" in json.loads(r)["message"] for r in records)
    else:
        assert "bogus\\x0aFORGED-GIT-V2" in err, "the newline is shown, escaped"
    assert ADMIN_TOKEN not in err
    assert ADMIN_TOKEN.replace("-", "%2D") not in err
    assert "/api/v1/***" in err


def guess(url: str, token: str, source: str) -> tuple[int, str | None]:
    answer = exchange(
        url, request("GET", "/api/v1/admin/jobs/none", f"Authorization: Bearer {token}"), source=source
    )
    assert answer is not None
    return answer.status, answer.headers.get("retry-after")


def test_wrong_admin_tokens_from_many_addresses_are_bounded_together(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)
    addresses = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(200)]
    rounds = int(os.environ.get("CCCATALOG_GUESS_ROUNDS", "3"))  # 10: the 2,000 guesses of the report
    with running_server(site.config) as server:
        started = time.monotonic()
        answers = [guess(server.url, f"guess-{r}-{a}", a) for r in range(rounds) for a in addresses]
        seconds = time.monotonic() - started
        right_token_now = guess(server.url, ADMIN_TOKEN, "127.0.9.9")
        # the same server with a one-second window: the lock-out ends by itself
        server.api.admin_failures = FailureLimiter(window=1.0)
        for i in range(MAX_FAILURES_ALL):
            guess(server.url, "guess", f"127.0.{10 + i // 250}.{i % 250 + 1}")
        locked = guess(server.url, ADMIN_TOKEN, "127.0.9.9")
        assert wait_until(lambda: guess(server.url, ADMIN_TOKEN, "127.0.9.9")[0] == 404, 15)
    compared = [s for s, _ in answers if s == 403]
    limited = [(s, r) for s, r in answers if s == 429]
    print(
        f"{len(answers)} guesses from {len(addresses)} addresses in {seconds:.2f}s: {len(compared)} compared"
    )
    assert len(compared) == MAX_FAILURES_ALL, "no more than the global bound is ever compared"
    assert len(limited) == len(answers) - MAX_FAILURES_ALL
    assert all(r is not None and 1 <= int(r) <= 60 for _, r in limited)
    assert right_token_now[0] == 429, "while the bound holds, nobody's token is compared"
    assert locked[0] == 429


def test_json_answers_carry_nosniff(site: Site) -> None:
    with running_server(site.config) as server:
        answers = [
            exchange(server.url, request("GET", target))
            for target in ("/healthz", "/api/v1/catalog/codecollections", "/api/v1/<script>", "/git/x/y")
        ]
        refused = exchange(server.url, b"GET /\x85 HTTP/1.1\r\nHost: t\r\n\r\n")
    for answer in [*answers, refused]:
        assert answer is not None
        assert answer.headers.get("content-type") == "application/json", answer.status_line
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.status_line
