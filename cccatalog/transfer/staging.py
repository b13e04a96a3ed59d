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
from contextlib import contextmanager
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
    """A new, empty directory to unpack one update in, removed on any way out."""
    sweep(data_dir)
    root = _root(data_dir)
    with shared_file_lock(_lock(data_dir)):
        root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="import.", dir=root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
