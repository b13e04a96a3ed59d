"""The update file: a plain tar, written deterministically and read defensively.

    manifest.json        the export manifest (cccatalog.manifest, kind "export")
    manifest.json.sig    its SSH signature, when signed
    catalog.json         the catalog rows, per collection
    images.txt           the image references those rows point at, one per line
    bundles/<slug>.bundle   one git bundle per repo that needs objects
    images/oci-layout, images/index.json, images/blobs/sha256/<hex>
                         the images, an OCI image layout (cccatalog.transfer.images)

Members are written in that order with fixed owner, mode and time, so the same export gives the same
bytes. A reader takes only regular files with exactly these names, each once: no links, devices,
absolute paths or `..` ever reach the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cccatalog.errors import UsageError
from cccatalog.names import is_valid_slug
from cccatalog.transfer.images import is_member as is_layout_member

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
CATALOG = "catalog.json"
IMAGES = "images.txt"
BUNDLES = "bundles"
_CHUNK = 1024 * 1024


def bundle_name(slug: str) -> str:
    return f"{BUNDLES}/{slug}.bundle"


def _allowed(name: str) -> bool:
    if name in (MANIFEST, SIGNATURE, CATALOG, IMAGES) or is_layout_member(name):
        return True
    folder, _, file = name.partition("/")
    return folder == BUNDLES and file.endswith(".bundle") and is_valid_slug(file[: -len(".bundle")])


@dataclass(frozen=True, slots=True)
class Member:
    path: Path
    sha256: str
    size: int


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_archive(out: Path, staging: Path, names: Sequence[str], *, mtime: int) -> int:
    """Write the files `names` (relative to `staging`) to `out` in one rename; returns its size."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                path = staging / name
                info = tarfile.TarInfo(name)
                info.size = path.stat().st_size
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
                with path.open("rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def extract_archive(archive: Path, dest: Path) -> dict[str, Member]:
    """Every member of `archive` as a file under `dest`, with its sha256; UsageError when the file is
    not an update (not a tar, an unexpected or repeated member, anything but a regular file)."""
    where = f"{archive}"
    members: dict[str, Member] = {}
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except tarfile.TarError:
        raise UsageError(f"{where}: not a cccatalog update (not a tar file)") from None
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or type(exc).__name__}") from None
    with tar:
        try:
            for info in tar:
                if not info.isreg() or not _allowed(info.name) or info.name in members:
                    raise UsageError(f"{where}: not a cccatalog update (unexpected member {info.name!r})")
                target = dest / info.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(info)
                assert source is not None  # a regular file always has one
                h = hashlib.sha256()
                with source, target.open("wb") as out:
                    while chunk := source.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                members[info.name] = Member(target, h.hexdigest(), info.size)
        except (tarfile.TarError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"{where}: the file is damaged or cut short ({reason})") from None
    if MANIFEST not in members:
        raise UsageError(f"{where}: not a cccatalog update (no {MANIFEST})")
    return members


def check_update_file(path: Path) -> None:
    """Refuse, before the config, a lock or the state is touched, an update file that cannot be one:
    missing, a directory, unreadable, empty, or not a tar."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"update file {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"update file {path}: {exc.strerror or type(exc).__name__}") from None
    if path.is_dir():
        raise UsageError(f"update file {path}: a directory, not the file `cccatalog export` wrote")
    if not path.is_file():
        raise UsageError(f"update file {path}: not a regular file")
    if st.st_size == 0:
        raise UsageError(f"update file {path}: empty (an interrupted copy?)")
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise UsageError(f"update file {path}: {exc.strerror or type(exc).__name__}") from None
    if not is_tar:
        raise UsageError(f"update file {path}: not a cccatalog update (not a tar file)")
