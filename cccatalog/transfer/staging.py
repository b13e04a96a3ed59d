"""Where `import` unpacks an update: under the data directory, never `$TMPDIR`, and swept when stale.

    <data_dir>/.cccatalog/staging/import.XXXXXXXX/   one per running import, removed when it ends
    <data_dir>/.cccatalog/staging.lock               held shared by every import while its directory
                                                     exists; held exclusively (never waited for) to sweep

An import killed with SIGKILL cannot remove its directory; the kernel drops its lock instead, so the
next import (or `serve` at start) finds the lock free of holders and removes everything staged. On
the data directory's filesystem, what an update needs is what the operator sized for mirrors, and a
full disk there is one the operator watches already.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import shared_file_lock, try_file_lock


def _root(data_dir: Path) -> Path:
    return Layout(data_dir).work_dir / "staging"


def _lock(data_dir: Path) -> Path:
    return Layout(data_dir).work_dir / "staging.lock"


def sweep(data_dir: Path) -> list[str]:
    """Remove what killed imports staged, unless an import is staging now; the names removed."""
    root = _root(data_dir)
    if not root.is_dir() or not any(root.iterdir()):
        return []  # the usual case: nothing to sweep, and no lock file touched
    fd = try_file_lock(_lock(data_dir))
    if fd is None:
        return []  # an import holds it: what is there may be its own; a later start sweeps
    try:
        removed = sorted(p.name for p in root.iterdir())
        for name in removed:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed
    finally:
        os.close(fd)


@contextmanager
def staging_dir(data_dir: Path) -> Iterator[Path]:
    """A new, empty directory to unpack one update in, removed on any way out. When the block fails
    (a refused update), the directories staging had to create go too: a refusal leaves no trace,
    not even an empty data directory."""
    work = Layout(data_dir).work_dir
    created = [d for d in (data_dir, work) if not d.exists()]
    # a data directory made only to stage in: its parent's times are put back when it goes again
    parent_times = _times(data_dir.parent) if data_dir in created else None
    sweep(data_dir)
    root = _root(data_dir)
    applied = False
    try:
        with shared_file_lock(_lock(data_dir)):
            root.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix="import.", dir=root))
            try:
                yield path
                applied = True
            finally:
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if not applied and created:
            _remove_empty(root, _lock(data_dir) if work in created else None, *reversed(created))
            if parent_times is not None and not data_dir.exists():
                with suppress(OSError):
                    os.utime(data_dir.parent, ns=parent_times)


def _times(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_atime_ns, st.st_mtime_ns


def _remove_empty(root: Path, lock: Path | None, *created: Path) -> None:
    """Remove the staging root and the directories in `created` where they are empty (rmdir: never
    what another process put there), and the lock file when staging created its directory."""
    with suppress(OSError):
        root.rmdir()
    if lock is not None:
        lock.unlink(missing_ok=True)
    for directory in created:
        with suppress(OSError):
            directory.rmdir()
