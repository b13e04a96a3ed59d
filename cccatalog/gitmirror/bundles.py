"""Git bundles for carrying mirror updates across an air gap, and the ref transaction that applies one.

An update moves objects first and refs last: `git bundle unbundle` stores a bundle's pack in the
mirror without touching a ref (clients keep seeing the old refs, whose objects are all still there),
then one `git update-ref --stdin` transaction moves every ref, each checked against the value it had
when the import read it: any mismatch and no ref moves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cccatalog.errors import GitError, UsageError
from cccatalog.gitmirror.git import Git

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A ref name as `git check-ref-format` allows it, and nothing that could change the meaning of a line
# of `update-ref --stdin` (whitespace, control characters).
_REFNAME = re.compile(r"refs/(?:[^\x00-\x20\x7f~^:?*\[\\/]+/)*[^\x00-\x20\x7f~^:?*\[\\/]+")
_HEADER_LIMIT = 64 * 1024 * 1024
_EMPTY_BUNDLE = "refusing to create empty bundle"


def is_sha(value: object) -> bool:
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


def is_refname(value: object) -> bool:
    if not isinstance(value, str) or not _REFNAME.fullmatch(value):
        return False
    return (
        ".." not in value
        and "@{" not in value
        and not any(part.startswith(".") or part.endswith(".lock") for part in value.split("/"))
    )


@dataclass(frozen=True, slots=True)
class BundleHeader:
    prerequisites: tuple[str, ...]
    refs: dict[str, str]


def read_header(path: Path) -> BundleHeader:
    """The prerequisites and refs a bundle file declares (its text header, before the pack)."""
    data = b""
    with path.open("rb") as f:
        while b"\n\n" not in data:
            chunk = f.read(65536)
            if not chunk or len(data) > _HEADER_LIMIT:
                raise UsageError(f"{path.name}: not a git bundle (no header)")
            data += chunk
    lines = data.split(b"\n\n", 1)[0].decode("utf-8", "replace").split("\n")
    if lines[0] not in ("# v2 git bundle", "# v3 git bundle"):
        raise UsageError(f"{path.name}: not a git bundle")
    prerequisites: list[str] = []
    refs: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("@"):
            continue  # v3 capabilities
        if line.startswith("-"):
            prerequisites.append(line[1:].split(" ", 1)[0])
        else:
            sha, _, name = line.partition(" ")
            refs[name] = sha
    if not all(map(is_sha, [*prerequisites, *refs.values()])):
        raise UsageError(f"{path.name}: not a git bundle (malformed header)")
    return BundleHeader(tuple(prerequisites), refs)


def object_types(git: Git, repo: Path, shas: Iterable[str], *, foreign: bool = False) -> dict[str, str]:
    """sha -> its object type in `repo` (`commit`, `tag`, ...), or `missing`."""
    wanted = sorted(set(shas))
    if not wanted:
        return {}
    config = {"safe.directory": str(repo)} if foreign else {}
    out = git.run(
        ["-C", str(repo), "cat-file", "--batch-check=%(objectname) %(objecttype)"],
        stdin="".join(f"{sha}\n" for sha in wanted),
        timeout=120,
        config=config,
    ).stdout
    found = {sha: "missing" for sha in wanted}
    for line in out.splitlines():
        sha, _, kind = line.partition(" ")
        found[sha] = "missing" if kind == "missing" else kind
    return found


def create_bundle(
    git: Git, repo: Path, out: Path, *, refs: Sequence[str], exclude: Sequence[str], timeout: float
) -> bool:
    """Write a bundle of `refs` holding only what is not reachable from the `exclude` commits.

    False (and no file) when that is nothing: every ref's object is already reachable from them.
    Revisions go through stdin, so thousands of refs never meet an argv limit.
    """
    revisions = "".join(f"{name}\n" for name in refs) + "".join(f"^{sha}\n" for sha in exclude)
    done = git.run(
        ["-C", str(repo), "bundle", "create", "-q", str(out), "--stdin"],
        stdin=revisions,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0 and _EMPTY_BUNDLE in done.stderr.lower():
        out.unlink(missing_ok=True)
        return False
    if done.returncode != 0:
        raise GitError(f"git bundle create failed: {done.stderr.strip()}", stderr=done.stderr)
    return True


def verify_bundle(git: Git, repo: Path, bundle: Path, *, timeout: float) -> None:
    """`git bundle verify` in `repo`: the bundle is whole and `repo` has every prerequisite."""
    git.run(["-C", str(repo), "bundle", "verify", "-q", str(bundle)], timeout=timeout)


def unbundle(git: Git, repo: Path, bundle: Path, *, timeout: float) -> None:
    """Store the bundle's objects in `repo` (checked by index-pack); no ref changes."""
    git.run(["-C", str(repo), "bundle", "unbundle", str(bundle)], timeout=timeout)


def update_refs(
    git: Git, repo: Path, current: Mapping[str, str], target: Mapping[str, str], *, timeout: float
) -> int:
    """Move the refs of `repo` from `current` to `target` in one transaction: creations, updates
    (force: a rewritten branch moves too) and deletions, each against its current value. Returns how
    many refs changed."""
    lines = []
    for name, sha in sorted(target.items()):
        old = current.get(name)
        if old is None:
            lines.append(f"create {name} {sha}\n")
        elif old != sha:
            lines.append(f"update {name} {sha} {old}\n")
    lines += [f"delete {name} {sha}\n" for name, sha in sorted(current.items()) if name not in target]
    if lines:
        script = "start\n" + "".join(lines) + "prepare\ncommit\n"
        git.run(["-C", str(repo), "update-ref", "--stdin"], stdin=script, timeout=timeout)
    return len(lines)
