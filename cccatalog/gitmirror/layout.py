"""Where things live under `data_dir`, and how a finished repo is published there atomically.

    <data_dir>/<slug>.git                 published mirrors (what is served)
    <data_dir>/.cccatalog/tmp/            clones in progress; never served (slugs cannot start with '.')
    <data_dir>/.cccatalog/locks/<slug>    one flock file per repo
    <data_dir>/.cccatalog/owed/<slug>     present while a published mirror has changes not yet
                                          maintained (a run that stopped left it for the next one)

Everything under `.cccatalog/tmp` is unpublished and may be deleted; a published repo never is: a
broken one is swapped out first and deleted only once nothing can reach it by name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path

from cccatalog.errors import UsageError
from cccatalog.names import is_valid_slug

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class Layout:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.work_dir = data_dir / ".cccatalog"

    def repo(self, slug: str) -> Path:
        if not is_valid_slug(slug):
            # config validation refuses these already; this guards every path we build
            raise UsageError(f"invalid slug {slug!r}")
        return self.data_dir / f"{slug}.git"

    def lock(self, slug: str) -> Path:
        self.repo(slug)
        return self.work_dir / "locks" / f"{slug}.lock"

    def maintenance_owed(self, slug: str) -> Path:
        self.repo(slug)
        return self.work_dir / "owed" / slug

    def new_temp_repo(self, slug: str) -> Path:
        """A fresh directory on the same filesystem as the published repos, so rename is atomic."""
        tmp_root = self.work_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{slug}.", suffix=".git", dir=tmp_root))
        # mkdtemp makes 0700; the published repo must be readable by a serving uid that is not ours
        path.chmod(0o755)
        return path

    def remove_stale_temps(self, slug: str) -> None:
        """Clones a crashed run left behind. Call only while holding the repo's lock."""
        tmp_root = self.work_dir / "tmp"
        if tmp_root.is_dir():
            for leftover in tmp_root.glob(f"{slug}.*.git"):
                shutil.rmtree(leftover, ignore_errors=True)

    def publish(self, tmp: Path, slug: str) -> None:
        """Move a verified clone to its published name; swap it in if a (broken) repo is there."""
        target = self.repo(slug)
        if not target.exists():
            os.rename(tmp, target)
            return
        if not _exchange(tmp, target):
            # no atomic exchange on this filesystem: the name is briefly absent, never half-made
            parked = Path(tempfile.mkdtemp(prefix=f"{slug}.old.", suffix=".git", dir=self.work_dir / "tmp"))
            os.rename(target, parked / "repo")
            os.rename(tmp, target)
            tmp = parked
        # `tmp` now holds the old, unpublished repo: nothing serves it by name any more
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically. False where the kernel or fs lacks it."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
