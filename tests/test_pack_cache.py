"""The pack cache: an answer made once by git and sent to every identical request, from disk.

What a client or an operator would notice: a fetch answered from the cache brings the same refs and
objects as one git answered and passes `git fsck` (git over protocol v0 and v2, libgit2, dulwich);
identical requests arriving together start one backend; the cache directory stays within its bound;
a writer killed mid-answer or a failed backend leaves nothing that is ever served; a slow reader holds
no git slot; a queued answer nobody waits for any more leaves the queue; with write on second sight,
an answer is kept only when its request comes again. Faults and attacks: test_pack_cache_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cccatalog.config import Config
from cccatalog.gitmirror.refstate import advertisement_fingerprint
from cccatalog.server.app import CatalogServer
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.fleetfixtures import gated_git, holdings, platform_fetch, upload_pack, want_request
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import (
    REAL_GIT,
    Reply,
    add_random_blobs,
    address,
    branch_of_random_data,
    git_wrapper,
    logging_git,
    processes_touching,
)
from tests.servefixtures import running_server, serve_process, synced_config
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]


@contextmanager
def serving(
    config: Config, *, backend: HttpBackend | None = None, **settings: object
) -> Iterator[CatalogServer]:
    """A server that trusts a mirror synced a moment ago at once, instead of 2 s later, and keeps an
    answer the first time it makes it (tests of write on second sight ask for it)."""
    settings.setdefault("pack_cache_second_sight", False)
    with running_server(config, backend=backend, racy_seconds=0, **settings) as server:
        yield server


def busy_upstream(make_upstream: MakeUpstream) -> Upstream:
    """Branches and annotated tags on several commits, so a shallow fetch with tags has work to do."""
    up = make_upstream("alpha")
    for i in range(4):  # history below every tip's depth 2: a shallow fetch has a boundary
        up.commit(f"early {i}")
    for i in range(6):
        up.commit(f"main {i}")
        git("tag", "-a", f"v2.{i}.0", "-m", f"release {i}", cwd=up.path)
        up.commit(f"feature {i}", branch=f"feature/{i}")
    return up


def posts(log: Path) -> int:
    return sum(" | POST | " in line for line in log.read_text().splitlines())


def entries(server: CatalogServer) -> list[Path]:
    assert server.packs is not None
    return sorted(server.packs.entries.iterdir())


def complete(reply: Reply) -> bool:
    return reply.status == 200 and reply.body.endswith(b"0000")


@pytest.mark.parametrize("protocol", [0, 2])
def test_a_fetch_answered_from_the_cache_brings_what_a_fresh_one_does_and_passes_fsck(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path, protocol: int
) -> None:
    config = synced_config(write_config({"alpha": busy_upstream(make_upstream).url}))
    wrapper, log = logging_git(tmp_path)

    with serving(config, pack_cache_mb=0) as server:
        direct = platform_fetch(f"{server.url}/git/alpha.git", tmp_path / "direct", protocol=protocol)
    with serving(config, backend=HttpBackend(git=str(wrapper))) as server:
        url = f"{server.url}/git/alpha.git"
        fresh = platform_fetch(url, tmp_path / "fresh", protocol=protocol)
        made = posts(log)
        cached = platform_fetch(url, tmp_path / "cached", protocol=protocol)
        assert server.packs is not None
        hits = server.packs.hits

    for result in (direct, fresh, cached):
        assert result.returncode == 0, result.stderr
    assert made >= 1
    assert posts(log) == made, "the repeated fetch ran git for its pack"
    assert hits >= 1
    assert holdings(tmp_path / "cached") == holdings(tmp_path / "fresh") == holdings(tmp_path / "direct")
    assert holdings(tmp_path / "cached")[2], "the fetch was not shallow: the check is blind"
    for repo in ("direct", "fresh", "cached"):
        git("fsck", "--strict", "--no-progress", cwd=tmp_path / repo)


def clone_with_pygit2(url: str, dest: Path) -> None:
    import pygit2

    pygit2.clone_repository(url, str(dest), bare=True).free()


def clone_with_dulwich(url: str, dest: Path) -> None:
    import io

    from dulwich import porcelain

    porcelain.clone(url, str(dest), bare=True, errstream=io.BytesIO()).close()


@pytest.mark.parametrize("clone", [clone_with_pygit2, clone_with_dulwich], ids=["libgit2", "dulwich"])
def test_other_clients_get_the_same_clone_from_the_cache_as_from_git(
    make_upstream: MakeUpstream,
    write_config: MakeConfig,
    tmp_path: Path,
    clone: Callable[[str, Path], None],
) -> None:
    config = synced_config(write_config({"alpha": busy_upstream(make_upstream).url}))
    wrapper, log = logging_git(tmp_path)

    with serving(config, backend=HttpBackend(git=str(wrapper))) as server:
        url = f"{server.url}/git/alpha.git"
        clone(url, tmp_path / "fresh")
        made = posts(log)
        clone(url, tmp_path / "cached")

    assert made >= 1
    assert posts(log) == made, "the second clone ran git for its pack"
    assert holdings(tmp_path / "cached") == holdings(tmp_path / "fresh")
    for repo in ("fresh", "cached"):
        git("fsck", "--strict", "--no-progress", cwd=tmp_path / repo)


def test_identical_requests_arriving_together_start_one_backend_and_get_the_same_answer(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("big")
    head = add_random_blobs(up, megabytes=4)
    config = synced_config(write_config({"big": up.url}))
    gate = gated_git(tmp_path)
    body = want_request(head)
    replies: list[Reply] = []

    with serving(config, backend=HttpBackend(git=str(gate.git))) as server:
        assert server.packs is not None
        packs = server.packs
        threads = [
            threading.Thread(target=lambda: replies.append(upload_pack(server.url, "big.git", body)))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: packs.joined == 7, 30), "the requests did not all join one answer"
        gate.open()
        for thread in threads:
            thread.join(60)
        again = upload_pack(server.url, "big.git", body)  # later: from the finished entry

    assert len(gate.lines()) == 1, gate.lines()
    assert len(replies) == 8
    assert all(complete(r) for r in replies)
    assert all(r.body == replies[0].body for r in replies)
    assert len(replies[0].body) > 4 * 1024 * 1024
    assert again.body == replies[0].body
    assert again.headers["content-length"] == str(len(again.body))
    assert (packs.made, packs.joined, packs.hits) == (1, 7, 1)


def test_the_cache_stays_within_its_bound_and_does_not_keep_an_answer_past_half_of_it(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    # eight unrelated branches, each answer ~300 KB of its own random data
    heads = [branch_of_random_data(up, f"b{i}", 300 * 1024, tmp_path) for i in range(8)]
    big = add_random_blobs(up, megabytes=1, files=1)  # ~1 MB: over half of a 1 MiB cache
    config = synced_config(write_config({"alpha": up.url}))
    wrapper, log = logging_git(tmp_path)
    bound = 1024 * 1024

    with serving(config, pack_cache_mb=1, backend=HttpBackend(git=str(wrapper))) as server:
        assert server.packs is not None
        packs = server.packs
        sizes = []
        for head in heads:
            assert complete(upload_pack(server.url, "alpha.git", want_request(head)))
            sizes.append(packs.disk_bytes())
        kept = entries(server)
        assert complete(upload_pack(server.url, "alpha.git", want_request(heads[-1])))
        hit_posts = posts(log)
        oversized = [upload_pack(server.url, "alpha.git", want_request(big)) for _ in range(2)]

    assert max(sizes) <= bound, sizes
    assert packs.evicted >= 4
    assert 2 <= len(kept) <= 3
    assert hit_posts == len(heads), "the newest entry was evicted instead of the oldest"
    assert all(complete(r) for r in oversized)
    assert min(len(r.body) for r in oversized) > bound // 2
    assert posts(log) == len(heads) + 2, "an answer too big to keep was served from disk"
    assert packs.disk_bytes() <= bound


def test_an_answer_bigger_than_the_bound_goes_to_its_slow_reader_whole_and_the_disk_stays_bounded(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    small = [up.commit(f"small {i}", branch=f"small{i}") for i in range(2)]
    big = add_random_blobs(up, megabytes=8, files=2)  # more than a 1 MiB cache and a socket's buffers
    config = synced_config(write_config({"alpha": up.url}))
    body = want_request(big)
    request = (
        "POST /git/alpha.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    bound = 1024 * 1024

    with serving(config, pack_cache_mb=1) as server:
        assert server.packs is not None
        packs = server.packs
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.settimeout(30)
            slow.connect(address(server.url))
            slow.sendall(request)
            received = slow.recv(4096)
            assert received.startswith(b"HTTP/1.1 200")
            assert wait_until(lambda: packs.bypassed == 1, 30), "the answer never went direct"
            meanwhile = upload_pack(server.url, "alpha.git", want_request(small[0]))
            disk_meanwhile = packs.disk_bytes()
            while chunk := slow.recv(1024 * 1024):
                received += chunk
        # the slow reader is gone, and its file with it: the cache keeps answers again
        again = want_request(small[1])
        assert complete(upload_pack(server.url, "alpha.git", again))
        assert wait_until(lambda: writers_done(server) and len(entries(server)) >= 1, 30)

    assert complete(meanwhile)
    assert disk_meanwhile <= bound
    data = dechunk(received.partition(b"\r\n\r\n")[2])
    assert data.endswith(b"0000")
    assert len(data) > 8 * 1024 * 1024


@pytest.mark.slow  # waits out a request timeout
def test_an_answer_from_a_backend_that_failed_is_never_kept(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    failing = git_wrapper(
        tmp_path,
        "git-failing",
        f'if [ "$1" = http-backend ] && [ "$REQUEST_METHOD" = POST ]; then "{REAL_GIT}" "$@"; exit 3; fi',
    )
    post = '[ "$1" = http-backend ] && [ "$REQUEST_METHOD" = POST ]'
    sleepy = git_wrapper(tmp_path, "git-sleepy", f"if {post}; then sleep 30; fi")
    body = want_request(up.sha("main"))

    with serving(config, backend=HttpBackend(git=str(failing))) as server:
        failed = upload_pack(server.url, "alpha.git", body)
        assert wait_until(lambda: writers_done(server), 30)
        after_failure = entries(server)
    with serving(config, request_timeout_seconds=1, backend=HttpBackend(git=str(sleepy))) as server:
        timed_out = upload_pack(server.url, "alpha.git", body)
        assert wait_until(lambda: writers_done(server), 30)
        after_timeout = entries(server)

    assert failed.status == 200  # the answer itself was whole; git's exit status says it failed
    assert after_failure == []
    assert timed_out.status == 502
    assert after_timeout == []


def writers_done(server: CatalogServer) -> bool:
    """No answer is being written: every writer has published or deleted its file."""
    assert server.packs is not None
    return not any(server.packs.tmp.iterdir())


def test_a_slow_reader_holds_no_slot_once_git_is_done(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    big = make_upstream("big")
    head = add_random_blobs(big, megabytes=24)
    alpha = make_upstream("alpha")
    config = synced_config(write_config({"big": big.url, "alpha": alpha.url}))
    body = want_request(head)
    request = (
        "POST /git/big.git/git-upload-pack HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    with serving(config, max_concurrent_upload_packs=1, max_queued_upload_packs=0) as server:
        assert server.packs is not None
        packs = server.packs
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a reader on a thin link
            slow.settimeout(30)
            slow.connect(address(server.url))
            slow.sendall(request)
            received = slow.recv(64 * 1024)
            assert received.startswith(b"HTTP/1.1 200")
            assert wait_until(lambda: len(entries(server)) == 1, 60), "the answer was never finished"
            assert server.admission.running == 0, "the slow reader still holds the only slot"

            # The one slot is free: another client's clone runs (no queue: it would be a 503 otherwise)
            other = subprocess.run(
                ["git", "clone", "-q", f"{server.url}/git/alpha.git", str(tmp_path / "other")],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

            while chunk := slow.recv(1024 * 1024):  # the slow reader catches up, to the end
                received += chunk
        again = upload_pack(server.url, "big.git", body)

    assert other.returncode == 0, other.stderr
    assert packs.made == 2  # the pack and the other clone's; the last request was a hit
    answer_head, _, payload = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in answer_head.lower()
    assert dechunk(payload) == again.body
    assert len(again.body) > 24 * 1024 * 1024


def dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end], 16)
        if size == 0:
            return bytes(out)
        out += data[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


def test_an_answer_nobody_waits_for_leaves_the_queue_and_never_runs_git(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    gate = gated_git(tmp_path)
    holder: list[Reply] = []
    depth2 = want_request(up.sha("main"), depth=2)
    depth1 = want_request(up.sha("main"), depth=1)
    request = (
        "POST /git/alpha.git/git-upload-pack HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(depth1)}\r\n\r\n"
    ).encode() + depth1

    backend = HttpBackend(git=str(gate.git))
    with serving(config, max_concurrent_upload_packs=1, backend=backend) as server:
        thread = threading.Thread(target=lambda: holder.append(upload_pack(server.url, "alpha.git", depth2)))
        thread.start()
        assert wait_until(lambda: len(gate.lines()) == 1, 30)
        with socket.create_connection(address(server.url), timeout=10) as sock:
            sock.sendall(request)
            assert wait_until(lambda: server.admission.queued == 1, 30)
        assert wait_until(lambda: server.admission.queued == 0, 30), "the abandoned answer is still queued"
        gate.open()
        thread.join(30)

    assert [r.status for r in holder] == [200]
    assert len(gate.lines()) == 1, "the abandoned request ran git"


def test_two_servers_sharing_a_cache_directory_answer_from_each_others_entries(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = synced_config(write_config({"alpha": busy_upstream(make_upstream).url}))
    wrapper, log = logging_git(tmp_path)
    backend, shared = HttpBackend(git=str(wrapper)), tmp_path / "shared-cache"

    with (
        serving(config, backend=backend, pack_cache_dir=shared) as one,
        serving(config, backend=backend, pack_cache_dir=shared) as two,
    ):
        first = platform_fetch(f"{one.url}/git/alpha.git", tmp_path / "one")
        assert wait_until(lambda: writers_done(one), 30)
        made = posts(log)
        second = platform_fetch(f"{two.url}/git/alpha.git", tmp_path / "two")
        assert two.packs is not None
        made_by_two, hits_of_two = two.packs.made, two.packs.hits

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert made >= 1
    assert (made_by_two, hits_of_two) == (0, 1), "the second server made its own pack"
    assert holdings(tmp_path / "one") == holdings(tmp_path / "two")


def test_an_unwritable_cache_directory_turns_the_cache_off_and_serving_goes_on(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be\n")

    with serving(config, pack_cache_dir=blocker / "cache") as server:
        result = platform_fetch(f"{server.url}/git/alpha.git", tmp_path / "fetched")
        packs = server.packs

    assert packs is None
    assert result.returncode == 0, result.stderr


# --- a serve process killed while it writes --------------------------------------------------------


def stalling_exec_path(tmp_path: Path, marker: Path, pidfile: Path) -> Path:
    """A `git` on PATH whose exec path holds a `git-http-backend` that sends ~200 KB of a pack, then
    stalls: serve is killed while it is writing that answer into the cache."""
    real_exec = subprocess.run(
        [REAL_GIT, "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    exec_dir, bin_dir = tmp_path / "exec", tmp_path / "fakebin"
    exec_dir.mkdir()
    bin_dir.mkdir()
    backend = exec_dir / "git-http-backend"
    backend.write_text(
        "#!/bin/sh\n"
        f'echo $$ > "{pidfile}"\n'
        'if [ "$REQUEST_METHOD" = POST ]; then\n'
        f'  "{real_exec}/git-http-backend" | {{ head -c 200000; touch "{marker}"; sleep 60; cat; }}\n'
        "  exit 0\n"
        "fi\n"
        f'exec "{real_exec}/git-http-backend"\n'
    )
    fake_git = bin_dir / "git"
    fake_git.write_text(
        f'#!/bin/sh\nif [ "$1" = --exec-path ]; then echo "{exec_dir}"; exit 0; fi\nexec "{REAL_GIT}" "$@"\n'
    )
    for script in (backend, fake_git):
        script.chmod(0o755)
    return bin_dir


@pytest.mark.slow  # a serve process killed and started again
def test_a_serve_killed_mid_write_leaves_nothing_that_is_ever_served(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("big")
    add_random_blobs(up, megabytes=2)
    path = write_config({"big": up.url})
    config = synced_config(path)
    repo = config.git.data_dir / "big.git"
    # a serve process waits out the racy window: so does the test, before it asks
    assert wait_until(lambda: advertisement_fingerprint(repo) is not None, 30)
    cache = config.state.path.parent / "pack-cache"
    marker, pidfile = tmp_path / "half-written", tmp_path / "backend.pid"
    fake = stalling_exec_path(tmp_path, marker, pidfile)
    url_env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "CCCATALOG_DISABLE_SCHEDULER": "1"}

    with serve_process(path, env=url_env) as (proc, url):
        fetch = subprocess.Popen(
            # protocol v0: its one POST is the pack (a v2 ls-refs POST would stall first)
            [
                "git",
                "-c",
                "protocol.version=0",
                "clone",
                "-q",
                "--bare",
                f"{url}/git/big.git",
                str(tmp_path / "killed"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(marker.exists, 30), "the backend never started writing"
            assert wait_until(lambda: any(p.stat().st_size > 100_000 for p in (cache / "tmp").iterdir()), 30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            fetch.kill()
            fetch.wait(10)
            with contextlib.suppress(ProcessLookupError):  # the stalled backend, orphaned by the kill
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    data_dir = config.git.data_dir.resolve()
    assert wait_until(lambda: not processes_touching(data_dir), 30), processes_touching(data_dir)
    half_written = list((cache / "tmp").iterdir())
    assert len(half_written) == 1
    assert list((cache / "entries").iterdir()) == []

    with serve_process(path) as (_proc, url):
        result = subprocess.run(
            ["git", "clone", "-q", "--bare", f"{url}/git/big.git", str(tmp_path / "after")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        swept = list((cache / "tmp").iterdir())
        # written on second sight: the same clone again is kept
        again = subprocess.run(
            ["git", "clone", "-q", "--bare", f"{url}/git/big.git", str(tmp_path / "again")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert wait_until(lambda: not list((cache / "tmp").iterdir()), 30)

    assert result.returncode == 0, result.stderr
    assert again.returncode == 0, again.stderr
    git("fsck", "--strict", "--no-progress", cwd=tmp_path / "after")
    assert git("rev-parse", "HEAD", cwd=tmp_path / "after") == up.sha("main")
    assert half_written[0] not in swept, "the dead writer's file was kept"
    assert len(list((cache / "entries").iterdir())) == 1


def test_with_second_sight_an_answer_is_kept_only_when_its_request_comes_again(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    one_off, repeated = want_request(up.sha("main"), depth=1), want_request(up.sha("main"))
    gate = gated_git(tmp_path)

    with serving(config, pack_cache_second_sight=True, backend=HttpBackend(git=str(gate.git))) as server:
        assert server.packs is not None
        packs = server.packs
        gate.open()
        first = upload_pack(server.url, "alpha.git", one_off)
        wait_until(lambda: writers_done(server), what="the pack writers to finish")
        after_one_off = entries(server)
        again = [upload_pack(server.url, "alpha.git", repeated) for _ in range(3)]
        wait_until(lambda: writers_done(server), what="the pack writers to finish")
        kept = entries(server)
        counts = (packs.made, packs.hits)
        # a burst of identical requests is its own second sight: kept the first time
        gate.gate.unlink()
        burst_body = want_request(up.sha("main"), depth=2)
        burst: list[Reply] = []
        threads = [
            threading.Thread(target=lambda: burst.append(upload_pack(server.url, "alpha.git", burst_body)))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: packs.joined == 2, what="two requests of the burst to join the first")
        gate.open()
        for thread in threads:
            thread.join(30)
        wait_until(lambda: writers_done(server), what="the pack writers to finish")
        after_burst = entries(server)

    assert complete(first)
    assert after_one_off == [], "a one-off answer was kept"
    assert all(complete(r) for r in again)
    assert again[2].body == again[1].body
    assert counts == (3, 1), "made: the one-off, then the repeated twice (first and second sight); one hit"
    assert len(kept) == 1
    assert all(complete(r) for r in burst)
    assert len(after_burst) == 2, "a burst's answer was not kept"
