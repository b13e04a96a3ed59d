"""Replacing a file so that a reader, a kill or a power cut sees the old file or the new one, whole:
write beside it, fsync the data, rename over the old name, fsync the directory that holds the name.
Without both fsyncs a crash soon after the rename can leave an empty file where a manifest was."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replacing(path: Path, *, mode: int | None = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content to; it replaces `path` when the block ends without an
    exception, and is removed otherwise. `mode` None keeps the owner-only mode of a temporary file;
    `durable=False` skips the fsyncs, for a cache whose entries are verified when read and can be
    fetched again. FileNotFoundError when `path`'s directory does not exist (nothing is created)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        sync_directory(path.parent)


def write_atomic(path: Path, data: bytes, *, mode: int | None = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` (readable by any uid by default: a serving uid reads manifests)."""
    with replacing(path, mode=mode, durable=durable) as f:
        f.write(data)


def sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable. Some filesystems cannot fsync a directory: that is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
