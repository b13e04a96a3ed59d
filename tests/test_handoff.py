"""The pack hand-off (server/handoff.py): with the pack cache off, the git command line's last fetch
request gets the connection itself and git writes the pack to the socket. What a client notices: the
same pack as the relay sends, an answer that ends with the connection, a reset (never a clean end)
when git did not finish, and a backend that does not outlive a client who left or stopped reading.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cccatalog.config import Config
from cccatalog.server.app import CatalogServer
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.fleetfixtures import pack_data, want_request
from tests.gitfixtures import GIT_ENV, Upstream, git
from tests.robustfixtures import REAL_GIT, add_random_blobs, address, git_wrapper, raw_request
from tests.servefixtures import running_server, synced_config
from tests.test_pack_cache import dechunk
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]

GIT_CLI = "git/2.39.5"
LIBGIT2 = "git/2.0 (libgit2 1.7.1)"


def request_bytes(body: bytes, *, agent: str = GIT_CLI, close: bool = True) -> bytes:
    return (
        f"POST /git/big.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nUser-Agent: {agent}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def post(url: str, body: bytes, *, agent: str = GIT_CLI) -> tuple[bytes, bytes, str]:
    """The answer's head and body as they came off the socket, and how the connection ended: "close"
    (a FIN) or "reset" (an RST)."""
    with socket.create_connection(address(url), timeout=30) as sock:
        sock.sendall(request_bytes(body, agent=agent))
        received, ending = read_to_end(sock)
    head, _, rest = received.partition(b"\r\n\r\n")
    return head.lower(), rest, ending


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the connection ends, and how it ended: "close" (a FIN) or "reset" (an RST)."""
    received = bytearray()
    try:
        while chunk := sock.recv(1024 * 1024):
            received += chunk
    except ConnectionResetError:
        return bytes(received), "reset"
    return bytes(received), "close"


@contextmanager
def big_repo(
    make_upstream: MakeUpstream, write_config: MakeConfig, *, megabytes: int = 6, **settings: Any
) -> Iterator[tuple[CatalogServer, str]]:
    """`big` served with the pack cache off; the server and HEAD."""
    config, head = big_config(make_upstream, write_config, megabytes=megabytes)
    with running_server(config, pack_cache_mb=0, **settings) as server:
        yield server, head


def big_config(
    make_upstream: MakeUpstream, write_config: MakeConfig, *, megabytes: int
) -> tuple[Config, str]:
    """`big` (incompressible blobs), synced: its configuration and HEAD."""
    up = make_upstream("big")
    head = add_random_blobs(up, megabytes=megabytes, files=2)
    return synced_config(write_config({"big": up.url})), head


def slow_reader(server: CatalogServer, head: str) -> socket.socket:
    """A client with a small receive buffer that has asked for the pack and is being answered."""
    sock = socket.create_connection(address(server.url), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(request_bytes(want_request(head)))
    wait_until(lambda: backends(server) == 1, what="the backend to be writing the pack")
    return sock


def test_the_git_command_lines_fetch_gets_the_socket_and_the_same_pack_as_the_relay(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config, head = big_config(make_upstream, write_config, megabytes=6)
    body = want_request(head)

    with running_server(config, pack_cache_mb=0) as server:
        handed = post(server.url, body)
        libgit2 = post(server.url, body, agent=LIBGIT2)
        metrics = raw_request(server.url, "GET", "/metrics").body.decode()
    with running_server(config, pack_cache_mb=0, pack_hand_off=False) as server:
        relayed = post(server.url, body)

    handed_head, handed_body, handed_end = handed
    assert handed_head.startswith(b"http/1.1 200")
    assert b"connection: close" in handed_head
    assert b"transfer-encoding" not in handed_head
    assert b"content-length" not in handed_head
    # the backend's CGI head completes the header section: git's content type and no-cache headers
    assert b"content-type: application/x-git-upload-pack-result" in handed_head
    assert b"cache-control: no-cache" in handed_head
    assert handed_end == "close"
    assert handed_body.endswith(b"0000")
    for other_head, other_body, _ in (libgit2, relayed):  # anything but the git CLI, or turned off
        assert b"transfer-encoding: chunked" in other_head
        assert pack_data(dechunk(other_body)) == pack_data(handed_body)
    assert len(pack_data(handed_body)) > 6 * 1024 * 1024
    assert "\ncccatalog_pack_hand_offs_total 1.0\n" in metrics  # the git CLI's, not libgit2's


def test_a_negotiation_round_is_relayed_and_keeps_the_connection(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    with big_repo(make_upstream, write_config, megabytes=1) as (server, head):
        not_done = want_request(head).removesuffix(b"0009done\n")  # wants and a flush: no `done`
        with socket.create_connection(address(server.url), timeout=30) as sock:
            sock.sendall(request_bytes(not_done, close=False) + request_bytes(want_request(head)))
            received = bytearray()
            while chunk := sock.recv(1024 * 1024):
                received += chunk

    first_head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in first_head.lower()
    assert b"connection: close" not in first_head.lower()
    second = rest[rest.index(b"HTTP/1.1 200") :]  # the connection stayed for the next request
    assert b"transfer-encoding" not in second.partition(b"\r\n\r\n")[0].lower()  # handed off
    assert len(pack_data(second.partition(b"\r\n\r\n")[2])) > 1024 * 1024


def test_git_clone_shallow_and_partial_fetches_are_handed_off_and_whole(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    with big_repo(make_upstream, write_config, megabytes=2) as (server, head):
        url = f"{server.url}/git/big.git"
        runs = {
            "v2 clone": ["-c", "protocol.version=2", "clone", "-q", "--bare", url, str(tmp_path / "v2")],
            "v0 clone": ["-c", "protocol.version=0", "clone", "-q", "--bare", url, str(tmp_path / "v0")],
            "shallow": ["clone", "-q", "--bare", "--depth=1", url, str(tmp_path / "shallow")],
            "partial": ["clone", "-q", "--bare", "--filter=blob:none", url, str(tmp_path / "partial")],
        }
        traces = {}
        for name, args in runs.items():
            result = subprocess.run(
                ["git", *args],
                env={**os.environ, **GIT_ENV, "GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, (name, result.stderr[-3000:])
            traces[name] = result.stderr

    for name, trace in traces.items():
        # the answer to the POST that carried `done` ended with the connection
        assert "<= Recv header: Connection: close" in trace, name
        assert git("rev-parse", "HEAD", cwd=tmp_path / name.split()[0]) == head, name
    git("fsck", "--strict", "--no-progress", cwd=tmp_path / "v2")
    git("fsck", "--strict", "--no-progress", cwd=tmp_path / "v0")


def test_an_answer_git_did_not_finish_ends_with_a_reset_after_what_git_wrote(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    # the whole answer, then a failing exit: the client must not take the end for a whole answer
    failing = git_wrapper(
        tmp_path, "git-failing", f'if [ "$1" = http-backend ]; then "{REAL_GIT}" "$@"; exit 1; fi'
    )
    config, head = big_config(make_upstream, write_config, megabytes=2)
    with running_server(config, pack_cache_mb=0) as server:
        whole = post(server.url, want_request(head))
    with running_server(config, pack_cache_mb=0, backend=HttpBackend(git=str(failing))) as server:
        failed = post(server.url, want_request(head))

    assert whole[2] == "close"
    assert failed[2] == "reset"
    assert pack_data(failed[1]) == pack_data(whole[1])  # what git wrote arrived before the reset


def backends(server: CatalogServer) -> int:
    return server.backend.running


def test_a_client_that_leaves_mid_pack_stops_git_at_once(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    with big_repo(make_upstream, write_config, megabytes=24, max_concurrent_upload_packs=1) as (server, head):
        sock = slow_reader(server, head)
        assert sock.recv(65536)
        sock.close()
        left = time.monotonic()
        # far sooner than the idle timeout (60 s): the close is seen while git waits for room
        wait_until(lambda: backends(server) == 0, timeout=10, what="git to be stopped")
        # and the one slot is free at once: the next client is not kept waiting
        _, body, ending = post(server.url, want_request(head))
        took = time.monotonic() - left

    assert ending == "close"
    assert len(pack_data(body)) > 24 * 1024 * 1024
    assert took < 5, f"the next clone took {took:.1f}s"


def test_a_client_that_stops_reading_loses_its_backend_after_the_idle_timeout(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    with big_repo(make_upstream, write_config, megabytes=24, idle_timeout_seconds=2) as (server, head):
        stalled = slow_reader(server, head)
        started = time.monotonic()
        wait_until(lambda: backends(server) == 0, timeout=15, what="the stalled client's git to be killed")
        waited = time.monotonic() - started
        # the slot is free again: another client gets its whole pack
        _, body, ending = post(server.url, want_request(head))

    assert waited >= 1.5, f"killed after {waited:.1f}s, before the 2 s idle timeout"
    assert ending == "close"
    assert len(pack_data(body)) > 24 * 1024 * 1024
    received, ending = read_to_end(stalled)
    stalled.close()
    assert ending == "reset"  # what it got was cut off, and it is told so
    assert len(received) < len(body)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_access_log_counts_the_bytes_git_sent(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    access = logging.getLogger("cccatalog.access")
    seen = Records()
    level = access.level
    access.addHandler(seen)
    access.setLevel(logging.INFO)
    try:
        with big_repo(make_upstream, write_config, megabytes=3) as (server, head):
            _, body, _ = post(server.url, want_request(head))
            lines = wait_until(
                lambda: [r for r in seen.records if "git-upload-pack" in r.getMessage()],
                what="the access log line",
            )
    finally:
        access.removeHandler(seen)
        access.setLevel(level)

    sent = lines[0].__dict__["bytes"]
    cgi_head = 200  # what http-backend wrote before the body (its four headers, 165 bytes), counted as git's
    assert len(body) <= sent <= len(body) + cgi_head
