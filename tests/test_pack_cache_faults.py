"""The pack cache under attack and faults, against a real `serve`: what one request sends can never
change what another identical-looking request gets; a cache that cannot write answers without the
cache; the bound holds while many answers are written at once; slow readers hold no slot and no git
process for answers the cache does not keep.
"""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from functools import partial
from pathlib import Path

import pytest

from cccatalog.gitmirror.refstate import advertisement_fingerprint
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.fleetfixtures import UPLOAD_HEADERS, gated_git, pack_data, request_from, upload_pack, want_request
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import (
    REAL_GIT,
    Reply,
    add_random_blobs,
    address,
    branch_of_random_data,
    git_wrapper,
)
from tests.servefixtures import running_server, serve_process, synced_config
from tests.test_pack_cache import dechunk, serving
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]


def complete(reply: Reply) -> bool:
    return reply.status == 200 and reply.body.endswith(b"0000")


def in_thread(replies: list[Reply], call: Callable[[], Reply]) -> threading.Thread:
    thread = threading.Thread(target=lambda: replies.append(call()))
    thread.start()
    return thread


# --- 1. the key covers everything that changes the answer -----------------------------------------


def test_a_request_with_a_wrong_content_type_never_answers_the_identical_correct_ones(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    gate = gated_git(tmp_path)
    body = want_request(up.sha("main"))
    hostile = {**UPLOAD_HEADERS, "Content-Type": "text/plain; attacker was here"}
    bad: list[Reply] = []
    good: list[Reply] = []

    with serving(config, backend=HttpBackend(git=str(gate.git))) as server:
        assert server.packs is not None
        packs = server.packs

        def post(headers: dict[str, str]) -> Reply:
            target = "/git/alpha.git/git-upload-pack"
            return request_from(server.url, "POST", target, body=body, headers=headers)

        threads = [in_thread(bad, lambda: post(hostile))]
        assert wait_until(lambda: len(gate.lines()) == 1, 10)  # the hostile answer is being made
        threads += [in_thread(good, lambda: post(UPLOAD_HEADERS)) for _ in range(3)]
        # the victims either start git themselves or join the hostile answer (the bug)
        assert wait_until(lambda: len(gate.lines()) == 2 or packs.joined > 0, 10)
        gate.open()
        for thread in threads:
            thread.join(30)

    assert [r.status for r in bad] == [415]
    assert len(good) == 3
    assert all(complete(r) for r in good), [(r.status, r.body[:80]) for r in good]
    assert not any(b"attacker" in r.body for r in good)


# --- 2. a cache that cannot write answers without it ----------------------------------------------


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', tmp],
            capture_output=True,
            check=False,
        )
    return probe.returncode == 0


@pytest.mark.slow  # a serve process of its own, in a mount namespace
def test_a_full_cache_disk_degrades_to_answering_without_the_cache_never_to_a_cut_pack(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    if not can_mount_tmpfs():
        pytest.skip("cannot mount a size-limited tmpfs here (unshare -m)")
    up = make_upstream("big")
    add_random_blobs(up, megabytes=3)
    path = write_config({"big": up.url})
    config = synced_config(path)
    assert wait_until(lambda: advertisement_fingerprint(config.git.data_dir / "big.git") is not None, 10)
    cache = config.state.path.parent / "pack-cache"
    cache.mkdir()
    full_disk = ("unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(cache))

    with serve_process(path, wrapper=full_disk) as (_proc, url):
        clones = [
            subprocess.Popen(
                ["git", "clone", "-q", "--bare", f"{url}/git/big.git", str(tmp_path / f"clone{i}")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        results = [(c.wait(120), c.stderr.read() if c.stderr else "") for c in clones]

    assert [rc for rc, _ in results] == [0, 0, 0], results
    for i in range(3):
        git("fsck", "--strict", "--no-progress", cwd=tmp_path / f"clone{i}")
        assert git("rev-parse", "HEAD", cwd=tmp_path / f"clone{i}") == up.sha("main")


# --- 3. the bound holds while many answers are written at once ------------------------------------


def test_answers_written_at_the_same_time_stay_within_the_bound(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    heads = [branch_of_random_data(up, f"b{i}", 400 * 1024, tmp_path) for i in range(6)]
    config = synced_config(write_config({"alpha": up.url}))
    bodies = [want_request(head) for head in heads]
    with serving(config, pack_cache_mb=0) as server:
        expected = [upload_pack(server.url, "alpha.git", body).body for body in bodies]
    gate = tmp_path / "gate"
    # every backend waits at the gate, then holds its answer open for a moment after git is done:
    # all six are on the disk at once, if the cache lets them
    lingering = git_wrapper(
        tmp_path,
        "git-lingering",
        f'if [ "$1" = http-backend ]; then\n'
        f'  while [ ! -e "{gate}" ]; do sleep 0.02; done\n'
        f'  "{REAL_GIT}" "$@"; code=$?; sleep 1.5; exit $code\n'
        "fi",
    )
    bound = 1024 * 1024
    replies: list[Reply] = []
    peak = [0]

    with serving(config, pack_cache_mb=1, backend=HttpBackend(git=str(lingering))) as server:
        assert server.packs is not None
        packs = server.packs
        threads = [in_thread(replies, partial(upload_pack, server.url, "alpha.git", b)) for b in bodies]
        gate.touch()
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], on_disk(packs.directory))
            time.sleep(0.01)

    assert peak[0] <= bound, f"{peak[0]} bytes on disk against a bound of {bound}"
    assert all(complete(r) for r in replies)
    assert sorted(pack_data(r.body) for r in replies) == sorted(pack_data(body) for body in expected)


def on_disk(directory: Path) -> int:
    """What the files under `directory` take on disk now (allocated blocks, not names, and not the
    cache's own directories, which hold names only)."""
    total = 0
    for path in directory.rglob("*"):
        with suppress(OSError):
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


# --- 4. slow readers hold no slot and no git process, kept or not ---------------------------------


@pytest.mark.parametrize("kept", ["racy", "oversize"])
def test_slow_readers_of_answers_the_cache_does_not_keep_leave_the_slots_to_others(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path, kept: str
) -> None:
    big = make_upstream("big")
    head = add_random_blobs(big, megabytes=8, files=2)
    alpha = make_upstream("alpha")
    config = synced_config(write_config({"big": big.url, "alpha": alpha.url}))
    body = want_request(head)
    # "racy": every fingerprint is too fresh to trust, as just after a sync; "oversize": the answer
    # is over half the bound, so it is never kept
    racy_seconds, bound = (3600.0, 64) if kept == "racy" else (0.0, 12)
    slow_readers = 2 if kept == "racy" else 1
    request = (
        "POST /git/big.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    with running_server(
        config,
        racy_seconds=racy_seconds,
        pack_cache_mb=bound,
        max_concurrent_upload_packs=slow_readers,
        max_queue_wait_seconds=30,  # generous on a loaded machine; before the fix the slots never free
    ) as server:
        assert server.packs is not None
        if kept == "oversize":  # once whole, so the cache knows it is too big to keep
            assert complete(upload_pack(server.url, "big.git", body))
            assert list(server.packs.entries.iterdir()) == []
            # its room comes back when the server's side of that request is done, which can be a
            # moment after the client has the last byte: the slow readers below start on a free bound
            packs = server.packs
            wait_until(lambda: packs.counted_bytes() == 0, 10, what="the whole answer's room to come back")
        with ExitStack() as stack:
            slow: list[bytearray] = []
            sockets: list[socket.socket] = []
            for _ in range(slow_readers):
                sock = stack.enter_context(socket.socket())
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a reader on a thin link
                sock.settimeout(60)
                sock.connect(address(server.url))
                sock.sendall(request)
                slow.append(bytearray(sock.recv(16 * 1024)))
                assert slow[-1].startswith(b"HTTP/1.1 200"), bytes(slow[-1][:200])
            assert wait_until(lambda: server.backend.running == 0, 60), "git still runs for a slow reader"
            assert server.admission.running == 0, "a slow reader still holds a slot"
            others = [
                subprocess.Popen(
                    ["git", "clone", "-q", "--bare", f"{server.url}/git/alpha.git", str(tmp_path / f"o{i}")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(4)
            ]
            results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in others]
            for sock, so_far in zip(sockets, slow, strict=True):
                while chunk := sock.recv(1024 * 1024):  # the slow readers catch up, to the end
                    so_far.extend(chunk)

    assert [rc for rc, _ in results] == [0] * 4, results
    for received in slow:
        answer_head, _, payload = bytes(received).partition(b"\r\n\r\n")
        data = dechunk(payload) if b"chunked" in answer_head.lower() else payload
        assert data.endswith(b"0000")
        assert len(data) > 8 * 1024 * 1024
