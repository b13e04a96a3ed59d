"""Pure routing of git smart-HTTP requests: an allow-list, decided before any process starts.

Only three shapes are ever served, all read-only:

    GET  <mount>/<slug>[.git]/info/refs?service=git-upload-pack
    POST <mount>/<slug>[.git]/git-upload-pack
    GET  <mount>/<slug>[.git]/HEAD

Everything else under the mount path — receive-pack, objects/, config, dumb-protocol files,
percent-encoding, `.`/`..`/empty segments, invalid slugs — is refused here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs

from cccatalog.names import is_valid_slug


class GitService(StrEnum):
    INFO_REFS = "info/refs"
    UPLOAD_PACK = "git-upload-pack"
    HEAD = "HEAD"


@dataclass(frozen=True, slots=True)
class GitRoute:
    slug: str
    service: GitService

    @property
    def path_info(self) -> str:
        """PATH_INFO for git http-backend: always the on-disk name `<slug>.git`."""
        return f"/{self.slug}.git/{self.service.value}"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


def route_git(method: str, path: str, query: str, mount_path: str) -> GitRoute | Refusal | None:
    """Classify a request. None: not under `mount_path` (some other route may take it)."""
    prefix = mount_path.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :]
    if "%" in rest or "\\" in rest or "\0" in rest:
        return Refusal(404, "encoded or unusual characters in a git path")
    parts = rest.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return Refusal(404, "empty, '.' or '..' path segment")
    repo, tail = parts[0], parts[1:]
    slug = repo.removesuffix(".git")
    if not is_valid_slug(slug):
        return Refusal(404, "not a repository name")
    service = _service(tail)
    if service is None:
        return Refusal(403 if "git-receive-pack" in tail else 404, "only read-only smart HTTP is served")
    if service is GitService.INFO_REFS:
        services = parse_qs(query, keep_blank_values=True).get("service", [])
        if services != ["git-upload-pack"]:
            # no service: the dumb protocol, which would expose raw files; receive-pack: a push
            return Refusal(403, "only service=git-upload-pack is served")
    wanted = "POST" if service is GitService.UPLOAD_PACK else "GET"
    if method != wanted:
        return Refusal(405, f"{service.value} takes {wanted}")
    return GitRoute(slug, service)


def _service(tail: list[str]) -> GitService | None:
    if tail == ["info", "refs"]:
        return GitService.INFO_REFS
    if tail == ["git-upload-pack"]:
        return GitService.UPLOAD_PACK
    if tail == ["HEAD"]:
        return GitService.HEAD
    return None
