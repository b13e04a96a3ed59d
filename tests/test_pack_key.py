"""The pack cache's key: requests that differ only in what names the client share one answer, and
requests that differ in anything that changes the answer never do.

Proved against git itself: requests that normalise equal get byte-identical answers from upload-pack,
and a fleet of clients of different git versions (`GIT_USER_AGENT`) shares one pack.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog.server.pack_key import UPLOAD_PACK_REQUEST, normalise, request_key
from tests.conftest import MakeConfig
from tests.fleetfixtures import UPLOAD_HEADERS, holdings, pack_data, request_from
from tests.gitfixtures import Upstream, git
from tests.robustfixtures import pkt_line
from tests.servefixtures import running_server, synced_config
from tests.test_pack_cache import busy_upstream

MakeUpstream = Callable[[str], Upstream]
OID = "a" * 40


def v0(caps: str, *, wants: tuple[str, ...] = (OID,)) -> bytes:
    lines = [pkt_line(f"want {wants[0]} {caps}\n".encode())]
    lines += [pkt_line(f"want {w}\n".encode()) for w in wants[1:]]
    return b"".join(lines) + b"0000" + pkt_line(b"done\n")


def v2(*head: str, args: tuple[str, ...] = (f"want {OID}", "done")) -> bytes:
    return (
        b"".join(pkt_line(f"{line}\n".encode()) for line in ("command=fetch", *head))
        + b"0001"
        + b"".join(pkt_line(f"{line}\n".encode()) for line in args)
        + b"0000"
    )


SAME = [
    (
        "v0 agent",
        v0("side-band-64k ofs-delta agent=git/2.39.5"),
        v0("side-band-64k ofs-delta agent=git/2.43.0"),
        0,
    ),
    ("v0 order", v0("ofs-delta side-band-64k agent=x"), v0("side-band-64k agent=y ofs-delta"), 0),
    ("v0 no agent", v0("ofs-delta agent=x"), v0("ofs-delta"), 0),
    (
        "v2 agent",
        v2("agent=git/2.39.5", "object-format=sha1"),
        v2("agent=git/2.43.0", "object-format=sha1"),
        2,
    ),
    ("v2 order", v2("object-format=sha1", "agent=a"), v2("agent=b", "object-format=sha1"), 2),
]
DIFFERENT = [
    ("v0 caps", v0("side-band-64k ofs-delta"), v0("side-band-64k"), 0),
    ("v0 wants order", v0("ofs-delta", wants=(OID, "b" * 40)), v0("ofs-delta", wants=("b" * 40, OID)), 0),
    ("v2 args", v2("agent=a", args=("thin-pack", f"want {OID}", "done")), v2("agent=a"), 2),
    ("v2 arg order", v2(args=("no-progress", "thin-pack")), v2(args=("thin-pack", "no-progress")), 2),
    ("v2 object format", v2("object-format=sha1"), v2("object-format=sha256"), 2),
    # git 2.39 answers a session-id it did not advertise with a fatal error: never the pack's key
    ("v2 session id", v2("agent=a", "session-id=1"), v2("agent=a"), 2),
    ("v0 session id", v0("ofs-delta session-id=1"), v0("ofs-delta"), 0),
    ("v2 two agents", v2("agent=a", "agent=b"), v2("agent=a"), 2),
]


def key(
    body: bytes, *, protocol: int, encoding: str = "", content_type: str = UPLOAD_PACK_REQUEST
) -> str | None:
    return request_key(
        Path("/srv/alpha.git"),
        (("HEAD", 1, 2, 3),),
        git_protocol="version=2" if protocol == 2 else "",
        content_type=content_type,
        content_encoding=encoding,
        body=io.BytesIO(body),
        max_inflated=1024 * 1024,
    )


@pytest.mark.parametrize(("case", "one", "two", "protocol"), SAME, ids=[c[0] for c in SAME])
def test_requests_that_differ_only_in_what_names_the_client_share_a_key(
    case: str, one: bytes, two: bytes, protocol: int
) -> None:
    assert one != two
    assert key(one, protocol=protocol) == key(two, protocol=protocol)
    assert key(gzip.compress(one, mtime=1), protocol=protocol, encoding="gzip") == key(two, protocol=protocol)


@pytest.mark.parametrize(("case", "one", "two", "protocol"), DIFFERENT, ids=[c[0] for c in DIFFERENT])
def test_requests_that_ask_for_different_things_never_share_a_key(
    case: str, one: bytes, two: bytes, protocol: int
) -> None:
    assert key(one, protocol=protocol) != key(two, protocol=protocol)


def test_what_git_would_read_differently_is_keyed_on_its_raw_bytes() -> None:
    loose = b"+032" + v0("ofs-delta")[4:]  # not four hex digits: git refuses it, so must the key
    assert normalise(loose, v2=False) is None
    assert key(loose, protocol=0) != key(v0("ofs-delta"), protocol=0)
    bomb = gzip.compress(b"0" * (2 * 1024 * 1024))  # inflates past the cap: keyed as sent, not inflated
    assert key(bomb, protocol=0, encoding="gzip") != key(b"0" * (2 * 1024 * 1024), protocol=0)
    assert key(v0("ofs-delta"), protocol=0, content_type="text/plain") is None


# --- against git -------------------------------------------------------------------------------------


def fetch_request(up: Upstream, *head: str, protocol: int) -> bytes:
    """A shallow fetch of every branch and tag as git sends it, with no progress (whose text depends
    on timing), from a client announcing `head`."""
    refs = git("for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags", cwd=up.path).split()
    if protocol == 2:
        args = ("thin-pack", "no-progress", "ofs-delta", "deepen 2", *(f"want {r}" for r in refs), "done")
        return v2(*head, args=args)
    caps = " ".join(
        ("multi_ack_detailed", "no-done", "side-band-64k", "thin-pack", "no-progress", "ofs-delta", *head)
    )
    return (
        v0(caps, wants=tuple(refs))[: -len(b"0000" + pkt_line(b"done\n"))]
        + pkt_line(b"deepen 2\n")
        + b"0000"
        + pkt_line(b"done\n")
    )


@pytest.mark.parametrize("protocol", [0, 2])
def test_requests_that_normalise_equal_get_byte_identical_answers_from_upload_pack(
    make_upstream: MakeUpstream, write_config: MakeConfig, protocol: int
) -> None:
    up = busy_upstream(make_upstream)
    config = synced_config(write_config({"alpha": up.url}))
    old = fetch_request(up, "agent=git/2.39.5", "object-format=sha1", protocol=protocol)
    new = fetch_request(up, "object-format=sha1", "agent=git/2.43.0", protocol=protocol)
    headers = {**UPLOAD_HEADERS, **({"Git-Protocol": "version=2"} if protocol == 2 else {})}
    assert old != new
    assert normalise(old, v2=protocol == 2) == normalise(new, v2=protocol == 2)

    def post(url: str, body: bytes) -> bytes:
        reply = request_from(url, "POST", "/git/alpha.git/git-upload-pack", body=body, headers=headers)
        assert reply.status == 200, reply.body[:200]
        return reply.body

    with running_server(config, racy_seconds=0, pack_cache_mb=0) as server:
        from_git = [post(server.url, old), post(server.url, new)]
    with running_server(config, racy_seconds=0, pack_cache_second_sight=False) as server:
        assert server.packs is not None
        from_cache = [post(server.url, old), post(server.url, new)]
        # the second is a hit, or joins the first when its writer has not yet filed it (the answer is
        # out before the entry is renamed into place): either way git ran once
        made, shared = server.packs.made, server.packs.hits + server.packs.joined

    assert pack_data(from_git[0]).startswith(b"PACK")
    assert pack_data(from_git[0]) == pack_data(from_git[1]), "upload-pack answered the two differently"
    assert pack_data(from_cache[0]) == pack_data(from_git[0])
    assert from_cache[1] == from_cache[0], "the second request was not answered from the cache"
    assert (made, shared) == (1, 1)


def test_a_fleet_of_three_git_versions_shares_one_pack_and_one_advertisement(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = synced_config(write_config({"alpha": busy_upstream(make_upstream).url}))
    agents = ["git/2.39.5", "git/2.43.0", "git/2.47.1-fleet"]

    with running_server(config, racy_seconds=0, pack_cache_second_sight=False) as server:
        assert server.packs is not None
        for i, agent in enumerate(agents):
            dest = tmp_path / f"runner{i}"
            git("init", "-q", str(dest))
            result = subprocess.run(
                [
                    "git",
                    "-C",
                    str(dest),
                    "fetch",
                    "-q",
                    "--depth=2",
                    "--tags",
                    f"{server.url}/git/alpha.git",
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
                env={**os.environ, "GIT_USER_AGENT": agent},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
        made, hits, advert_misses = server.packs.made, server.packs.hits, server.adverts.misses

    assert (made, hits) == (1, 2), "clients of different versions did not share the pack"
    # the first client's capability advertisement and ls-refs; nothing after it
    assert advert_misses == 2, "clients of different versions did not share the ref advertisement"
    assert holdings(tmp_path / "runner0") == holdings(tmp_path / "runner1") == holdings(tmp_path / "runner2")
