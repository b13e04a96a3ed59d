"""The git route allow-list, as a table: what is served and what is refused before any process starts."""

from __future__ import annotations

import pytest

from cccatalog.server.routing import GitRoute, GitService, Refusal, route_git

UP = "service=git-upload-pack"


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/git/alpha.git/info/refs", UP, GitRoute("alpha", GitService.INFO_REFS)),
        ("GET", "/git/alpha/info/refs", UP, GitRoute("alpha", GitService.INFO_REFS)),
        ("POST", "/git/alpha.git/git-upload-pack", "", GitRoute("alpha", GitService.UPLOAD_PACK)),
        ("POST", "/git/alpha/git-upload-pack", "", GitRoute("alpha", GitService.UPLOAD_PACK)),
        ("GET", "/git/alpha.git/HEAD", "", GitRoute("alpha", GitService.HEAD)),
        (
            "GET",
            "/git/rw-cli_codecollection.v2/info/refs",
            UP,
            GitRoute("rw-cli_codecollection.v2", GitService.INFO_REFS),
        ),
    ],
)
def test_read_only_smart_http_routes_are_served(
    method: str, path: str, query: str, expected: GitRoute
) -> None:
    assert route_git(method, path, query, "/git") == expected


@pytest.mark.parametrize(
    ("method", "path", "query", "status"),
    [
        ("GET", "/git/alpha.git/info/refs", "service=git-receive-pack", 403),
        ("POST", "/git/alpha.git/git-receive-pack", "", 403),
        ("GET", "/git/alpha.git/info/refs", "", 403),  # dumb protocol
        ("GET", "/git/alpha.git/info/refs", f"{UP}&service=git-receive-pack", 403),
        ("GET", "/git/alpha.git/objects/info/packs", "", 404),
        ("GET", "/git/alpha.git/objects/pack/pack-1.pack", "", 404),
        ("GET", "/git/alpha.git/config", "", 404),
        ("GET", "/git/alpha.git/info/refs/", UP, 404),
        ("GET", "/git/alpha.git//info/refs", UP, 404),
        ("GET", "/git/../alpha.git/info/refs", UP, 404),
        ("GET", "/git/alpha.git/HEAD/../config", "", 404),
        ("GET", "/git/./alpha.git/info/refs", UP, 404),
        ("GET", "/git/%2e%2e/alpha.git/info/refs", UP, 404),
        ("GET", "/git/alpha%2egit/info/refs", UP, 404),
        ("GET", "/git/%252e%252e/info/refs", UP, 404),
        ("GET", "/git/-alpha/info/refs", UP, 404),
        ("GET", "/git/.cccatalog/info/refs", UP, 404),
        ("GET", "/git/alpha.git.git/info/refs", UP, 404),
        ("GET", "/git/" + "a" * 201 + "/info/refs", UP, 404),
        ("GET", "/git/alpha.git/git-upload-pack", "", 405),
        ("POST", "/git/alpha.git/info/refs", UP, 405),
        ("PUT", "/git/alpha.git/HEAD", "", 405),
        ("DELETE", "/git/alpha.git/HEAD", "", 405),
    ],
)
def test_everything_else_is_refused(method: str, path: str, query: str, status: int) -> None:
    result = route_git(method, path, query, "/git")
    assert isinstance(result, Refusal)
    assert result.status == status


def test_paths_outside_the_mount_are_left_to_other_routes() -> None:
    assert route_git("GET", "/api/v1/catalog/codecollections", "", "/git") is None
    assert route_git("GET", "/gitx/alpha.git/info/refs", UP, "/git") is None
    assert route_git("GET", "/mirrors/alpha.git/info/refs", UP, "/mirrors") == GitRoute(
        "alpha", GitService.INFO_REFS
    )


def test_path_info_always_names_the_bare_repo_on_disk() -> None:
    assert GitRoute("alpha", GitService.UPLOAD_PACK).path_info == "/alpha.git/git-upload-pack"
