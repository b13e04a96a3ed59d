"""The serving fast paths: advertisements answered from memory while the refs stay put, `GET HEAD`, and
packs relayed to the socket in chunks a client can parse.

Each test checks what a client would see: the same bytes as git's own answer, a fresh answer the moment
a sync changes a ref (never a stale one), and a pack that arrives whole.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog.gitmirror import refstate
from cccatalog.gitmirror.refstate import advertisement_fingerprint
from cccatalog.server import relay
from cccatalog.server.app import CatalogServer
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import REAL_GIT, git_wrapper, logging_git, raw_request
from tests.servefixtures import running_server, synced_config

MakeUpstream = Callable[[str], Upstream]
INFO_REFS = "/git/alpha.git/info/refs?service=git-upload-pack"
LATER = 10**10  # a `now` far past every mtime: never racy


@pytest.fixture
def mirror(make_upstream: MakeUpstream, write_config: MakeConfig) -> tuple[Upstream, Path]:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    return up, config.git.data_dir / "alpha.git"


# --- the fingerprint --------------------------------------------------------------------------------


def test_every_kind_of_ref_change_changes_the_fingerprint(mirror: tuple[Upstream, Path]) -> None:
    _, repo = mirror
    seen = [advertisement_fingerprint(repo, now=LATER)]
    changes = [
        ("update-ref", "refs/heads/new", "refs/heads/main"),  # a new loose ref
        ("update-ref", "refs/heads/new", "refs/tags/v1.0.0^{}"),  # the same loose ref, moved
        ("pack-refs", "--all"),  # loose refs folded into packed-refs
        ("update-ref", "-d", "refs/heads/new"),  # a packed ref deleted
        ("symbolic-ref", "HEAD", "refs/heads/develop"),  # the default branch
        ("config", "uploadpack.allowTipSHA1InWant", "true"),  # capabilities
        ("update-ref", "refs/heads/nested/deep/ref", "refs/heads/main"),  # a new directory
        ("update-ref", "-d", "refs/heads/nested/deep/ref"),  # and the loose ref in it gone
    ]
    for change in changes:
        git("--git-dir", str(repo), *change)
        fingerprint = advertisement_fingerprint(repo, now=LATER)
        assert fingerprint is not None
        assert fingerprint not in seen, f"{change} left the fingerprint unchanged"
        seen.append(fingerprint)


def test_a_fingerprint_is_not_trusted_while_racy_missing_or_too_big(mirror: tuple[Upstream, Path]) -> None:
    _, repo = mirror
    git("--git-dir", str(repo), "update-ref", "refs/heads/just-now", "refs/heads/main")
    assert advertisement_fingerprint(repo) is None, "changed within the racy window"
    assert advertisement_fingerprint(repo, now=LATER) is not None
    assert advertisement_fingerprint(repo.parent / "nosuch.git", now=LATER) is None

    main = git("--git-dir", str(repo), "rev-parse", "refs/heads/main")
    for i in range(refstate.MAX_LOOSE_REFS + 1):
        (repo / "refs" / "heads" / f"loose{i}").write_text(main + "\n")
    assert advertisement_fingerprint(repo, now=LATER) is None, "thousands of stats cost more than git"


# --- the advertisement cache, through a real server ---------------------------------------------------


def backend_runs(log: Path) -> int:
    return len(log.read_text().splitlines())


def test_info_refs_is_answered_from_memory_until_a_sync_changes_a_ref(
    mirror: tuple[Upstream, Path],
    write_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up, repo = mirror
    wrapper, log = logging_git(tmp_path)
    config_path = write_config({"alpha": up.url})
    config = synced_config(config_path)

    with running_server(config, racy_seconds=0, backend=HttpBackend(git=str(wrapper))) as server:
        first = raw_request(server.url, "GET", INFO_REFS)
        second = raw_request(server.url, "GET", INFO_REFS)
        v2 = raw_request(server.url, "GET", INFO_REFS, headers={"Git-Protocol": "version=2"})
        assert backend_runs(log) == 2, "the repeated v0 request started git again"
        assert first.status == second.status == 200
        assert second.body == first.body
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["cache-control"] == "no-cache, max-age=0, must-revalidate"
        assert b"version 2" in v2.body, "v2 got the v0 answer"
        assert up.sha("main").encode() in first.body

        new_head = up.commit("after the first advertisement")
        synced_config(config_path)
        assert git("--git-dir", str(repo), "rev-parse", "refs/heads/main") == new_head
        third = raw_request(server.url, "GET", INFO_REFS)
        assert new_head.encode() in third.body, "a stale advertisement after the refs changed"
        assert backend_runs(log) == 3

        # A real clone through the cached advertisement, in both protocol versions.
        raw_request(server.url, "GET", INFO_REFS)
        for version in ("0", "2"):
            dest = tmp_path / f"clone-v{version}"
            git("-c", f"protocol.version={version}", "clone", "-q", f"{server.url}/git/alpha.git", str(dest))
            assert git("rev-parse", "HEAD", cwd=dest) == new_head
        assert server.adverts.hits >= 2


def test_with_the_cache_off_every_advertisement_runs_git(
    mirror: tuple[Upstream, Path], write_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up, _ = mirror
    wrapper, log = logging_git(tmp_path)
    config = synced_config(write_config({"alpha": up.url}))
    with running_server(
        config, racy_seconds=0, advertisement_cache_mb=0, backend=HttpBackend(git=str(wrapper))
    ) as server:
        bodies = {raw_request(server.url, "GET", INFO_REFS).body for _ in range(3)}
    assert len(bodies) == 1
    assert backend_runs(log) == 3


def test_v2_ls_refs_is_kept_in_memory_per_request_but_fetches_are_not(
    mirror: tuple[Upstream, Path],
    write_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up, _ = mirror
    wrapper, log = logging_git(tmp_path)
    config = synced_config(write_config({"alpha": up.url}))

    def posts() -> int:
        return sum(" | POST | " in line for line in log.read_text().splitlines())

    # the pack cache off: what is kept in memory alone (tests/test_pack_cache.py covers the disk)
    with running_server(
        config, racy_seconds=0, pack_cache_mb=0, backend=HttpBackend(git=str(wrapper))
    ) as server:
        url = f"{server.url}/git/alpha.git"
        everything = git("-c", "protocol.version=2", "ls-remote", url)
        assert posts() == 1
        assert git("-c", "protocol.version=2", "ls-remote", url) == everything
        assert posts() == 1, "the same ls-refs started git again"
        tags = git("-c", "protocol.version=2", "ls-remote", "--tags", url)
        assert posts() == 2, "an ls-refs with other arguments was answered from another's entry"
        assert tags != everything
        assert "refs/heads/" not in tags

        for name in ("one", "two"):
            git("-c", "protocol.version=2", "clone", "-q", url, str(tmp_path / name))
        # The first clone runs its ls-refs (other arguments than ls-remote's) and its fetch; the second
        # finds its ls-refs kept, but its fetch must run git.
        assert posts() == 2 + 2 + 1


@pytest.mark.slow
def test_a_backend_past_the_request_timeout_is_cut_off_not_ended_cleanly(
    mirror: tuple[Upstream, Path], write_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up, _ = mirror
    # Answers in full, then keeps its stdout open: only the request timeout ends it.
    stalling = git_wrapper(tmp_path, "git-stall", f'"{REAL_GIT}" "$@"; exec sleep 30')
    config = synced_config(write_config({"alpha": up.url}))
    with running_server(
        config, racy_seconds=0, request_timeout_seconds=1, backend=HttpBackend(git=str(stalling))
    ) as server:
        started = time.monotonic()
        with pytest.raises(http.client.IncompleteRead):
            raw_request(server.url, "GET", INFO_REFS)
        assert time.monotonic() - started < 10
        assert server.adverts.hits == 0
        with pytest.raises(http.client.IncompleteRead):
            raw_request(server.url, "GET", INFO_REFS)  # and it was not kept as if it were whole
    assert server.adverts.hits == 0


def test_get_head_answers_the_default_branch(mirror: tuple[Upstream, Path], write_config: MakeConfig) -> None:
    up, _ = mirror
    config = synced_config(write_config({"alpha": up.url}))
    with running_server(config) as server:
        reply = raw_request(server.url, "GET", "/git/alpha.git/HEAD")
        config_file = raw_request(server.url, "GET", "/git/alpha.git/config")
    assert reply.status == 200
    assert reply.body == b"ref: refs/heads/main\n"
    assert config_file.status == 404, "HEAD working must not open other files"


# --- packs relayed to the socket -----------------------------------------------------------------


def parse_chunked(data: bytes) -> bytes:
    body, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        pos = end + 2
        if size == 0:
            assert data[pos:] == b"\r\n", "no final CRLF"
            return bytes(body)
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", f"chunk at {pos} not closed by CRLF"
        pos += size + 2


def receive_all(sock: socket.socket, into: list[bytes]) -> None:
    while data := sock.recv(1 << 20):
        into.append(data)


def test_a_relayed_stream_arrives_whole_in_well_formed_chunks(tmp_path: Path) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 12345)
    source = tmp_path / "payload"
    source.write_bytes(payload)
    # A writer that trickles, then floods: both small and full-pipe batches.
    writer = subprocess.Popen(
        ["sh", "-c", f'head -c 1000 "{source}"; sleep 0.05; tail -c +1001 "{source}"'],
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None
    server_side, client_side = socket.socketpair()
    server_side.settimeout(10)
    received: list[bytes] = []
    reader = threading.Thread(target=receive_all, args=(client_side, received))
    reader.start()

    progress = relay.Progress()
    relay.stream_pipe(writer.stdout.fileno(), server_side, chunked=True, progress=progress)
    server_side.sendall(b"\r\n0\r\n\r\n" if progress.crlf_owed else b"0\r\n\r\n")
    server_side.close()
    reader.join(10)
    writer.wait(10)

    assert progress.sent == len(payload)
    assert parse_chunked(b"".join(received)) == payload


def test_a_reader_that_stops_reading_is_given_up_on(tmp_path: Path) -> None:
    writer = subprocess.Popen(["head", "-c", str(64 * 1024 * 1024), "/dev/zero"], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    server_side, client_side = socket.socketpair()
    server_side.settimeout(0.5)
    progress = relay.Progress()
    try:
        with pytest.raises(TimeoutError):  # every send waits at most the socket timeout
            relay.stream_pipe(writer.stdout.fileno(), server_side, chunked=True, progress=progress)
    finally:
        writer.kill()
        writer.wait()
        client_side.close()
        server_side.close()
    # what did leave before the stall is counted (the access log reports it)
    assert 0 < progress.sent < 64 * 1024 * 1024


@pytest.mark.slow
def test_the_server_streams_a_clone_through_the_bridge(
    mirror: tuple[Upstream, Path], write_config: MakeConfig, tmp_path: Path
) -> None:
    up, _ = mirror
    for i in range(3):
        (up.path / f"blob{i}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    git("add", "-A", cwd=up.path)
    git("commit", "-q", "-m", "9 MB", cwd=up.path)
    config = synced_config(write_config({"alpha": up.url}))
    with running_server(config) as server:
        assert isinstance(server, CatalogServer)
        dest = tmp_path / "clone"
        git("clone", "-q", f"{server.url}/git/alpha.git", str(dest))
    assert (dest / "blob2.bin").read_bytes() == (up.path / "blob2.bin").read_bytes()
