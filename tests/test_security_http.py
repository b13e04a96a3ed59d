"""`serve` against hostile HTTP: framing (RFC 9112), slow bodies, log redaction, admin token guessing,
admission, internal errors, and a property-based fuzz of request lines, headers and chunked bodies.

Every test talks to a real `serve` over loopback with bytes written by hand, and checks what a user or
an operator would notice: the status and `Connection: close`, that no git process started for a
refused request, that nothing secret reached the log, that no traceback did. Run this suite on its own
with `python -m pytest -m security`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cccatalog.config import Config
from cccatalog.server.auth_limit import FailureLimiter, client_key
from cccatalog.server.cgi import HttpBackend
from cccatalog.server.reaper import Reaper
from tests.gitfixtures import GIT_ENV, Upstream
from tests.robustfixtures import add_random_blobs, address, logging_git, pkt_line
from tests.securityfixtures import (
    RawAnswer,
    StderrLines,
    backend_starts,
    captured_logs,
    chunked,
    count_answers,
    counting_backend_env,
    exchange,
    exchange_raw,
    parse_answer,
    request,
    rss_kib,
)
from tests.servefixtures import running_server, serve_process, synced_config
from tests.waiting import wait_until

pytestmark = pytest.mark.security
MakeUpstream = Callable[[str], Upstream]

UP = "?service=git-upload-pack"
INFO = f"/git/alpha.git/info/refs{UP}"
PACK = "/git/alpha.git/git-upload-pack"
CT = "Content-Type: application/x-git-upload-pack-request"
ADMIN_TOKEN = "admin-Token-for-security-0123456789"


def config_text(repos: dict[str, str], *, serve: str = "") -> str:
    entries = "".join(f"      - slug: {slug}\n        git_url: {url}\n" for slug, url in repos.items())
    return (
        "git:\n  enabled: true\n  data_dir: mirrors\n  lock_timeout_seconds: 5\n"
        f"{serve}"
        "sources:\n  - name: test\n    type: static\n    codecollections:\n"
        f"{entries}"
    )


@dataclass(frozen=True)
class Site:
    config: Config
    config_path: Path
    head: str  # alpha's main


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """alpha, mirrored once for the whole module (serving never changes it)."""
    root = tmp_path_factory.mktemp("security-site")
    with pytest.MonkeyPatch.context() as mp:
        (root / "home").mkdir()
        mp.setenv("HOME", str(root / "home"))
        for key, value in GIT_ENV.items():
            mp.setenv(key, value)
        up = Upstream(root / "upstreams" / "alpha")
        path = root / "config.yaml"
        path.write_text(config_text({"alpha": up.url}))
        config = synced_config(path)
        yield Site(config, path, up.sha("main"))


@pytest.fixture
def backend(tmp_path: Path) -> tuple[HttpBackend, Path]:
    """A backend whose every start is appended to the returned log (`argv | METHOD | PATH_INFO`)."""
    wrapper, log = logging_git(tmp_path)
    return HttpBackend(git=str(wrapper)), log


def starts(log: Path) -> list[str]:
    return log.read_text().splitlines()


def upload_request(head: str, *, haves: int = 0) -> bytes:
    """A protocol v0 fetch of `head`; `haves` repeats it as a "have" to make the body longer."""
    return (
        pkt_line(f"want {head}\n".encode())
        + b"0000"
        + pkt_line(f"have {head}\n".encode()) * haves
        + pkt_line(b"done\n")
    )


def assert_refused(answer: RawAnswer | None, status: int, what: object) -> None:
    assert answer is not None, f"{what}: no answer"
    assert answer.status == status, (what, answer.status_line, answer.rest[:200])
    assert answer.headers.get("connection") == "close", (what, answer.headers)
    assert answer.closed, f"{what}: the connection stayed open"
    assert json.loads(answer.rest)["detail"], what


# --- 1. chunked bodies --------------------------------------------------------------------------------

BAD_CHUNK_SIZES = {
    "minus-one": b"-1",
    "minus-two": b"-2",
    "plus": b"+5",
    "0x": b"0x18",
    "underscore": b"1_8",
    "leading-space": b" 18",
    "trailing-space": b"18 ",
    "empty": b"",
    "17-digits": b"1" * 17,
    "20-digits-leading-zeros": b"0" * 19 + b"1",
    "fullwidth-digit": "\uff11".encode(),
    "bare-lf": b"5\n",
}


@pytest.mark.parametrize("size", BAD_CHUNK_SIZES.values(), ids=BAD_CHUNK_SIZES.keys())
def test_a_chunk_size_that_is_not_1_to_16_hex_digits_is_a_400_and_a_close(
    site: Site, backend: tuple[HttpBackend, Path], size: bytes
) -> None:
    # The rest of the connection is never read into memory: the answer comes while the client still
    # holds the connection open with a megabyte behind the bad size line.
    head = request("POST", PACK, CT, "Transfer-Encoding: chunked")
    data = head + size + b"\r\n" + b"x" * (1024 * 1024)
    with captured_logs() as logs, running_server(site.config, backend=backend[0]) as server:
        answer = exchange(server.url, data, half_close=False, timeout=10)
    assert_refused(answer, 400, size)
    assert starts(backend[1]) == []
    assert logs.errors() == []


def test_chunk_extensions_and_a_trailer_are_accepted(site: Site, backend: tuple[HttpBackend, Path]) -> None:
    body = upload_request(site.head)
    framed = (
        b"%x;name=value\r\n%s\r\n" % (10, body[:10])
        + b'%x ; quoted="a;b" ;flag\r\n%s\r\n' % (len(body) - 10, body[10:])
        + b"0\r\nX-Checksum: none\r\n\r\n"
    )
    data = request("POST", PACK, CT, "Transfer-Encoding: chunked", body=framed)
    with running_server(site.config, backend=backend[0]) as server:
        answer = exchange(server.url, data)
    assert answer is not None
    assert answer.status == 200, answer.status_line
    assert b"PACK" in answer.rest
    assert len(starts(backend[1])) == 1


BOUNDED_FRAMING = {
    # extensions: one size line holds at most 1 KiB
    "long-extension": (b"5;" + b"e" * 2000 + b"\r\nhello\r\n0\r\n\r\n", 400),
    "too-many-trailers": (b"0\r\n" + b"X-T: 1\r\n" * 40 + b"\r\n", 400),
    "trailer-too-big": (b"0\r\nX-T: " + b"t" * 9000 + b"\r\n\r\n", 400),
    "malformed-trailer": (b"0\r\nno colon here\r\n\r\n", 400),
    "data-without-crlf": (b"5\r\nhelloXY0\r\n\r\n", 400),
    # the cap holds before a byte of a chunk is read, however large its size
    "size-over-the-cap": (b"ffffffffffffffff\r\n" + b"x" * 1024, 413),
    # 250,000 one-byte chunks: 1.25 MB of framing for 250 KB of data
    "tiny-chunks": (b"1\r\nx\r\n" * 250_000 + b"0\r\n\r\n", 413),
}


@pytest.mark.parametrize(("framed", "status"), BOUNDED_FRAMING.values(), ids=BOUNDED_FRAMING.keys())
def test_chunk_extensions_trailers_and_framing_are_bounded(
    site: Site, backend: tuple[HttpBackend, Path], framed: bytes, status: int
) -> None:
    data = request("POST", PACK, CT, "Transfer-Encoding: chunked", body=framed)
    with captured_logs() as logs, running_server(site.config, backend=backend[0]) as server:
        answer = exchange(server.url, data)
    assert_refused(answer, status, framed[:40])
    assert starts(backend[1]) == []
    assert logs.errors() == []


# --- 2. Content-Length and Transfer-Encoding, on every route ------------------------------------------

AMBIGUOUS: dict[str, tuple[tuple[str, ...], bytes]] = {
    "cl-superscript-two": (("Content-Length: ²",), b"hello"),
    "cl-plus": (("Content-Length: +5",), b"hello"),
    "cl-minus": (("Content-Length: -1",), b"hello"),
    "cl-extra-space": (("Content-Length:  5",), b"hello"),
    "cl-list-same": (("Content-Length: 5,5",), b"hello"),
    "cl-list-different": (("Content-Length: 5, 6",), b"hello"),
    "cl-twice-different": (("Content-Length: 5", "Content-Length: 6"), b"hello"),
    "cl-twice-same": (("Content-Length: 5", "Content-Length: 5"), b"hello"),
    "cl-5000-digits": (("Content-Length: " + "9" * 5000,), b"hello"),
    "cl-and-te": (("Content-Length: 5", "Transfer-Encoding: chunked"), chunked(b"hello")),
    "te-chunked-identity": (("Transfer-Encoding: chunked, identity",), chunked(b"hello")),
    "te-identity": (("Transfer-Encoding: identity",), b"hello"),
    "te-gzip-chunked": (("Transfer-Encoding: gzip, chunked",), chunked(b"hello")),
    "te-twice": (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), chunked(b"hello")),
    "space-before-colon": (("Content-Length : 5",), b"hello"),
    "obs-fold": (("Content-Length:", " 5"), b"hello"),
    "bare-cr-in-value": (("X-Note: a\rb", "Content-Length: 5"), b"hello"),
    "nul-in-value": (("X-Note: a\0b",), b""),
    "line-without-colon": (("Content-Length 5",), b"hello"),
}
ROUTES = {
    "upload-pack": ("POST", PACK),
    "healthz": ("GET", "/healthz"),
    "receive-pack-refused": ("POST", "/git/alpha.git/git-receive-pack"),
    "info-refs": ("GET", INFO),
    "admin": ("POST", "/api/v1/admin/reload-config"),
    "unknown-method": ("PATCH", "/healthz"),
}


@pytest.mark.parametrize(("method", "target"), ROUTES.values(), ids=ROUTES.keys())
def test_ambiguous_body_framing_is_a_400_and_a_close_before_routing(
    site: Site, backend: tuple[HttpBackend, Path], method: str, target: str
) -> None:
    wrong: list[str] = []
    with captured_logs() as logs, running_server(site.config, backend=backend[0]) as server:
        for name, (headers, body) in AMBIGUOUS.items():
            answer = exchange(server.url, request(method, target, CT, *headers, body=body))
            if answer is None or answer.status != 400 or answer.headers.get("connection") != "close":
                wrong.append(f"{name}: {answer.status_line if answer else None!r}")
        http10 = exchange(
            server.url,
            request(method, target, "Transfer-Encoding: chunked", body=chunked(b"hello"), version="HTTP/1.0"),
        )
        if http10 is None or http10.status != 400:
            wrong.append(f"chunked on HTTP/1.0: {http10.status_line if http10 else None!r}")
    assert wrong == []
    assert starts(backend[1]) == []
    assert logs.errors() == []


def test_a_request_smuggled_behind_a_hidden_content_length_is_never_answered(site: Site) -> None:
    inner = b"GET /api/v1/git/repos HTTP/1.1\r\nHost: test\r\n\r\n"
    data = request("GET", "/healthz", f"Content-Length : {len(inner)}", body=inner)
    with running_server(site.config) as server:
        answer = exchange(server.url, data)
    assert answer is not None
    assert answer.status == 400
    assert b"HTTP/1.1 " not in answer.rest, "a second answer: the body was read as a request"


def test_a_content_length_body_of_a_non_reading_route_closes_the_connection(site: Site) -> None:
    # The body of a GET is not read: reusing the connection would read it as the next request.
    inner = b"GET /api/v1/git/repos HTTP/1.1\r\nHost: test\r\n\r\n"
    data = request("GET", INFO, f"Content-Length: {len(inner)}", body=inner)
    with running_server(site.config) as server:
        answer = exchange(server.url, data)
    assert answer is not None
    assert answer.status == 200
    assert answer.headers.get("connection") == "close"
    assert b"HTTP/1.1 " not in answer.rest


# --- 3. HTTP versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET /healthz\r\n\r\n", 400),  # HTTP/0.9: no version
        (b"GET /healthz HTTP/0.9\r\n\r\n", 505),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1x\r\nHost: t\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /healthz\tHTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /health\xffz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ],
    ids=["http-0.9", "version-0.9", "version-2.0", "version-junk", "two-spaces", "tab", "non-ascii-target"],
)
def test_requests_that_are_not_http_1_x_get_a_status_line_and_a_close(
    site: Site, line: bytes, status: int
) -> None:
    with captured_logs() as logs, running_server(site.config) as server:
        answer = exchange(server.url, line)
    assert answer is not None
    assert answer.status_line.startswith(b"HTTP/1.1 "), f"answered without a status line: {answer}"
    assert_refused(answer, status, line)
    assert logs.errors() == []


def test_http_1_0_clients_are_served_and_closed(site: Site) -> None:
    body = upload_request(site.head)
    with running_server(site.config) as server:
        health = exchange(server.url, b"GET /healthz HTTP/1.0\r\n\r\n")
        fetch = exchange(
            server.url,
            request("POST", PACK, CT, f"Content-Length: {len(body)}", body=body, version="HTTP/1.0"),
        )
        curl = (
            subprocess.run(
                ["curl", "--http1.0", "-sS", "-o", "-", "-w", "%{http_code}", f"{server.url}{INFO}"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if shutil.which("curl")
            else None
        )
    assert health is not None
    assert (health.status, json.loads(health.rest), health.closed) == (200, {"status": "ok"}, True)
    assert fetch is not None
    assert fetch.status == 200
    assert b"PACK" in fetch.rest
    if curl is not None:
        assert curl.stdout.endswith(b"200"), curl.stderr
        assert curl.stdout.startswith(b"001e# service=git-upload-pack\n")


# --- 4. slow bodies -----------------------------------------------------------------------------------


def test_the_body_rate_rule_passes_a_slow_honest_link_and_cuts_a_trickle() -> None:
    """The rule itself on a simulated clock: idle timeout 60 s, 10 s windows, a 64 MiB cap."""
    reaper = Reaper(interval=3600)  # its thread stays asleep: this test sweeps by hand
    pairs = [socket.socketpair() for _ in range(4)]
    honest, trickle, silent, stalled = (pair[0] for pair in pairs)
    try:
        ceiling = 60 + 64 * 1024 * 1024 / 65536
        meters = {
            sock: reaper.arm_body(sock, first_byte=60, window=10, ceiling=ceiling, now=0.0)
            for sock in (honest, trickle, silent, stalled)
        }
        cut_at: dict[socket.socket, float] = {}
        for step in range(1, 4 * 200):
            now = step / 4
            meters[honest].received = min(int(now * 1024 * 1024), 64 * 1024 * 1024)  # 64 MiB at 1 MiB/s
            meters[trickle].received = int(now // 5)  # one byte every 5 s
            meters[stalled].received = 8 * 1024 * 1024 if now >= 1 else 0  # 8 MiB, then nothing
            reaper.sweep(now)
            for sock, meter in meters.items():
                if meter.cut and sock not in cut_at:
                    cut_at[sock] = now
            if meters[honest].received == 64 * 1024 * 1024:
                reaper.disarm(honest)  # the body is whole
    finally:
        reaper.stop()
        for pair in pairs:
            for sock in pair:
                sock.close()
    assert honest not in cut_at
    assert cut_at[trickle] <= 60, "a trickle must not outlive the idle timeout"
    assert cut_at[silent] == 60
    assert cut_at[stalled] <= 1 + 10 + 0.25


def trickle_until_cut_off(sock: socket.socket, *, seconds: float) -> bool:
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            sock.sendall(b"0")
            time.sleep(0.3)
    except OSError:
        return True
    return False


@pytest.mark.slow
def test_a_trickled_body_is_cut_off_within_the_idle_timeout_and_starts_no_git(
    site: Site, backend: tuple[HttpBackend, Path]
) -> None:
    head = request("POST", PACK, CT, "Content-Length: 1000")
    with (
        captured_logs() as logs,
        running_server(site.config, backend=backend[0], idle_timeout_seconds=1) as server,
    ):
        with socket.create_connection(address(server.url), timeout=10) as slow:
            slow.sendall(head)
            # 64 MiB cap: the previous rule gave this body 1 + 1024 s
            assert trickle_until_cut_off(slow, seconds=6), "still connected after 6 s of one byte per 0.3 s"
        assert wait_until(lambda: "408" in logs.text, 5), logs.text
    assert starts(backend[1]) == []


@pytest.mark.slow
def test_a_slow_but_steady_body_is_not_cut_off(site: Site) -> None:
    body = upload_request(site.head, haves=1600)  # 80 KB at 16 KiB/s: five seconds, two windows past idle
    head = request("POST", PACK, CT, f"Content-Length: {len(body)}")
    with (
        running_server(site.config, idle_timeout_seconds=2) as server,
        socket.create_connection(address(server.url), timeout=30) as sock,
    ):
        sock.sendall(head)
        for i in range(0, len(body), 4096):
            sock.sendall(body[i : i + 4096])
            time.sleep(0.25)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert b"PACK" in received


# --- 5. the access log --------------------------------------------------------------------------------


def test_the_log_never_holds_query_values_outside_the_allow_list_or_credentials(site: Site) -> None:
    secrets = [f"s3cr3t-value-{i}" for i in range(9)]
    requests = [
        request("GET", f"/healthz?token={secrets[0]}"),
        request("GET", f"{INFO}&token={secrets[1]}"),
        request("GET", f"/api/v1/catalog/codecollections?access_token={secrets[2]}&visibility=public"),
        request("POST", f"/api/v1/admin/reload-config?token={secrets[3]}"),
        request("GET", f"/nowhere/Authorization:%20Bearer%20{secrets[4]}"),
        request("GET", f"http://user:{secrets[5]}@catalog/healthz"),
        request("GET", f"/healthz?token={secrets[6]}", version="HTTP/9.9"),  # refused before routing
        f"GET /healthz?{secrets[7]}\r\n\r\n".encode(),  # HTTP/0.9, refused
        request("GET", f"/git/alpha.git/info/refs?service=git-receive-pack&password={secrets[8]}"),
    ]
    with captured_logs() as logs, running_server(site.config) as server:
        statuses = [a.status if (a := exchange(server.url, data)) else None for data in requests]
    assert statuses == [200, 200, 200, 503, 404, 200, 505, 400, 403]
    leaked = [s for s in secrets if s in logs.text]
    assert leaked == [], logs.text
    assert "service=git-upload-pack" in logs.text
    assert "visibility=public" in logs.text
    assert "token=***" in logs.text


# --- 6. admin token guessing --------------------------------------------------------------------------


def admin(server_url: str, token: str, *, source: str = "127.0.0.1") -> RawAnswer:
    answer = exchange(
        server_url,
        request("GET", "/api/v1/admin/jobs/none", f"Authorization: Bearer {token}"),
        source=source,
    )
    assert answer is not None
    return answer


def test_wrong_admin_tokens_are_limited_per_address_before_any_comparison(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)
    with running_server(site.config) as server:
        successes = [admin(server.url, ADMIN_TOKEN).status for _ in range(20)]
        guesses = [admin(server.url, f"guess-{i}").status for i in range(10)]
        blocked = admin(server.url, "guess-10")
        right_but_blocked = admin(server.url, ADMIN_TOKEN)
        elsewhere = admin(server.url, ADMIN_TOKEN, source="127.0.0.2")
        elsewhere_wrong = admin(server.url, "guess", source="127.0.0.2")

    assert successes == [404] * 20, "an authorised request was limited"  # authorised; no such job
    assert guesses == [403] * 10
    for answer in (blocked, right_but_blocked):
        assert answer.status == 429
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        assert json.loads(answer.rest)["detail"]
    assert (elsewhere.status, elsewhere_wrong.status) == (404, 403)


def test_the_admin_failure_limiter_is_bounded_and_slides() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=10, window=60, max_clients=100, clock=lambda: now[0])
    for i in range(10_000):
        limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter) == 100

    for second in range(10):  # ten wrong tokens, one a second
        now[0] = float(second)
        limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 51
    assert limiter.retry_after("192.0.2.2") is None
    now[0] = 60.0
    assert limiter.retry_after("192.0.2.1") is None  # the first failure left the window
    limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 1  # ... and the next one fills it until the second leaves

    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


# --- 7. admission -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cached_advertisement_answers_while_a_slow_reader_holds_the_only_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha, big = Upstream(tmp_path / "up" / "alpha"), Upstream(tmp_path / "up" / "big")
    big_head = add_random_blobs(big, megabytes=16)
    path = tmp_path / "config.yaml"
    path.write_text(config_text({"alpha": alpha.url, "big": big.url}))
    config = synced_config(path)
    body = upload_request(big_head)
    fetch = request("POST", "/git/big.git/git-upload-pack", CT, f"Content-Length: {len(body)}", body=body)

    # No pack cache (a slow reader then holds its slot to the end) and no queue (beyond the slot, 503)
    settings: dict[str, object] = {
        "max_concurrent_upload_packs": 1,
        "max_queued_upload_packs": 0,
        "pack_cache_mb": 0,
    }
    with running_server(config, backend=None, racy_seconds=0, **settings) as server:
        warm = exchange(server.url, request("GET", INFO))  # kept in the advertisement cache
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader on a thin link
            slow.settimeout(10)
            slow.connect(address(server.url))
            slow.sendall(fetch)
            assert slow.recv(4096).startswith(b"HTTP/1.1 200")
            # the slot is taken: an uncached request of another repository is turned away ...
            held = exchange(server.url, request("GET", "/git/alpha.git/HEAD"))
            # ... but the cached advertisement needs neither a slot nor a process
            cached = exchange(server.url, request("GET", INFO))
    assert warm is not None
    assert warm.status == 200
    assert held is not None
    assert held.status == 503, "the slow reader did not hold the slot: the check is blind"
    assert cached is not None
    assert cached.status == 200
    assert cached.body == warm.body


# --- 8. internal errors and odd input -----------------------------------------------------------------


def test_an_error_escaping_a_handler_is_a_500_logged_once_redacted_without_locals(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCCATALOG_ADMIN_TOKEN", ADMIN_TOKEN)

    def broken_check(_config: Config) -> str | None:
        hidden_local = "local-value-never-logged"
        raise RuntimeError(f"check failed near {ADMIN_TOKEN} ({len(hidden_local)})")

    with captured_logs() as logs, running_server(site.config) as server:
        server.api.ready_checks.append(broken_check)
        answer = exchange(server.url, request("GET", "/readyz"), half_close=False)
        after = exchange(server.url, request("GET", "/healthz"))
    assert answer is not None
    assert answer.status == 500
    assert json.loads(answer.rest)["detail"]
    assert answer.headers.get("connection") == "close"
    assert answer.closed
    assert after is not None
    assert after.status == 200
    errors = logs.errors()
    assert len(errors) == 1, errors
    assert "RuntimeError" in errors[0]
    assert "broken_check" in errors[0], "the traceback is logged"
    assert ADMIN_TOKEN not in logs.text
    assert "local-value-never-logged" not in logs.text


ODD_INPUT: dict[str, tuple[bytes, int]] = {
    "bad-ipv6-authority": (request("GET", "http://[::1/healthz"), 400),
    "percent-ff-nul-in-api-path": (request("GET", "/api/v1/catalog/codecollections/%ff%fe%00"), 404),
    "percent-nul-in-repo-status": (request("GET", "/api/v1/git/repos/%00%ff"), 404),
    "odd-service-value": (request("GET", "/git/alpha.git/info/refs?service=%ff%00"), 403),
    "odd-query": (request("GET", "/api/v1/catalog/codecollections?%zz=%%%&=&&visibility=%ff"), 422),
    "latin1-header-value": (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: \xff\xfe\x80\r\n\r\n", 200),
    "huge-header": (request("GET", "/healthz", "X-Big: " + "a" * 70_000), 431),
    # a long run of inner whitespace: read in linear time (a backtracking pattern took 30 s here)
    "spaces-inside-a-value": (request("GET", "/healthz", "X-Spaces: a" + " \t" * 30_000 + "b"), 200),
    "spaces-then-nul": (b"GET /healthz HTTP/1.1\r\nX-S: a" + b" " * 60_000 + b"\0\r\n\r\n", 400),
    "many-headers": (request("GET", "/healthz", *[f"X-{i}: {i}" for i in range(101)]), 431),
    "request-line-64k": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    "authority-form": (request("CONNECT", "catalog:443"), 501),
    "asterisk-form": (request("OPTIONS", "*"), 501),
    "no-method": (b" / HTTP/1.1\r\n\r\n", 400),
}


@pytest.mark.parametrize(("data", "status"), ODD_INPUT.values(), ids=ODD_INPUT.keys())
def test_odd_client_input_gets_an_answer_never_a_traceback(site: Site, data: bytes, status: int) -> None:
    with captured_logs() as logs, running_server(site.config) as server:
        answer = exchange(server.url, data)
        after = exchange(server.url, request("GET", "/healthz"))
    assert answer is not None
    assert answer.status == status, answer
    assert after is not None
    assert after.status == 200
    assert logs.errors() == []


# --- property-based fuzzing against a live serve ------------------------------------------------------
#
# A `serve` process with small caps, its git backends counted, its stderr watched; hypothesis writes
# request lines, header sets and bodies, most of them almost right. Per request: no git process
# unless the request was an allowed git route with sound framing, no 2xx outside the allow-list, no
# answer to a request smuggled behind one with unsound framing, no hang, no traceback; after the run,
# the process's peak memory grew by less than the caps allow. CI runs FUZZ_EXAMPLES derandomized (the
# same requests every run); CCCATALOG_FUZZ_EXAMPLES=N runs N random ones (docs/reliability.md).

FUZZ_BY_HAND = bool(os.environ.get("CCCATALOG_FUZZ_EXAMPLES"))
FUZZ_EXAMPLES = int(os.environ.get("CCCATALOG_FUZZ_EXAMPLES") or 1500)
FUZZ_SERVE = (
    "serve:\n  max_request_body_mb: 1\n  advertisement_cache_mb: 1\n  idle_timeout_seconds: 2\n"
    "  max_concurrent_upload_packs: 2\n"
)
MEMORY_GROWTH_KIB = 24 * 1024  # 1 MiB body spool + 1 MiB adverts + 64 KiB heads, with room for the allocator

TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FUZZ_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FUZZ_TARGET = re.compile(rb"[\x21-\x7e]+")
_FUZZ_FIELD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00\r\n]*")
ALLOWED_GIT = re.compile(r"/git/alpha(\.git)?/(info/refs|HEAD|git-upload-pack)")
API_GET = ("/api/v1/catalog/", "/api/v1/git/repos", "/api/openapi.json")
GIT_ROUTES = {"/alpha.git/info/refs": "GET", "/alpha.git/HEAD": "GET", "/alpha.git/git-upload-pack": "POST"}


@dataclass(frozen=True)
class Fuzzed:
    data: bytes
    method: bytes
    target: bytes
    version: bytes
    head_ok: bool  # request line and header lines as RFC 9112 has them
    framing_ok: bool  # at most one sound body declaration, and the body as declared


def route_of(target: str) -> tuple[str, str]:
    """(path, query) as a server reads an origin-form or absolute-form target."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", target):
        rest = target.split("://", 1)[1]
        target = "/" + rest.partition("/")[2] if "/" in rest else "/"
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def may_succeed(method: str, target: str) -> bool:
    """The allow-list: the three git routes of a served repo, the API's GETs, health and readiness,
    the status page and /metrics."""
    path, query = route_of(target)
    pages = ("/healthz", "/readyz", "/api/v1/catalog/codecollections", "/", "/ui", "/ui/", "/metrics")
    if method in ("GET", "HEAD") and (path in pages or path.startswith(API_GET)):
        return True
    match = ALLOWED_GIT.fullmatch(path)
    if match is None:
        return False
    if match.group(2) == "info/refs":
        return method == "GET" and [p for p in query.split("&") if p.startswith("service=")] == [
            "service=git-upload-pack"
        ]
    return method == ("POST" if match.group(2) == "git-upload-pack" else "GET")


def _fuzz_strategies() -> st.SearchStrategy[Fuzzed]:
    allowed_targets = [
        INFO,
        PACK,
        "/git/alpha.git/HEAD",
        f"/git/alpha/info/refs{UP}",
        "/git/alpha/git-upload-pack",
        "/healthz",
        "/readyz",
        "/api/v1/catalog/codecollections",
        "/api/v1/catalog/codecollections/alpha",
        "/api/v1/git/repos",
        "/api/v1/git/repos/alpha",
        "/api/openapi.json",
        "http://catalog/healthz",
        "/",
        "/ui",
        "/metrics",
    ]
    known_targets = [
        *allowed_targets,
        "/api/v1/admin/sync-git",
        "/git/alpha.git/git-receive-pack",
        "/git/alpha.git/info/refs?service=git-receive-pack",
        "/git/alpha.git/info/refs",
        "/git/alpha.git/config",
        "/git/alpha.git/objects/info/packs",
        "/git/../alpha.git/HEAD",
        "//git/alpha.git/HEAD",
        "/",
        "*",
        "http://[::1/healthz",
        "/git/nosuch.git/HEAD",
    ]
    suffixes = ["/", "/..", "%00", "%2e%2e/", "?x=1", "&service=git-receive-pack", "#f", ".git"]
    text = st.binary(min_size=1, max_size=24)
    methods = st.sampled_from([b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"PATCH"])
    odd_methods = st.one_of(st.text(TCHAR, min_size=1, max_size=8).map(str.encode), text)
    allowed = st.sampled_from(allowed_targets).map(str.encode)
    known = st.sampled_from(known_targets).map(str.encode)
    suffixed = st.tuples(st.sampled_from(known_targets), st.sampled_from(suffixes)).map(
        lambda t: "".join(t).encode()
    )
    odd_versions = st.one_of(
        st.sampled_from([b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1x", b""]), text
    )
    separator = st.sampled_from([b" "] * 12 + [b"  ", b"\t"])
    extra = st.sampled_from(
        [
            (b"Host: test", True),
            (b"Git-Protocol: version=2", True),
            (CT.encode(), True),
            (b"Connection: close", True),
            (b"Connection: keep-alive", True),
            (b"Expect: 100-continue", True),
            (b"Authorization: Bearer not-the-token", True),
            (b"X-Latin: \xe9t\xe9", True),
        ]
    )
    odd_extra = st.one_of(
        st.sampled_from([(b"X-Space : 1", False), (b" X-Fold: 1", False), (b"X-Cr: a\rb", False)]),
        st.sampled_from([(b"NoColon", False), (b"X-Nul: \0", False), (b": empty-name", False)]),
        st.tuples(st.integers(0, 35_000), st.sampled_from([b"a", b" ", b" \t", b"a "])).map(
            lambda t: (b"X-Big: a" + t[1] * t[0] + b"b", len(t[1]) * t[0] <= 60_000)
        ),
        text.map(lambda b: (b, _FUZZ_FIELD.fullmatch(b) is not None)),
    )
    good_sizes = st.binary(max_size=40).map(lambda b: b"%x\r\n%s\r\n" % (len(b), b))
    odd_size = st.sampled_from(
        [b"-1", b"-2", b"+5", b"0x18", b"1_8", b" 18", b"", b"1" * 17, b"ffffffffffffffff"]
    )
    bad_chunk = st.tuples(odd_size, st.binary(max_size=40)).map(lambda t: t[0] + b"\r\n" + t[1] + b"\r\n")
    chunks = st.lists(st.one_of(good_sizes, good_sizes, bad_chunk), max_size=4)
    pkt = st.just(upload_request("0" * 40))
    body = st.one_of(
        st.just(b""), pkt, st.binary(max_size=200), st.integers(0, 1_200_000).map(lambda n: b"0" * n)
    )
    ambiguous = st.sampled_from([headers for headers, _ in AMBIGUOUS.values()])

    def mostly(draw: st.DrawFn, usual: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes]) -> bytes:
        # Mostly almost right: a request has to pass the early checks for the later ones to be reached.
        # (one_of drops repeated branches, so the weight is drawn here; it shrinks towards `usual`)
        return draw(odd if draw(st.integers(0, 7)) == 7 else usual)

    @st.composite
    def fuzzed(draw: st.DrawFn) -> Fuzzed:
        m = mostly(draw, methods, odd_methods)
        t = draw([allowed, allowed, known, st.one_of(suffixed, text)][draw(st.integers(0, 3))])
        v = mostly(draw, st.just(b"HTTP/1.1"), odd_versions)
        line = m + draw(separator) + t + ((draw(separator) + v) if v else b"")
        head_ok = bool(
            _FUZZ_TOKEN.fullmatch(m)
            and _FUZZ_TARGET.fullmatch(t)
            and re.fullmatch(rb"HTTP/1\.[01]", v)
            and line.count(b" ") == 2
            and b"\t" not in line
        )
        fields = draw(st.lists(extra, max_size=4))
        if draw(st.integers(0, 5)) == 5:
            fields.append(draw(odd_extra))
        head_ok = head_ok and all(ok for _, ok in fields) and sum(len(f) + 2 for f, _ in fields) < 60_000
        kind = draw(st.sampled_from(["none", "none", "length", "length", "chunked", "chunked", "ambiguous"]))
        framing_ok = kind != "ambiguous"
        payload = b""
        if kind == "length":
            payload = draw(body)
            fields.append((b"Content-Length: %d" % len(payload), True))
        elif kind == "chunked":
            parts = draw(chunks)
            payload = b"".join(parts) + draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b""]))
            fields.append((b"Transfer-Encoding: chunked", True))
            framing_ok = v != b"HTTP/1.0"
        elif kind == "ambiguous":
            fields += [(h.encode("iso-8859-1"), True) for h in draw(ambiguous)]
            payload = draw(body)
        if draw(st.booleans()):  # a second request behind the first: answered only if the first was sound
            payload += b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
        ending = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
        head = line + ending + b"".join(f + ending for f, _ in draw(st.permutations(fields)))
        return Fuzzed(head + ending + payload, m, t, v, head_ok, framing_ok)

    return fuzzed()


@pytest.mark.slow
def test_fuzzed_requests_keep_every_invariant(tmp_path: Path, make_upstream: MakeUpstream) -> None:
    up = make_upstream("alpha")
    path = tmp_path / "config.yaml"
    path.write_text(config_text({"alpha": up.url}, serve=FUZZ_SERVE))
    synced_config(path)
    env, backend_log = counting_backend_env(tmp_path)
    seen = {"requests": 0, "2xx": 0, "git": 0, "refused": 0, "no answer": 0}
    statuses: Counter[int] = Counter()

    with serve_process(path, env=env) as (proc, url):
        stderr = StderrLines(proc)
        for warm in (request("GET", INFO), request("GET", "/healthz")):
            assert exchange(url, warm) is not None
        baseline = rss_kib(proc.pid)
        assert backend_starts(backend_log), "the counting backend never ran: the git check is blind"

        @settings(
            max_examples=FUZZ_EXAMPLES,
            derandomize=not FUZZ_BY_HAND,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(fuzzed=_fuzz_strategies())
        def one(fuzzed: Fuzzed) -> None:
            before_git, before_log = len(backend_starts(backend_log)), len(stderr.snapshot())
            received, closed = exchange_raw(url, fuzzed.data, timeout=15)
            assert closed, "the server neither answered nor closed within 15 s"
            answer = parse_answer(received, closed=closed)
            started = backend_starts(backend_log)[before_git:]
            method, target = fuzzed.method.decode("latin-1"), fuzzed.target.decode("latin-1")
            sound = fuzzed.head_ok and fuzzed.framing_ok
            seen["requests"] += 1
            statuses[answer.status if answer else 0] += 1
            seen["git"] += len(started)
            seen["no answer"] += answer is None
            if started:
                assert len(started) == 1, started
                assert sound, f"git ran for a request with unsound framing: {started}"
                assert ALLOWED_GIT.fullmatch(route_of(target)[0]), f"git ran for {target!r}: {started}"
                assert GIT_ROUTES.get(started[0].split(" ", 1)[1]) == started[0].split(" ")[0], started
            if answer is not None and 200 <= answer.status < 300:
                seen["2xx"] += 1
                assert sound, f"{answer.status} for a request with unsound framing"
                assert may_succeed(method, target), (
                    f"{answer.status} outside the allow-list: {method} {target}"
                )
            elif answer is not None:
                seen["refused"] += 1
            if not sound:
                assert count_answers(received) <= 1, "a request behind unsound framing was answered"
            problems = [
                line
                for line in stderr.snapshot()[before_log:]
                if "Traceback" in line or " ERROR " in line or "internal error" in line
            ]
            assert problems == []

        one()
        grown = rss_kib(proc.pid) - baseline
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        stderr.join(5)

    assert [line for line in stderr.lines if "Traceback" in line or " ERROR " in line] == []
    assert grown < MEMORY_GROWTH_KIB, f"peak RSS grew by {grown} KiB over {seen['requests']} requests"
    assert seen["git"] > 0, "no fuzzed request reached git: the invariants were never exercised"
    assert seen["2xx"] > 0
    sys.stderr.write(f"fuzzed serve: {seen}, statuses {dict(statuses)}, peak RSS +{grown} KiB\n")
