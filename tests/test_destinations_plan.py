"""Which builds a destination receives and where each lands: table-driven tests of pure functions."""

from __future__ import annotations

import pytest

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.config import Destination, DestinationAuth, MirrorFilter
from cccatalog.destinations.plan import exists_url, plan, qualifies, source_ref, target_for, xray_request

REGISTRY = "ghcr.io/org/rw-cli"
DIGEST = "sha256:" + "ab" * 32


def row(
    ref: str,
    *,
    ref_type: str = "branch",
    latest: bool = False,
    stable: bool = False,
    digest: str | None = None,
    active: bool = True,
    registry: str | None = REGISTRY,
) -> ImageRefRecord:
    return ImageRefRecord(
        slug="rw-cli",
        ref=ref,
        ref_type=ref_type,
        image_registry=registry,
        image_tag=f"{ref}-1234567-abcdef0",
        image_digest=digest,
        commit_hash=None,
        rt_revision=None,
        image_built_at=None,
        built_at_source=None,
        is_latest=latest,
        is_prerelease=ref_type != "tag",
        is_active=active,
        is_stable=stable,
    )


REFS = [
    row("main", latest=True),
    row("feature-x"),
    row("pr-12"),
    row("v1.2.0", ref_type="tag", stable=True),
    row("v1.1.0", ref_type="tag"),
    row("1.0", ref_type="tag"),
    row("release", ref_type="tag"),
    row("old", active=False),
]


def only(**rules: object) -> MirrorFilter:
    """A filter selecting nothing but what `rules` turn on."""
    off: dict[str, object] = {"include_pointers": (), "include_branches": (), "include_semver_tags": False}
    return MirrorFilter(**{**off, **rules})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        (MirrorFilter(), ["main", "v1.2.0", "v1.1.0", "1.0"]),  # the predecessor's defaults
        (only(include_pointers=("latest",)), ["main"]),
        (only(include_pointers=("stable",)), ["v1.2.0"]),
        (only(include_branches=("feature-x",)), ["feature-x"]),
        (only(include_pr_refs=True), ["pr-12"]),
        (only(include_semver_tags=True), ["v1.2.0", "v1.1.0", "1.0"]),
        (only(include_branches=("old",)), []),  # inactive
        (only(), []),
    ],
)
def test_a_ref_qualifies_by_pointer_branch_semver_tag_or_pr_name(
    mirror: MirrorFilter, expected: list[str]
) -> None:
    assert [r.ref for r in qualifies(REFS, mirror)] == expected


def test_stable_without_a_flag_is_the_highest_release_as_the_catalog_says() -> None:
    refs = [row("main", latest=True), row("v2.0.0", ref_type="tag"), row("v1.0.0", ref_type="tag")]
    assert [r.ref for r in qualifies(refs, only(include_pointers=("stable",)))] == ["v2.0.0"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (row("main", digest=DIGEST), f"{REGISTRY}@{DIGEST}"),
        (row("main"), f"{REGISTRY}:main-1234567-abcdef0"),
        (row("main", registry=None), None),
    ],
)
def test_the_source_is_pinned_by_digest_when_known(ref: ImageRefRecord, expected: str | None) -> None:
    assert source_ref(ref) == expected


JFROG = Destination(
    name="acme",
    type="jfrog",
    base_url="https://acme.jfrog.io",
    repo_key="runwhen-virtual",
    path_prefix="codecollections",
    auth=DestinationAuth(token_env="T"),
)
JFROG_NO_PREFIX = Destination(name="acme", type="jfrog", base_url="http://127.0.0.1:8081", repo_key="docker")
SITE = Destination(name="site", type="registry", registry="registry.example.com:5000/cc")
LOCAL = Destination(name="local", type="registry", registry="127.0.0.1:5000/mirror/images")


@pytest.mark.parametrize(
    ("destination", "ref", "exists"),
    [
        (
            JFROG,
            "acme.jfrog.io/runwhen-virtual/codecollections/rw-cli:main-1-2",
            "https://acme.jfrog.io/artifactory/api/docker/runwhen-virtual/v2/codecollections/rw-cli/manifests/main-1-2",
        ),
        (
            JFROG_NO_PREFIX,
            "127.0.0.1:8081/docker/rw-cli:main-1-2",
            "http://127.0.0.1:8081/artifactory/api/docker/docker/v2/rw-cli/manifests/main-1-2",
        ),
        (
            SITE,
            "registry.example.com:5000/cc/rw-cli:main-1-2",
            "https://registry.example.com:5000/v2/cc/rw-cli/manifests/main-1-2",
        ),
        (
            LOCAL,
            "127.0.0.1:5000/mirror/images/rw-cli:main-1-2",
            "http://127.0.0.1:5000/v2/mirror/images/rw-cli/manifests/main-1-2",
        ),
    ],
)
def test_the_target_keeps_the_tag_and_the_exists_check_asks_the_right_path(
    destination: Destination, ref: str, exists: str
) -> None:
    target = target_for(destination, "rw-cli", "main-1-2")
    assert target.ref == ref
    assert exists_url(destination, target) == exists


def test_xray_is_asked_for_the_tag_in_its_repository() -> None:
    url, body = xray_request(JFROG, target_for(JFROG, "rw-cli", "main-1-2"))
    assert url == "https://acme.jfrog.io/xray/api/v1/scanArtifact"
    assert body == {"componentID": "docker://runwhen-virtual/codecollections/rw-cli/main-1-2/manifest.json"}


def test_plan_covers_only_tracked_collections() -> None:
    only_other = Destination(
        name="site",
        type="registry",
        registry="registry.example.com/cc",
        mirror=MirrorFilter(codecollections=("other",)),
    )
    assert plan(only_other, "rw-cli", REFS) == []
    [work] = plan(
        Destination(
            name="site",
            type="registry",
            registry="registry.example.com/cc",
            mirror=only(include_pointers=("latest",)),
        ),
        "rw-cli",
        REFS,
    )
    assert (work.destination, work.slug, work.source_image_tag) == ("site", "rw-cli", "main-1234567-abcdef0")
    assert work.source_ref == f"{REGISTRY}:main-1234567-abcdef0"
    assert work.target.ref == "registry.example.com/cc/rw-cli:main-1234567-abcdef0"


@pytest.mark.parametrize(
    ("codecollections", "tracked"),
    [(("*",), True), (("rw-cli",), True), (("other",), False), ((), True)],  # empty: all, as the predecessor
)
def test_which_collections_a_destination_tracks(codecollections: tuple[str, ...], tracked: bool) -> None:
    assert MirrorFilter(codecollections=codecollections).tracks("rw-cli") is tracked
