"""The relay of an answer from git to the client without the pack cache: past its first MiB, the
bytes move from git's pipe to the socket in the kernel (`splice(2)`), chunked on HTTP/1.1 and as is on
HTTP/1.0. What a client notices: a clone that is whole and passes fsck, the same pack either way.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import MakeConfig
from tests.fleetfixtures import pack_data, want_request
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import add_random_blobs, address
from tests.servefixtures import running_server, synced_config
from tests.test_pack_cache import dechunk

MakeUpstream = Callable[[str], Upstream]


def post_raw(url: str, body: bytes, *, version: str) -> bytes:
    """The answer's head and body as they came off the socket."""
    request = (
        f"POST /git/big.git/git-upload-pack {version}\r\nHost: t\r\nConnection: close\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    received = bytearray()
    with socket.create_connection(address(url), timeout=30) as sock:
        sock.sendall(request)
        while chunk := sock.recv(1024 * 1024):
            received += chunk
    return bytes(received)


def test_a_big_answer_relayed_from_git_is_whole_chunked_or_not(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("big")
    head = add_random_blobs(up, megabytes=6, files=2)
    config = synced_config(write_config({"big": up.url}))
    body = want_request(head)

    with running_server(config, pack_cache_mb=0) as server:
        chunked = post_raw(server.url, body, version="HTTP/1.1")
        plain = post_raw(server.url, body, version="HTTP/1.0")
        clone = subprocess.run(
            ["git", "clone", "-q", "--bare", f"{server.url}/git/big.git", str(tmp_path / "clone")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    chunked_head, _, chunked_body = chunked.partition(b"\r\n\r\n")
    plain_head, _, plain_body = plain.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in chunked_head.lower()
    assert b"transfer-encoding" not in plain_head.lower()
    answer = dechunk(chunked_body)
    assert answer.endswith(b"0000")
    assert len(pack_data(answer)) > 6 * 1024 * 1024
    assert pack_data(answer) == pack_data(plain_body)
    assert clone.returncode == 0, clone.stderr
    git("fsck", "--strict", "--no-progress", cwd=tmp_path / "clone")
    assert git("rev-parse", "HEAD", cwd=tmp_path / "clone") == head
