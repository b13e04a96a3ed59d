"""Stat stamps: the cheap answer to "may this file have changed?", without reading it.

A file replaced by rename (git's lock files, a ConfigMap's symlink swap) gets a new inode; one written
in place a new mtime or size. Used to decide when a config is reloaded, when a repository's
completeness must be asked of git again, and (with git's racy-timestamp rule on top, in
`gitmirror.refstate`) when a ref advertisement may be answered from memory.
"""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int]  # inode, mtime in ns, size
MISSING: Stamp = (0, 0, 0)


def stamp(path: Path | str) -> Stamp | None:
    """(inode, mtime_ns, size) of `path`, following symlinks; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def stamps(root: Path, names: tuple[str, ...]) -> tuple[Stamp, ...] | None:
    """The stamps of `root` and of each of `names` under it (MISSING for those that do not exist);
    None when `root` itself cannot be stat'ed."""
    top = stamp(root)
    if top is None:
        return None
    return (top, *(stamp(root / name) or MISSING for name in names))
