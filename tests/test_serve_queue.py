"""serve's admission queue: requests past the git slots wait their turn instead of failing, fairly
across clients, and only a full queue or a wait past its limit is a 503.

A real server on loopback; every git backend logs `REMOTE_ADDR METHOD PATH_INFO` and then waits at a
gate the test opens, so which requests ran, and in what order, is decided by the server alone.
Clients come from different loopback addresses (127.0.0.2, 127.0.0.3, ...), which is how the server
tells them apart.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cccatalog.config import Config
from cccatalog.gitmirror.refstate import RACY_SECONDS
from cccatalog.server.admission import Admission, ClientLeft, Refused
from cccatalog.server.app import CatalogServer
from cccatalog.server.cgi import HttpBackend
from tests.conftest import MakeConfig
from tests.fleetfixtures import UP, UPLOAD_HEADERS, Gate, gated_git, request_from, want_request
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import Reply, address
from tests.servefixtures import running_server, synced_config
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]
INFO = f"/git/alpha.git/info/refs{UP}"
A, B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def alpha(make_upstream: MakeUpstream, write_config: MakeConfig) -> Config:
    return synced_config(write_config({"alpha": make_upstream("alpha").url}))


@contextmanager
def gated_server(
    config: Config, gate: Gate, *, racy_seconds: float = RACY_SECONDS, **settings: object
) -> Iterator[CatalogServer]:
    """One git slot, no caches (every request runs the gated backend); the gate opens on the way out."""
    defaults: dict[str, object] = {
        "max_concurrent_upload_packs": 1,
        "advertisement_cache_mb": 0,
        "pack_cache_mb": 0,
    }
    backend = HttpBackend(git=str(gate.git))
    settings = defaults | settings
    with running_server(config, backend=backend, racy_seconds=racy_seconds, **settings) as server:
        try:
            yield server
        finally:
            gate.open()


class Clients:
    """Requests sent on threads; `replies` in the order they were started."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.threads: list[threading.Thread] = []
        self.replies: dict[int, Reply] = {}

    def send(self, target: str, *, source: str = "127.0.0.1") -> int:
        return self._start(lambda: request_from(self.url, "GET", target, source=source, timeout=60))

    def post(self, target: str, body: bytes) -> int:
        return self._start(
            lambda: request_from(self.url, "POST", target, body=body, headers=UPLOAD_HEADERS, timeout=60)
        )

    def _start(self, call: Callable[[], Reply]) -> int:
        index = len(self.threads)

        def go() -> None:
            self.replies[index] = call()

        thread = threading.Thread(target=go)
        self.threads.append(thread)
        thread.start()
        return index

    def join(self) -> list[Reply]:
        for thread in self.threads:
            thread.join(60)
        return [self.replies[i] for i in range(len(self.threads))]


def test_requests_beyond_the_slots_wait_their_turn_and_all_succeed(alpha: Config, tmp_path: Path) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate) as server:
        clients = Clients(server.url)
        for _ in range(6):
            clients.send(INFO)
        assert wait_until(lambda: server.admission.queued == 5, 10), server.admission.queued
        assert len(gate.lines()) == 1, "only one backend may run with one slot"
        gate.open()
        replies = clients.join()

    assert [r.status for r in replies] == [200] * 6
    assert all(r.body.startswith(b"001e# service=git-upload-pack\n") for r in replies)
    assert len(gate.lines()) == 6


def test_beyond_the_queue_a_request_gets_503_with_retry_after_and_starts_no_git(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate, max_queued_upload_packs=2) as server:
        clients = Clients(server.url)
        for _ in range(3):
            clients.send(INFO)
        assert wait_until(lambda: server.admission.queued == 2, 10)

        refused = request_from(server.url, "GET", INFO)  # answered now, while the others still wait

        gate.open()
        replies = clients.join()

    assert refused.status == 503
    assert int(refused.headers["retry-after"]) > 0
    assert "queued" in str(refused.detail)
    assert [r.status for r in replies] == [200] * 3
    assert len(gate.lines()) == 3, "the refused request started a backend"


@pytest.mark.slow  # waits out the queue's limit
def test_a_request_that_waited_past_the_limit_gets_503_and_never_runs_git(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate, max_queue_wait_seconds=1) as server:
        clients = Clients(server.url)
        clients.send(INFO)
        assert wait_until(lambda: len(gate.lines()) == 1, 10)

        late = request_from(server.url, "GET", "/git/alpha.git/HEAD")

        gate.open()
        [first] = clients.join()

    assert late.status == 503
    assert int(late.headers["retry-after"]) > 0
    assert "waited" in str(late.detail)
    assert first.status == 200
    assert [line.split()[-1] for line in gate.lines()] == ["/alpha.git/info/refs"]


def test_a_queued_client_that_disconnects_leaves_the_queue_and_never_runs_git(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate) as server:
        clients = Clients(server.url)
        clients.send(INFO)
        assert wait_until(lambda: len(gate.lines()) == 1, 10)
        with socket.create_connection(address(server.url), timeout=10) as sock:
            sock.sendall(b"GET /git/alpha.git/HEAD HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wait_until(lambda: server.admission.queued == 1, 10)
        assert wait_until(lambda: server.admission.queued == 0, 10), "the departed client is still queued"
        assert server.admission.left == 1

        gate.open()
        [first] = clients.join()
        after = request_from(server.url, "GET", "/git/alpha.git/HEAD")

    assert first.status == 200
    assert after.status == 200, "the slot was not given back"
    paths = [line.split()[-1] for line in gate.lines()]
    assert paths == ["/alpha.git/info/refs", "/alpha.git/HEAD"], "the departed request ran git"


def test_the_queue_and_the_clients_that_left_it_are_on_the_metrics_page(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate) as server:
        clients = Clients(server.url)
        for _ in range(3):
            clients.send(INFO)
        assert wait_until(lambda: server.admission.queued == 2, 10)
        with socket.create_connection(address(server.url), timeout=10) as sock:
            sock.sendall(b"GET /git/alpha.git/HEAD HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wait_until(lambda: server.admission.queued == 3, 10)
        assert wait_until(lambda: server.admission.left == 1, 10)
        page = request_from(server.url, "GET", "/metrics").body.decode()
        gate.open()
        clients.join()

    assert "\ncccatalog_upload_packs_queued 2.0\n" in page
    assert "\ncccatalog_upload_packs_left_queue_total 1.0\n" in page


def test_one_clients_burst_of_20_does_not_starve_another_clients_single_request(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate) as server:
        clients = Clients(server.url)
        clients.send(INFO, source=A)
        assert wait_until(lambda: len(gate.lines()) == 1, 10)
        for _ in range(20):
            clients.send(INFO, source=A)
        assert wait_until(lambda: server.admission.queued == 20, 20)
        clients.send(INFO, source=B)
        assert wait_until(lambda: server.admission.queued == 21, 10)

        gate.open()
        replies = clients.join()

    assert [r.status for r in replies] == [200] * 22
    order = [line.split()[0] for line in gate.lines()]
    assert order.count(A) == 21
    # first come, first served would run B's request last (22nd); in turns it runs right after A's next
    assert order.index(B) <= 2, order


def test_a_full_queue_makes_room_for_another_client_by_refusing_the_busiest_clients_newest(
    alpha: Config, tmp_path: Path
) -> None:
    gate = gated_git(tmp_path)
    with gated_server(alpha, gate, max_queued_upload_packs=2) as server:
        clients = Clients(server.url)
        clients.send(INFO, source=A)
        assert wait_until(lambda: len(gate.lines()) == 1, 10)
        clients.send(INFO, source=A)
        assert wait_until(lambda: server.admission.queued == 1, 10)
        newest = clients.send(INFO, source=A)
        assert wait_until(lambda: server.admission.queued == 2, 10)
        other = clients.send(INFO, source=B)
        assert wait_until(lambda: newest in clients.replies, 10), "A's newest request was not pushed out"

        gate.open()
        replies = clients.join()

    assert replies[newest].status == 503
    assert "this client" in str(replies[newest].detail)
    assert replies[other].status == 200
    assert [r.status for i, r in enumerate(replies) if i != newest] == [200] * 3
    assert [line.split()[0] for line in gate.lines()] == [A, A, B]


def test_advertisements_kept_in_memory_never_queue(alpha: Config, tmp_path: Path) -> None:
    head = git("--git-dir", str(alpha.git.data_dir / "alpha.git"), "rev-parse", "HEAD")
    gate = gated_git(tmp_path)
    gate.open()
    # racy_seconds 0: the sync just happened; do not wait it out
    with gated_server(alpha, gate, advertisement_cache_mb=32, racy_seconds=0) as server:
        kept = request_from(server.url, "GET", INFO)  # runs git once, then kept in memory
        gate.gate.unlink()  # from here on every backend waits at the gate
        clients = Clients(server.url)
        clients.post("/git/alpha.git/git-upload-pack", want_request(head))
        clients.post("/git/alpha.git/git-upload-pack", want_request(head, depth=1))
        assert wait_until(lambda: server.admission.queued == 1, 10)

        answers = [request_from(server.url, "GET", INFO) for _ in range(3)]
        queued = server.admission.queued

        gate.open()
        packs = clients.join()

    assert [r.status for r in answers] == [200] * 3
    assert all(r.body == kept.body for r in answers)
    assert queued == 1, "an advertisement from memory took a place in the queue"
    assert [r.status for r in packs] == [200, 200]


# --- the controller alone ------------------------------------------------------------------------------


def test_the_controller_refuses_at_once_without_a_queue_and_hands_freed_slots_over_in_turns() -> None:
    admission = Admission(1, max_queued=0, max_wait=5)
    held = admission.acquire("a")
    with pytest.raises(Refused):
        admission.acquire("b")
    held.release()
    held.release()  # a second release gives nothing back twice
    assert admission.running == 0

    queued = Admission(1, max_queued=4, max_wait=5, poll_interval=0.01)
    first = queued.acquire("a")
    order: list[str] = []
    gone = threading.Event()

    def wait(client: str, *, leaves: bool = False) -> None:
        try:
            with queued.acquire(client, gone=gone.is_set if leaves else None):
                order.append(client)
        except ClientLeft:
            order.append(f"{client} left")

    threads = [threading.Thread(target=wait, args=(c,)) for c in ("a", "a", "b")]
    threads.append(threading.Thread(target=wait, args=("c",), kwargs={"leaves": True}))
    for i, thread in enumerate(threads):
        thread.start()
        assert wait_until(lambda n=i + 1: queued.queued == n, 5)  # type: ignore[misc]
    gone.set()
    assert wait_until(lambda: queued.queued == 3, 5)
    first.release()
    for thread in threads:
        thread.join(5)

    assert order == ["c left", "a", "b", "a"]
    assert (queued.running, queued.queued) == (0, 0)
