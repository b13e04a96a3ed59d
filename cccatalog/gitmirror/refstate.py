"""A cheap, stat-only fingerprint of everything a repository's ref advertisement depends on.

What `git upload-pack --advertise-refs` prints is a function of HEAD, the refs (packed-refs, loose
refs under refs/, or a reftable stack), the repo config (capabilities) and the shallow file. git
replaces each of those by writing a lock file and renaming it into place, so every change gives the
path a new inode or mtime, and deleting a loose ref removes a path. The fingerprint is every such
path with (inode, mtime, size), its `filestamp`.

Like git's own "racy index" rule, a fingerprint is refused (None) while anything in it changed within
the last `RACY_SECONDS`: file timestamps are coarse (a clock tick, not a nanosecond), so two changes
inside one tick could otherwise leave identical fingerprints. Too many loose refs also give None:
stat-ing thousands of files costs more than asking git.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cccatalog.filestamp import stamp

RACY_SECONDS = 2.0
MAX_LOOSE_REFS = 256
_FILES = ("HEAD", "packed-refs", "config", "shallow", "reftable/tables.list")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def advertisement_fingerprint(
    repo: Path, *, now: float | None = None, racy_seconds: float = RACY_SECONDS
) -> Fingerprint | None:
    """The fingerprint, or None when it cannot be trusted (missing repo, racy, too many loose refs)."""
    entries: list[tuple[str, int, int, int]] = []
    try:
        top = os.stat(repo)
        entries.append((".", top.st_ino, top.st_mtime_ns, 0))
        for name in _FILES:
            if (found := stamp(repo / name)) is not None:
                entries.append((name, *found))
        if not _walk_refs(repo / "refs", "refs", entries):
            return None
    except OSError:
        return None
    newest = max(mtime for _, _, mtime, _ in entries)
    if (time.time() if now is None else now) - newest / 1e9 < racy_seconds:
        return None
    return tuple(entries)


def _walk_refs(directory: Path, rel: str, entries: list[tuple[str, int, int, int]]) -> bool:
    """Append every directory and file under refs/; False when there are too many loose refs."""
    st = os.stat(directory)
    entries.append((rel + "/", st.st_ino, st.st_mtime_ns, 0))
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        path = f"{rel}/{child.name}"
        if child.is_dir(follow_symlinks=False):
            if not _walk_refs(Path(child.path), path, entries):
                return False
            continue
        if len(entries) > MAX_LOOSE_REFS + len(_FILES) + 1:
            return False
        cst = child.stat(follow_symlinks=False)
        entries.append((path, cst.st_ino, cst.st_mtime_ns, cst.st_size))
    return True
