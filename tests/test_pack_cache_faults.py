"""The pack cache under attack and faults, against a real `serve`: what one request sends can never
change what another identical-looking request gets; a cache that cannot write answers without the
cache; the bound holds while many answers are written at once; slow readers hold no slot and no git
process for answers the cache does not keep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cccatalog.config import Config
from cccatalog.gitmirror.http_backend import HttpBackend
from cccatalog.server.app import CatalogServer
from tests.conftest import MakeConfig
from tests.fleetfixtures import UPLOAD_HEADERS, gated_git, request_from, want_request
from tests.gitfixtures import Upstream
from tests.robustfixtures import Reply, wait_until
from tests.servefixtures import running_server, synced_config

MakeUpstream = Callable[[str], Upstream]


@contextmanager
def serving(
    config: Config, *, backend: HttpBackend | None = None, **settings: object
) -> Iterator[CatalogServer]:
    """A server that trusts a mirror synced a moment ago at once, instead of 2 s later."""
    with running_server(config, backend=backend, racy_seconds=0, **settings) as server:
        yield server


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
