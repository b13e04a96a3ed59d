"""`serve` under hostile, chatty, slow, departing and plentiful clients: a real server on loopback, real git.

Each test states what an operator or a user of the mirror would notice: a refusal that spawned nothing,
a clone that did not stall, a 503 with Retry-After, no git process left behind, a reload that took
effect, a 413, a closed idle socket, a shutdown that let a clone finish, an access-log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.config import Config, load_config
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import (
    REAL_GIT,
    Reply,
    add_random_blobs,
    address,
    git_wrapper,
    logging_git,
    pkt_line,
    pkt_lines,
    processes_touching,
    raw_request,
    read_reply,
)
from tests.servefixtures import running_server, serve_process, synced_config, wait_for_stderr
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MakeUpstream = Callable[[str], Upstream]
UP = "?service=git-upload-pack"


def info_refs(base_url: str, slug: str) -> Reply:
    return raw_request(base_url, "GET", f"/git/{slug}/info/refs{UP}")


def ls_remote(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "ls-remote", url], capture_output=True, text=True, timeout=30, check=False)


def clone(url: str, dest: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "clone", "-q", *args, url, str(dest)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alpha_and_ghost(make_upstream: MakeUpstream, write_config: MakeConfig) -> tuple[Config, Upstream]:
    """alpha is mirrored; ghost is configured but its mirror was never made."""
    up = make_upstream("alpha")
    synced_config(write_config({"alpha": up.url}))
    config = load_config(
        write_config({"alpha": up.url, "ghost": "file:///nonexistent/ghost"}, name="served.yaml")
    )
    return config, up


def big_repo(
    make_upstream: MakeUpstream, write_config: MakeConfig, *, megabytes: int
) -> tuple[Path, Config, str]:
    up = make_upstream("big")
    head = add_random_blobs(up, megabytes=megabytes)
    path = write_config({"big": up.url})
    return path, synced_config(path), head


# --- refusals ----------------------------------------------------------------------------------------

HOSTILE = [
    ("GET", "/git/alpha.git/info/refs?service=git-receive-pack", 403),
    ("POST", "/git/alpha.git/git-receive-pack", 403),
    ("GET", "/git/alpha.git/objects/info/packs", 404),
    ("GET", "/git/alpha.git/config", 404),
    ("GET", "/git/alpha.git/info/refs", 403),  # no service: the dumb protocol
    ("GET", f"/git/alpha.git/info/refs{UP}&service=git-receive-pack", 403),
    ("GET", "/git/alpha.git/HEAD/../config", 404),
    ("GET", f"/git/../alpha.git/info/refs{UP}", 404),
    ("GET", f"/git/%2e%2e/alpha.git/info/refs{UP}", 404),
    ("GET", f"/git/alpha%2egit/info/refs{UP}", 404),
    ("GET", "//git/alpha.git/config", 404),
    ("GET", f"//git/../alpha.git/info/refs{UP}", 404),
    ("GET", f"/git/alpha.git//info/refs{UP}", 404),
    ("GET", f"/git/-x/info/refs{UP}", 404),  # invalid slug
    ("GET", f"/git/nosuch.git/info/refs{UP}", 404),  # unknown slug
    ("GET", f"/git/ghost.git/info/refs{UP}", 404),  # configured, mirror never made
    ("GET", f"/git/stray.git/info/refs{UP}", 404),  # a mirror on disk that the config does not list
    ("GET", "/git/alpha.git/git-upload-pack", 405),
    ("PUT", f"/git/alpha.git/info/refs{UP}", 405),
    ("PUT", "/git/alpha.git/git-upload-pack", 405),
    ("DELETE", "/git/alpha.git/HEAD", 405),
    ("DELETE", f"/git/alpha.git/info/refs{UP}", 405),
]


def test_refused_requests_answer_json_errors_and_spawn_no_git_process(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config, up = alpha_and_ghost(make_upstream, write_config)
    git("clone", "-q", "--bare", str(up.path), str(config.git.data_dir / "stray.git"))
    wrapper, argv_log = logging_git(tmp_path)

    with running_server(config, backend=HttpBackend(git=str(wrapper))) as server:
        wrong: list[str] = []
        for method, target, status in HOSTILE:
            body = b"0000" if method in ("POST", "PUT") else None
            reply = raw_request(server.url, method, target, body=body)
            detail = json.loads(reply.body).get("detail") if reply.body.startswith(b"{") else None
            if reply.status != status or not isinstance(detail, str) or not detail:
                wrong.append(f"{method} {target}: {reply.status} {reply.body[:80]!r}")
        assert wrong == []
        assert argv_log.read_text() == "", "a refused request started git"

        # The wrapper does run for a request that is allowed; a leading `//` is collapsed by http.server
        # into the canonical path, so it reaches the same (allowed) repository and nothing else.
        assert info_refs(server.url, "alpha.git").status == 200
        assert raw_request(server.url, "GET", f"//git/alpha.git/info/refs{UP}").status == 200
    # Two requests: the backend ran for the first, and for the second unless it was answered from the
    # advertisement cache. Either way it ran for nothing but the allowed route.
    assert argv_log.read_text().splitlines() in (
        ["http-backend | GET | /alpha.git/info/refs"] * n for n in (1, 2)
    )


def test_unsupported_methods_get_a_json_error(make_upstream: MakeUpstream, write_config: MakeConfig) -> None:
    config, _ = alpha_and_ghost(make_upstream, write_config)
    with running_server(config) as server:
        for method in ("PATCH", "OPTIONS"):
            reply = raw_request(server.url, method, "/git/alpha.git/HEAD")
            assert reply.status in (404, 405, 501)
            assert reply.headers["content-type"] == "application/json"
            assert reply.detail


# --- backends that misbehave, and too many of them ---------------------------------------------------


def test_a_backend_flooding_stderr_does_not_stall_a_clone(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    chatty = git_wrapper(
        tmp_path,
        "git-chatty",
        'if [ "$1" = http-backend ]; then\n'
        "  head -c 2000000 /dev/zero | tr '\\0' x >&2\n"
        '  yes "warning: a very chatty backend" | head -n 30000 >&2\n'
        "fi",
    )
    with running_server(config, backend=HttpBackend(git=str(chatty))) as server:
        result = clone(f"{server.url}/git/alpha.git", tmp_path / "clone")

    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "HEAD", cwd=tmp_path / "clone") == up.sha("main")


def test_with_no_queue_git_requests_beyond_the_concurrency_cap_get_503_with_retry_after(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    started = tmp_path / "started.log"
    slow = git_wrapper(
        tmp_path, "git-slow", f'if [ "$1" = http-backend ]; then echo start >> "{started}"; sleep 2; fi'
    )
    first: list[Reply] = []

    backend = HttpBackend(git=str(slow))
    with running_server(
        config, max_concurrent_upload_packs=1, max_queued_upload_packs=0, backend=backend
    ) as server:
        holder = threading.Thread(target=lambda: first.append(info_refs(server.url, "alpha.git")))
        holder.start()
        assert wait_until(started.exists, 10), "the first request never reached the backend"

        second = info_refs(server.url, "alpha.git")
        health = raw_request(server.url, "GET", "/healthz")
        holder.join(15)

    assert second.status == 503
    assert int(second.headers["retry-after"]) > 0
    assert second.headers["content-type"] == "application/json"
    assert second.detail
    assert started.read_text() == "start\n", "the refused request started a backend"
    assert health.status == 200, "health checks must not queue behind git slots"
    assert [r.status for r in first] == [200]
    assert first[0].body.startswith(b"001e# service=git-upload-pack\n")


def test_a_client_leaving_mid_pack_leaves_no_git_process_and_frees_its_slot(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    _, config, head = big_repo(make_upstream, write_config, megabytes=30)
    data_dir = config.git.data_dir.resolve()

    with running_server(config, max_concurrent_upload_packs=1) as server:
        advert = pkt_lines(info_refs(server.url, "big.git").body)
        want = advert[2][:40].decode()  # after "# service=..." and a flush: "<sha> HEAD\0caps"
        assert want == head
        body = pkt_line(f"want {want} side-band-64k\n".encode()) + b"0000" + pkt_line(b"done\n")
        request = (
            "POST /git/big.git/git-upload-pack HTTP/1.1\r\n"
            "Host: test\r\n"
            "Content-Type: application/x-git-upload-pack-request\r\n"
            "Accept: application/x-git-upload-pack-result\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

        with socket.create_connection(address(server.url), timeout=10) as sock:
            sock.sendall(request)
            received = b""
            while len(received) < 64 * 1024:
                chunk = sock.recv(65536)
                assert chunk, "the server closed before sending the pack"
                received += chunk
            assert received.startswith(b"HTTP/1.1 200")
            assert processes_touching(data_dir), "no backend seen while streaming: the check is blind"

        assert wait_until(lambda: not processes_touching(data_dir), 5), processes_touching(data_dir)
        assert info_refs(server.url, "big.git").status == 200, "the departed client kept its slot"


# --- reload ------------------------------------------------------------------------------------------


def two_repos(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A synced config serving alpha and beta; returns (path, both repos, alpha only)."""
    both = {"alpha": make_upstream("alpha").url, "beta": make_upstream("beta").url}
    path = write_config(both)
    synced_config(path)
    return path, both, {"alpha": both["alpha"]}


def assert_only_alpha_served(url: str) -> None:
    assert info_refs(url, "alpha.git").status == 200
    gone = info_refs(url, "beta.git")
    assert gone.status == 404
    assert "beta" in str(gone.detail)
    listed = ls_remote(f"{url}/git/beta")
    assert listed.returncode != 0
    assert "not found" in listed.stderr
    assert ls_remote(f"{url}/git/alpha").returncode == 0


def test_sighup_stops_serving_a_repo_removed_from_the_config(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path, _, alpha_only = two_repos(make_upstream, write_config)
    new_text = write_config(alpha_only, name="next.yaml").read_text()

    with serve_process(path) as (proc, url):
        assert info_refs(url, "beta.git").status == 200
        # Same inode, size and mtime as before: only the signal can make the server notice.
        before = path.stat()
        padding = before.st_size - len(new_text) - 1
        path.write_text(new_text + "#" * padding + "\n")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )
        assert info_refs(url, "beta.git").status == 200

        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: info_refs(url, "beta.git").status == 404, 5, interval=0.2)
        assert_only_alpha_served(url)


def test_a_changed_config_file_takes_effect_without_a_signal(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path, _, alpha_only = two_repos(make_upstream, write_config)

    with serve_process(path) as (_proc, url):
        assert info_refs(url, "beta.git").status == 200
        write_config(alpha_only)
        assert wait_until(lambda: info_refs(url, "beta.git").status == 404, 6, interval=0.25)
        assert_only_alpha_served(url)


def test_an_invalid_config_is_not_applied_and_the_server_stays_up(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path, _, alpha_only = two_repos(make_upstream, write_config)

    with serve_process(path) as (proc, url):
        path.write_text("git:\n  enabled: true\n  data_dir: [not, a, path]\nsurprise: 1\n")
        proc.send_signal(signal.SIGHUP)
        # The reload was tried and refused (the server says so in /metrics): nothing else changed.
        assert wait_until(
            lambda: "cccatalog_config_last_reload_successful 0.0" in httpx.get(f"{url}/metrics").text, 10
        )
        assert proc.poll() is None
        assert info_refs(url, "alpha.git").status == 200
        assert info_refs(url, "beta.git").status == 200

        write_config(alpha_only)  # fixing the file is picked up
        assert wait_until(lambda: info_refs(url, "beta.git").status == 404, 6, interval=0.25)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)

    assert "keeping the previous config" in stderr
    assert "surprise" in stderr


# --- request limits ----------------------------------------------------------------------------------


def post_upload_pack(base_url: str, head: bytes, payload: bytes) -> Reply:
    """Send a POST head, then `payload` from another thread while the answer is read (as git does)."""
    with socket.create_connection(address(base_url), timeout=10) as sock:
        sock.sendall(
            b"POST /git/alpha.git/git-upload-pack HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\n" + head + b"\r\n"
        )

        def send() -> None:
            with contextlib.suppress(OSError):  # the server answered and stopped reading: the point
                sock.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return read_reply(sock)
        finally:
            sender.join(10)


def test_request_bodies_over_the_cap_get_413_before_git_starts(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    wrapper, argv_log = logging_git(tmp_path)
    two_mib = 2 * 1024 * 1024
    chunk = b"0" * 65536

    with running_server(config, max_request_body_mb=1, backend=HttpBackend(git=str(wrapper))) as server:
        by_length = post_upload_pack(server.url, b"Content-Length: %d\r\n" % two_mib, b"0" * two_mib)
        chunked = post_upload_pack(
            server.url,
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n%s\r\n" % (len(chunk), chunk) * 32 + b"0\r\n\r\n",
        )

    for reply in (by_length, chunked):
        assert reply.status == 413
        assert "1 MiB" in str(reply.detail)
    assert argv_log.read_text() == ""


def test_idle_connections_are_closed_after_the_idle_timeout(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))

    with running_server(config, idle_timeout_seconds=1) as server:
        with socket.create_connection(address(server.url), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert time.monotonic() - started < 3

        with socket.create_connection(address(server.url), timeout=10) as kept_alive:
            kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            resp = b""
            while not resp.endswith(b"}"):
                resp += kept_alive.recv(4096)
            assert resp.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert kept_alive.recv(1) == b""
            assert time.monotonic() - started < 3


def trickle_until_cut_off(sock: socket.socket, *, seconds: float) -> bool:
    """Send one byte every 0.3 s; True once the server has closed the connection."""
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            sock.sendall(b"a")
            time.sleep(0.3)
    except OSError:
        return True
    return False


def test_a_client_trickling_its_request_head_is_cut_off(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))

    with (
        running_server(config, idle_timeout_seconds=1, request_timeout_seconds=2) as server,
        socket.create_connection(address(server.url), timeout=10) as slow,
    ):
        slow.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        assert trickle_until_cut_off(slow, seconds=4), "still connected after 4 s of one byte per 0.3 s"


# --- the process: shutdown, access log, health, memory -----------------------------------------------


def slow_post_git(tmp_path: Path, seconds: float) -> tuple[dict[str, str], Path]:
    """Environment for a serve process whose git http-backend POSTs first log, then sleep.

    serve runs the backend found through `git --exec-path`, so the `git` first on PATH points that at
    a directory whose `git-http-backend` is the slow one.
    """
    started = tmp_path / "posts.log"
    exec_dir = tmp_path / "libexec"
    exec_dir.mkdir()
    real_backend = Path(subprocess.check_output([REAL_GIT, "--exec-path"], text=True).strip())
    backend = exec_dir / "git-http-backend"
    backend.write_text(
        f'#!/bin/sh\nif [ "$REQUEST_METHOD" = POST ]; then echo post >> "{started}"; sleep {seconds}; fi\n'
        f'exec "{real_backend / "git-http-backend"}"\n'
    )
    backend.chmod(0o755)
    wrapper = git_wrapper(tmp_path, "git", f'if [ "$1" = --exec-path ]; then echo "{exec_dir}"; exit 0; fi')
    return {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}, started


def test_sigterm_lets_an_in_flight_clone_finish_then_exits_0(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    path, _config, head = big_repo(make_upstream, write_config, megabytes=20)
    env, posts = slow_post_git(tmp_path, 1.5)

    with serve_process(path, env=env) as (proc, url):
        cloning = subprocess.Popen(
            ["git", "-c", "protocol.version=0", "clone", "-q", f"{url}/git/big.git", str(tmp_path / "c")],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert wait_until(posts.exists, 15), "the clone never asked for its pack"
        proc.send_signal(signal.SIGTERM)

        _, clone_err = cloning.communicate(timeout=60)
        assert cloning.returncode == 0, clone_err
        assert proc.wait(15) == 0
    assert git("rev-parse", "HEAD", cwd=tmp_path / "c") == head
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address(url), timeout=2).close()


def test_connections_during_the_shutdown_grace_period_are_not_left_hanging(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    path = write_config({"alpha": up.url})
    synced_config(path)
    env, posts = slow_post_git(tmp_path, 4)

    with serve_process(path, env=env) as (proc, url):
        cloning = subprocess.Popen(
            ["git", "clone", "-q", f"{url}/git/alpha.git", str(tmp_path / "c")],
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(posts.exists, 15)
            proc.send_signal(signal.SIGTERM)
            # in the grace period for certain: the server says so when it begins it
            wait_for_stderr(proc, "finishing in-flight requests")
            # Refused outright, or answered: either lets a load balancer or client go elsewhere now.
            try:
                with socket.create_connection(address(url), timeout=1) as late:
                    late.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                    assert late.recv(64).startswith(b"HTTP/1.1 ")
            except ConnectionRefusedError:
                pass
        finally:
            cloning.wait(30)


def test_access_log_has_one_line_per_request_with_status_bytes_and_duration(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    path = write_config({"alpha": up.url})
    synced_config(path)

    with serve_process(path) as (proc, url):
        assert raw_request(url, "GET", "/healthz?probe=access").status == 200
        assert info_refs(url, "alpha.git").status == 200
        assert raw_request(url, "GET", "/nowhere").status == 404
        assert raw_request(url, "POST", "/git/alpha.git/git-receive-pack", body=b"0000").status == 403
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)

    expected = [
        # a query value is logged only for the parameters routes read (service, ref, ...)
        r'127\.0\.0\.1 "GET /healthz\?probe=\*\*\*" 200 16 \d+\.\d+s',
        r'127\.0\.0\.1 "GET /git/alpha\.git/info/refs\?service=git-upload-pack" 200 [1-9]\d* \d+\.\d+s',
        r'127\.0\.0\.1 "GET /nowhere" 404 \d+ \d+\.\d+s',
        r'127\.0\.0\.1 "POST /git/alpha\.git/git-receive-pack" 403 \d+ \d+\.\d+s',
    ]
    for pattern in expected:
        assert len(re.findall(pattern, stderr)) == 1, (pattern, stderr)


def test_health_and_readiness_report_servable_repos(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config, _ = alpha_and_ghost(make_upstream, write_config)

    with running_server(config) as server:
        health = raw_request(server.url, "GET", "/healthz")
        ready = raw_request(server.url, "GET", "/readyz")
        unknown = raw_request(server.url, "GET", "/api/v2/nothing")

    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
    assert ready.status == 200
    assert json.loads(ready.body) == {"status": "ok", "repos_configured": 2, "repos_servable": 1}
    assert unknown.status == 404
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.detail


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def test_serving_a_30_mb_pack_keeps_server_memory_flat(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    path, _config, head = big_repo(make_upstream, write_config, megabytes=30)

    with serve_process(path) as (proc, url):
        assert info_refs(url, "big.git").status == 200  # warm: threads, imports, first backend
        before = peak_rss_kib(proc.pid)
        result = clone(f"{url}/git/big.git", tmp_path / "c")
        after = peak_rss_kib(proc.pid)

    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "HEAD", cwd=tmp_path / "c") == head
    assert after - before < 10 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB for a 30 MB pack"
