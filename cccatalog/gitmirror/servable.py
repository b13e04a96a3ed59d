"""The one definition of "servable": the slug is mirrored by the *current* config and its repo is complete.

The git routes, the catalog's `git_url` rewrite and the status page all ask this object, so they can never
disagree. Completeness costs a `git rev-parse`, so it is cached per repo until the repo's files change
(a publish swaps the directory, which changes its inode; an update rewrites HEAD, refs or packs).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cccatalog.config import Config
from cccatalog.filestamp import Stamp, stamps
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import is_complete


def mirrored_slugs(config: Config, *, ignore_enabled: bool = False) -> frozenset[str]:
    """Slugs the config mirrors: CodeCollections with a git_url, narrowed by git.codecollections.

    Empty when git.enabled is false, unless `ignore_enabled` (bake mirrors regardless).
    """
    if not config.git.enabled and not ignore_enabled:
        return frozenset()
    allowed = set(config.git.codecollections)
    return frozenset(
        cc.slug for cc in config.codecollections if cc.git_url and (not allowed or cc.slug in allowed)
    )


# What a publish, an update or a repack changes: the repo directory (a publish swaps it), HEAD,
# the refs and the packs.
_WATCHED = ("HEAD", "packed-refs", "refs/heads", "objects/pack")


class Servability:
    """Answers `is_servable(config, slug)`; thread-safe, cheap when nothing changed on disk."""

    def __init__(self, git: Git) -> None:
        self.git = git
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[Stamp, ...], bool]] = {}

    def is_servable(self, config: Config, slug: str) -> bool:
        if slug not in mirrored_slugs(config):
            return False
        return self.is_complete(Layout(config.git.data_dir).repo(slug))

    def is_complete(self, repo: Path) -> bool:
        sig = stamps(repo, _WATCHED)
        if sig is None:
            return False
        with self._lock:
            cached = self._cache.get(repo)
        if cached and cached[0] == sig:
            return cached[1]
        complete = os.access(repo, os.R_OK | os.X_OK) and is_complete(self.git, repo)
        with self._lock:
            self._cache[repo] = (sig, complete)
        return complete
