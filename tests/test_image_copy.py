"""Copying images between real registries (distribution 2.8: a token-auth source, an htpasswd
destination, an anonymous one) and OCI image layouts: digests kept, shared blobs skipped or mounted,
a wrong source blob refused, credentials kept to their origin, SIGKILL at several points, and
layouts that skopeo and umoci read."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cccatalog.credentials import BasicCredentials
from cccatalog.errors import RegistryError
from cccatalog.oci.auth import RegistryAuth
from cccatalog.oci.cache import sha256_digest
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.copy import CopyProgress, RegistrySource, RegistryTarget, copy_between, copy_image
from cccatalog.oci.layout import LayoutSource, LayoutTarget, read_index
from cccatalog.oci.reference import Repository, parse_reference
from tests.imagefixtures import OtherOriginFront, layer, push_build, tag_is_whole
from tests.registry import (
    ALL_MANIFESTS,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    PASSWORD,
    USERNAME,
    RunningRegistry,
    push_image,
    registry_client,
    skopeo_inspect_config,
)

ROBOT = RegistryAuth(basic=BasicCredentials(USERNAME, PASSWORD))


def unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def repo(host: str, path: str) -> Repository:
    found, _ = parse_reference(f"{host}/{path}")
    return found


def robot_client() -> RegistryClient:
    return RegistryClient(auth_for=lambda host: ROBOT)


def test_copy_keeps_every_digest_of_a_multi_platform_index_with_its_attestation(
    registry_token: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    pushed = push_image(
        registry_token, src, "main-1111111-2222222", created="2026-01-02T00:00:00Z", kind="oci-index"
    )
    seen: list[CopyProgress] = []
    with robot_client() as source, robot_client() as target:
        result = copy_image(
            source,
            repo(registry_token.host, src),
            pushed.tag,
            target,
            repo(registry_basic.host, dst),
            pushed.tag,
            progress=seen.append,
        )
    assert result.digest == pushed.digest
    assert (result.blobs_copied, result.blobs_skipped, result.blobs_mounted) == (6, 0, 0)
    assert seen[-1].blobs_done == seen[-1].blobs_total == 6
    assert seen[-1].bytes_done == seen[-1].bytes_total == result.bytes_copied
    assert tag_is_whole(registry_basic, dst, pushed.tag) is True
    with registry_client(registry_basic) as client:
        head = client.head(f"/v2/{dst}/manifests/{pushed.tag}", headers={"Accept": pushed.media_type})
        assert head.headers["Docker-Content-Digest"] == pushed.digest
        for digest in pushed.platform_digests.values():  # every platform and the attestation
            found = client.head(f"/v2/{dst}/manifests/{digest}", headers={"Accept": ALL_MANIFESTS})
            assert found.status_code == 200
    # a second opinion: skopeo reads the arm64 image at the destination as it reads the source
    mirrored = skopeo_inspect_config(
        registry_basic, f"{dst}:{pushed.tag}", creds=registry_basic.creds, arch="arm64"
    )
    original = skopeo_inspect_config(
        registry_token, f"{src}:{pushed.tag}", creds=registry_token.creds, arch="arm64"
    )
    assert mirrored == original


def test_a_second_build_copies_only_its_new_blobs_and_a_copy_again_nothing(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    first = push_build(registry_anon, src, "main-aaaaaaa-1111111", base=["os", "python"], own="v1")
    second = push_build(registry_anon, src, "main-bbbbbbb-1111111", base=["os", "python"], own="v2")
    with RegistryClient() as source, robot_client() as target:
        source_repo, target_repo = repo(registry_anon.host, src), repo(registry_basic.host, dst)
        cold = copy_image(source, source_repo, first.tag, target, target_repo, first.tag)
        update = copy_image(source, source_repo, second.tag, target, target_repo, second.tag)
        again = copy_image(source, source_repo, second.tag, target, target_repo, second.tag)
    assert cold.blobs_copied == len(first.blobs) == 8
    # per platform: the two base layers are there; its own layer and config are new
    assert (update.blobs_copied, update.blobs_skipped) == (4, 4)
    assert update.bytes_copied < cold.bytes_copied
    assert again.digest == second.digest
    assert (again.blobs_copied, again.blobs_skipped, again.bytes_copied) == (0, 0, 0)
    assert tag_is_whole(registry_basic, dst, second.tag) is True


def test_blobs_are_mounted_across_repositories_of_one_registry(registry_basic: RunningRegistry) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_basic, src, "v1.0.0", base=["os"], own="v1")
    with robot_client() as client:
        result = copy_image(
            client, repo(registry_basic.host, src), "v1.0.0", client, repo(registry_basic.host, dst), "v1.0.0"
        )
        assert client.counts["PUT upload"] == 0  # not a byte of a blob went over the wire
    assert (result.blobs_mounted, result.blobs_copied, result.digest) == (len(build.blobs), 0, build.digest)
    assert tag_is_whole(registry_basic, dst, "v1.0.0") is True


def test_chunked_uploads_and_a_digest_reference_keep_the_digest(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_anon, src, "main-ccccccc-1111111", base=["big"], own="v1", size=300_000)
    with RegistryClient() as source, robot_client() as target:
        result = copy_between(
            RegistrySource(source, repo(registry_anon.host, src)),
            build.digest,
            RegistryTarget(target, repo(registry_basic.host, dst), chunk_size=64 * 1024),
            "pinned",
        )
        assert target.counts["PATCH upload"] >= 2 * 5  # each 300 kB layer in 64 kB pieces
    assert result.digest == build.digest
    assert tag_is_whole(registry_basic, dst, "pinned") is True


@pytest.mark.security
def test_a_source_blob_that_does_not_match_its_digest_is_refused_and_nothing_is_tagged(
    registry_basic: RunningRegistry,
) -> None:
    """distribution never serves wrong content, so the lying source is a MockTransport."""
    good, config = layer("honest"), b'{"architecture": "amd64", "os": "linux"}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(good), "size": len(good)}],
        }
    ).encode()
    bad = bytearray(good)
    bad[-1] ^= 1  # the last byte: a stream cut before it would look like a whole blob

    def lying(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=manifest, headers={"Content-Type": OCI_MANIFEST})
        if request.url.path.endswith(sha256_digest(good)):
            return httpx.Response(200, content=bytes(bad))
        return httpx.Response(200, content=config)

    dst = unique("mirror/cc")
    source = RegistryClient(http=httpx.Client(transport=httpx.MockTransport(lying)))
    with (
        source,
        robot_client() as target,
        pytest.raises(RegistryError, match="does not match its digest") as caught,
    ):
        copy_image(
            source,
            repo("registry.example.com", "team/cc"),
            "v1",
            target,
            repo(registry_basic.host, dst),
            "v1",
        )
    assert "registry.example.com/team/cc:v1" in str(caught.value)
    assert tag_is_whole(registry_basic, dst, "v1") is None
    with registry_client(registry_basic) as client:
        assert client.head(f"/v2/{dst}/blobs/{sha256_digest(good)}").status_code == 404


@pytest.mark.security
def test_credentials_never_reach_the_origin_blobs_are_redirected_to(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    """Blob downloads answered with a 307 to another origin, upload Locations on another origin:
    the source's token goes to the source alone, the destination's to the destination alone."""
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_anon, src, "v2.0.0", base=["os"], own="v2")
    source_front = OtherOriginFront(registry_anon, token="source-canary-token")
    target_front = OtherOriginFront(registry_basic, token="target-canary-token")
    try:
        bearer = {source_front.host: "source-canary-token", target_front.host: "target-canary-token"}
        with RegistryClient(auth_for=lambda h: RegistryAuth(bearer=bearer.get(h))) as client:
            result = copy_image(
                client, repo(source_front.host, src), "v2.0.0", client, repo(target_front.host, dst), "v2.0.0"
            )
    finally:
        source_front.stop()
        target_front.stop()
    assert result.digest == build.digest
    assert result.blobs_copied == len(build.blobs)
    assert tag_is_whole(registry_basic, dst, "v2.0.0") is True
    downloads = [s for s in source_front.seen if s.origin == "storage"]
    uploads = [s for s in target_front.seen if s.origin == "storage"]
    assert len(downloads) == len(uploads) == len(build.blobs)
    assert all(s.authorization is None for s in downloads + uploads)
    assert {s.authorization for s in source_front.seen if s.origin == "front"} <= {
        None,
        "Bearer source-canary-token",
    }
    assert {s.authorization for s in target_front.seen if s.origin == "front"} <= {
        None,
        "Bearer target-canary-token",
    }


_KILLED_COPY = textwrap.dedent("""
    import os, signal, sys
    from cccatalog.credentials import BasicCredentials
    from cccatalog.oci.auth import RegistryAuth
    from cccatalog.oci.client import RegistryClient
    from cccatalog.oci.copy import copy_image
    from cccatalog.oci.reference import parse_reference
    src, dst, tag, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    robot = RegistryAuth(basic=BasicCredentials(sys.argv[5], sys.argv[6]))
    def progress(p):
        if p.blobs_done >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    with RegistryClient() as s, RegistryClient(auth_for=lambda h: robot) as t:
        copy_image(s, parse_reference(src)[0], tag, t, parse_reference(dst)[0], tag,
                   workers=1, progress=progress)
""")


@pytest.mark.security
@pytest.mark.parametrize("after", [1, 4, 8], ids=["first-blob", "half", "every-blob-no-manifest"])
def test_a_copy_killed_anywhere_leaves_no_broken_tag_and_the_next_run_completes(
    after: int, registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_anon, src, "main-ddddddd-1111111", base=["os", "python"], own="v1")
    argv = [
        sys.executable,
        "-c",
        _KILLED_COPY,
        f"{registry_anon.host}/{src}",
        f"{registry_basic.host}/{dst}",
        build.tag,
        str(after),
        USERNAME,
        PASSWORD,
    ]
    killed = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert tag_is_whole(registry_basic, dst, build.tag) is None  # the tag is the last thing written
    with RegistryClient() as source, robot_client() as target:
        result = copy_image(
            source,
            repo(registry_anon.host, src),
            build.tag,
            target,
            repo(registry_basic.host, dst),
            build.tag,
        )
    assert result.digest == build.digest
    assert result.blobs_skipped == after  # what the killed run finished stays done
    assert tag_is_whole(registry_basic, dst, build.tag) is True


def test_a_layout_holds_an_index_that_skopeo_and_umoci_read_and_pushes_back_unchanged(
    tmp_path: Path, registry_anon: RunningRegistry
) -> None:
    src, back = unique("team/cc"), unique("back/cc")
    build = push_build(registry_anon, src, "v3.0.0", base=["os"], own="v3")
    layout = tmp_path / "layout"
    with RegistryClient() as client:
        written = copy_between(
            RegistrySource(client, repo(registry_anon.host, src)), "v3.0.0", LayoutTarget(layout), "cc-v3"
        )
        pushed = copy_between(
            LayoutSource(layout), "cc-v3", RegistryTarget(client, repo(registry_anon.host, back)), "v3.0.0"
        )
    assert written.digest == pushed.digest == build.digest
    assert [(e.ref_name, e.digest) for e in read_index(layout)] == [("cc-v3", build.digest)]
    assert tag_is_whole(registry_anon, back, "v3.0.0") is True
    inspected = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:cc-v3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert sha256_digest(inspected.stdout.encode()) == build.digest
    listed = subprocess.run(
        ["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True, timeout=30, check=True
    )
    assert listed.stdout.split() == ["cc-v3"]
    # umoci resolves a name to one manifest (an index of two platforms is "ambiguous" to it): a
    # single-platform build in the same layout, read through its config and layers
    single = push_build(registry_anon, src, "v3.0.1", base=["os"], own="v3.1", platforms=("amd64",))
    with RegistryClient() as client:
        copy_between(
            RegistrySource(client, repo(registry_anon.host, src)), "v3.0.1", LayoutTarget(layout), "cc-v3.1"
        )
    listed = subprocess.run(
        ["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True, timeout=30, check=True
    )
    assert sorted(listed.stdout.split()) == ["cc-v3", "cc-v3.1"]
    stat = subprocess.run(
        ["umoci", "stat", "--json", "--image", f"{layout}:cc-v3.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "history" in json.loads(stat.stdout)  # it read the manifest and the config through the index
    assert single.digest == json.loads((layout / "index.json").read_text())["manifests"][-1]["digest"]


def test_a_layout_without_the_blobs_its_reader_holds_completes_only_there(
    tmp_path: Path, registry_anon: RunningRegistry
) -> None:
    src, site, empty = unique("team/cc"), unique("site/cc"), unique("empty/cc")
    base = push_build(registry_anon, src, "v1", base=["os"], own="v1")
    update = push_build(registry_anon, src, "v2", base=["os"], own="v2")
    with RegistryClient() as client:
        copy_image(
            client,
            repo(registry_anon.host, src),
            "v1",
            RegistryClient(),
            repo(registry_anon.host, site),
            "v1",
        )
        layout = LayoutTarget(tmp_path / "layout", present=base.blobs)
        written = copy_between(RegistrySource(client, repo(registry_anon.host, src)), "v2", layout, "v2")
        carried = {p.name for p in (tmp_path / "layout" / "blobs" / "sha256").iterdir()}
        assert written.blobs_copied == len(update.blobs - base.blobs) == 4
        pushed = copy_between(
            LayoutSource(tmp_path / "layout"),
            "v2",
            RegistryTarget(client, repo(registry_anon.host, site)),
            "v2",
        )
        assert pushed.digest == update.digest
        with pytest.raises(RegistryError, match="is not in the layout"):
            copy_between(
                LayoutSource(tmp_path / "layout"),
                "v2",
                RegistryTarget(client, repo(registry_anon.host, empty)),
                "v2",
            )
    assert len(carried) == 4 + 3  # the new blobs, the two platform manifests and the index
    assert tag_is_whole(registry_anon, site, "v2") is True
    assert tag_is_whole(registry_anon, empty, "v2") is None


@pytest.mark.security
def test_writes_ask_for_push_and_a_mount_for_pull_on_the_repository_it_mounts_from(
    registry_token: RunningRegistry,
) -> None:
    assert registry_token.token_server is not None
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_token, src, "v1.2.3", base=["os"], own="v1")
    registry_token.token_server.clear()
    with robot_client() as client:
        result = copy_image(
            client, repo(registry_token.host, src), "v1.2.3", client, repo(registry_token.host, dst), "v1.2.3"
        )
    assert result.blobs_mounted == len(build.blobs)  # the token allowed pulling from the source
    scopes = [" ".join(r.query["scope"]) for r in registry_token.token_server.mints]
    assert f"repository:{dst}:pull,push repository:{src}:pull" in scopes
    granted = {g for r in registry_token.token_server.mints for g in r.granted}
    assert ("repository", dst, ("pull", "push")) in granted


def test_upload_locations_relative_or_absolute_are_followed_chunk_by_chunk() -> None:
    """distribution answers absolute Locations; other registries answer relative ones (a real
    registry cannot be made to, hence a MockTransport)."""
    blob = layer("chunks", 10_000)
    digest = sha256_digest(blob)
    received = bytearray()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/team/cc/blobs/uploads/u1?_state=a"})
        if request.method == "PATCH":
            received.extend(request.content)
            step = len(seen)
            return httpx.Response(202, headers={"Location": f"u1?_state={step}"})  # relative to the path
        assert request.url.params["digest"] == digest
        return httpx.Response(201)

    target_repo = repo("registry.example.com", "team/cc")
    with RegistryClient(http=httpx.Client(transport=httpx.MockTransport(handler))) as client:
        upload = client.mount_or_start_upload(target_repo, digest, mount_from=None)
        assert upload == "https://registry.example.com/v2/team/cc/blobs/uploads/u1?_state=a"
        client.upload_blob(target_repo, upload, digest, len(blob), iter([blob]), chunk_size=4096)
    assert bytes(received) == blob
    assert seen == [
        "POST /v2/team/cc/blobs/uploads/",
        *["PATCH /v2/team/cc/blobs/uploads/u1"] * 3,
        "PUT /v2/team/cc/blobs/uploads/u1",
    ]


def test_a_declined_mount_uploads_into_the_session_the_registry_started(
    registry_anon: RunningRegistry,
) -> None:
    src, dst, elsewhere = unique("team/cc"), unique("mirror/cc"), unique("empty/cc")
    build = push_build(registry_anon, src, "v4", base=["os"], own="v4")
    with RegistryClient() as client:
        target = RegistryTarget(
            client, repo(registry_anon.host, dst), mount_from=repo(registry_anon.host, elsewhere)
        )
        result = copy_between(RegistrySource(client, repo(registry_anon.host, src)), "v4", target, "v4")
        # one POST per blob: the declined mount's, whose upload session took the bytes
        assert client.counts["POST upload"] == len(build.blobs)
    assert (result.blobs_copied, result.blobs_mounted, result.digest) == (len(build.blobs), 0, build.digest)
    assert tag_is_whole(registry_anon, dst, "v4") is True


_MEASURED_COPY = textwrap.dedent("""
    import os, sys
    from cccatalog.credentials import BasicCredentials
    from cccatalog.oci.auth import RegistryAuth
    from cccatalog.oci.client import RegistryClient
    from cccatalog.oci.copy import copy_image
    from cccatalog.oci.reference import parse_reference
    from tests.securityfixtures import rss_kib
    src, dst, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    robot = RegistryAuth(basic=BasicCredentials(sys.argv[4], sys.argv[5]))
    with RegistryClient() as s, RegistryClient(auth_for=lambda h: robot) as t:
        s.list_tags(parse_reference(src)[0])  # connections, TLS contexts, imports: all before the mark
        before = rss_kib(os.getpid())
        result = copy_image(s, parse_reference(src)[0], tag, t, parse_reference(dst)[0], tag)
    print(rss_kib(os.getpid()) - before, result.bytes_copied)
""")


@pytest.mark.slow
def test_memory_stays_flat_however_big_the_blob(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    """A 48 MB layer crosses in 1 MB chunks: the copying process grows by a few of them, not by the blob."""
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_anon, src, "big", base=[], own="big", platforms=("amd64",), size=48_000_000)
    source, target = f"{registry_anon.host}/{src}", f"{registry_basic.host}/{dst}"
    argv = [sys.executable, "-c", _MEASURED_COPY, source, target, build.tag, USERNAME, PASSWORD]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr
    grown_kib, copied = (int(n) for n in done.stdout.split())
    assert copied > 48_000_000  # the layer crossed through this process, not mounted
    assert grown_kib < 16 * 1024, f"the copy grew the process by {grown_kib} KiB for a 48 MB blob"
    assert tag_is_whole(registry_basic, dst, build.tag) is True


def test_a_docker_v2_manifest_keeps_its_media_type_and_digest(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    pushed = push_image(registry_anon, src, "v0.9.0", created="2025-06-01T00:00:00Z", kind="docker-v2")
    with RegistryClient() as source, robot_client() as target:
        result = copy_image(
            source, repo(registry_anon.host, src), "v0.9.0", target, repo(registry_basic.host, dst), "v0.9.0"
        )
    assert result.digest == pushed.digest
    with registry_client(registry_basic) as client:
        got = client.get(f"/v2/{dst}/manifests/v0.9.0", headers={"Accept": ALL_MANIFESTS})
    assert (
        got.headers["Content-Type"]
        == pushed.media_type
        == "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert sha256_digest(got.content) == pushed.digest


def test_images_copied_at_once_on_a_fresh_client_all_get_through_basic_auth(
    registry_anon: RunningRegistry, registry_basic: RunningRegistry
) -> None:
    """The requests on their way when the first 401 teaches the client that the host wants Basic
    are answered 401 too, and must be retried with the credentials, not refused."""
    names = [unique("team/cc") for _ in range(4)]
    builds = [push_build(registry_anon, name, "v5", base=["os"], own=name) for name in names]

    def copy(n: int) -> str:
        to = repo(registry_basic.host, f"mirror/{names[n]}")
        return copy_image(source, repo(registry_anon.host, names[n]), "v5", target, to, "v5").digest

    with RegistryClient() as source, robot_client() as target, ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(copy, range(4)))
    assert digests == [b.digest for b in builds]
    assert all(tag_is_whole(registry_basic, f"mirror/{name}", "v5") for name in names)


def test_a_refused_manifest_names_the_registrys_error_code(registry_basic: RunningRegistry) -> None:
    """A bare "HTTP 400" says nothing; the registry's own code says which of several 400s it was."""
    missing = "sha256:" + "0" * 64
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": missing, "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": missing, "size": 2048}],
        }
    ).encode()
    with robot_client() as client, pytest.raises(RegistryError) as refused:
        client.put_manifest(repo(registry_basic.host, unique("team/cc")), "v1", manifest, OCI_MANIFEST)

    assert refused.value.status == 400
    assert "MANIFEST_BLOB_UNKNOWN" in str(refused.value), str(refused.value)


class ForgetsOneBlob:
    """The target as a registry that loses one repository's link to a blob after acknowledging it
    (what distribution did under concurrent pushes of the same blobs): the link file is removed
    from its storage just before the first manifest goes out."""

    def __init__(self, inner: RegistryTarget, link: Path) -> None:
        self.inner = inner
        self.link = link
        self.forgotten = False

    @property
    def name(self) -> str:
        return self.inner.name

    def find_manifest(self, reference: str) -> str | None:
        return self.inner.find_manifest(reference)

    def has_blob(self, digest: str) -> bool:
        return self.inner.has_blob(digest)

    def mount_blob(self, digest: str) -> bool:
        return self.inner.mount_blob(digest)

    def put_blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        self.inner.put_blob(digest, size, chunks)

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> None:
        if not self.forgotten:
            self.link.unlink()
            self.forgotten = True
        self.inner.put_manifest(reference, body, media_type)


def test_a_blob_the_registry_forgot_is_sent_again_and_the_manifest_retried_once(
    registry_basic: RunningRegistry, registry_token: RunningRegistry
) -> None:
    src, dst = unique("team/cc"), unique("mirror/cc")
    build = push_build(registry_token, src, "v1.0.0", base=["os"], own="v1")
    forgotten = sorted(build.blobs)[0]
    link = (
        (registry_basic.root / "storage/docker/registry/v2/repositories" / dst / "_layers/sha256")
        / forgotten.removeprefix("sha256:")
        / "link"
    )
    with robot_client() as client:
        target = ForgetsOneBlob(RegistryTarget(client, repo(registry_basic.host, dst)), link)
        result = copy_between(
            RegistrySource(client, repo(registry_token.host, src)), "v1.0.0", target, "v1.0.0"
        )

    assert target.forgotten
    assert link.exists()  # sent again
    assert result.digest == build.digest
    assert tag_is_whole(registry_basic, dst, "v1.0.0") is True
