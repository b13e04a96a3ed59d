"""Checks on the directories cccatalog is about to write, made before anything is written.

A command that would fail half-way because `git.data_dir` is a file, read-only or owned by someone
else should say so up front, naming the setting, and leave the disk as it was. These checks write
nothing: they look for the nearest existing ancestor of a path and ask the kernel whether this
process may create entries in it (`access(2)` also reports a read-only filesystem). They can be
wrong only in a race; the operations that follow still handle their own errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from cccatalog.errors import UsageError


def writable_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be used (or created) as a directory this process writes; None when it can."""
    probe = path
    while True:
        try:
            probe.stat()
        except FileNotFoundError:
            if probe.parent == probe:
                return f"{path}: no existing parent directory"
            probe = probe.parent
            continue
        except NotADirectoryError:
            return f"{path}: a parent of it is not a directory"
        except OSError as exc:
            return f"{path}: {exc.strerror or type(exc).__name__}"
        break
    if not os.path.isdir(probe):
        where = "it is" if probe == path else f"{probe} is"
        return f"{path}: {where} not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        reason = "read-only filesystem" if _read_only_fs(probe) else "permission denied"
        shown = path if probe == path else f"{path} (in {probe})"
        return f"{shown}: not writable by this user (uid {os.getuid()}): {reason}"
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def require_writable_dir(path: Path, *, setting: str) -> None:
    """Raise UsageError naming `setting` (a config key or option) when `path` cannot be written."""
    problem = writable_dir_problem(path)
    if problem is not None:
        raise UsageError(f"{setting}: {problem}")


def require_output_file(path: Path, *, setting: str) -> None:
    """Raise UsageError naming `setting` when `path` cannot be written as a file: its directory must
    already exist and be writable (a missing one is a typo more often than a wish), and the path must
    not be a directory."""
    if path.is_dir():
        raise UsageError(f"{setting} {path}: is a directory; name the file to write")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{setting} {path}: the directory {parent} does not exist")
    problem = writable_dir_problem(parent)
    if problem is not None:
        raise UsageError(f"{setting} {path}: {problem}")
