"""The update file: a plain tar, written deterministically and read defensively.

    manifest.json        the export manifest (cccatalog.manifest, kind "export")
    manifest.json.sig    its SSH signature, when signed
    catalog.json         the catalog rows, per collection
    images.txt           the image references those rows point at, one per line
    bundles/<slug>.bundle   one git bundle per repo that needs objects
    images/oci-layout, images/index.json, images/blobs/sha256/<hex>
                         the images, an OCI image layout (cccatalog.transfer.images)

Members are written in that order with fixed owner, mode and time, so the same export gives the same
bytes. A reader takes the manifest and its signature first and alone (`extract_head`), so the
signature is checked before anything else is unpacked; then only plain regular files with exactly
these names, each once and of the size the manifest gives (`extract_members`): no sparse members,
links, devices, absolute paths or `..` ever reach the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
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
# Read before the signature is checked, so bounded: a manifest of thousands of refs is a few MiB.
MANIFEST_LIMIT = 64 * 1024 * 1024
SIGNATURE_LIMIT = 64 * 1024
# Extended headers (PAX, GNU long names) are read whole into memory by tarfile: bounded before it does.
META_LIMIT = 1024 * 1024
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


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


def extract_head(archive: Path, dest: Path) -> dict[str, Member]:
    """The manifest and its signature, which lead the file, under `dest`; nothing after them is read.

    Only these two (each bounded in size) are unpacked before the signature is checked: what follows
    is unpacked by `extract_members`, against the sizes the signed manifest declares. UsageError when
    the file is not an update."""
    _refuse_large_meta_headers(archive)
    members: dict[str, Member] = {}
    with _open(archive) as tar:
        try:
            for info in tar:
                name = info.name
                if name not in (MANIFEST, SIGNATURE) or name in members:
                    break
                if name == SIGNATURE and MANIFEST not in members:
                    break  # a signature first: not how export writes one
                _refuse_odd(archive, info)
                limit = MANIFEST_LIMIT if name == MANIFEST else SIGNATURE_LIMIT
                if info.size > limit:
                    raise UsageError(
                        f"{archive}: not a cccatalog update ({name} declares {info.size} bytes, "
                        f"more than {limit})"
                    )
                members[name] = _extract(tar, info, dest / name)
                if name == SIGNATURE:
                    break
        except (tarfile.TarError, EOFError) as exc:
            raise _damaged(archive, exc) from None
    if MANIFEST not in members:
        raise UsageError(f"{archive}: not a cccatalog update (it does not begin with {MANIFEST})")
    return members


def extract_members(archive: Path, dest: Path, sizes: Mapping[str, int]) -> dict[str, Member]:
    """Every member after the head, each one the signed manifest lists (`sizes`: name -> size), of
    exactly that size, a plain regular file (no sparse member, link or device), written under `dest`.

    The header of each member is checked before a byte of it is written, and the whole is checked
    against the free space of `dest` first, so a crafted file cannot make the import fill a disk."""
    need = sum(sizes.values())
    free = shutil.disk_usage(dest).free
    if need > free:
        raise UsageError(
            f"{archive}: unpacking it needs {need} bytes and {dest} has {free} free; free some space "
            "in the data directory and import again"
        )
    members: dict[str, Member] = {}
    head: set[str] = set()
    with _open(archive) as tar:
        try:
            for index, info in enumerate(tar):
                name = info.name
                if index == len(head) and name in (MANIFEST, SIGNATURE) and name not in head:
                    head.add(name)  # read and checked already by extract_head
                    continue
                if not _allowed(name) or name in members or name in (MANIFEST, SIGNATURE):
                    raise UsageError(f"{archive}: not a cccatalog update (unexpected member {name!r})")
                if name not in sizes:
                    raise UsageError(f"{archive}: {name} is not listed in the signed manifest (tampered?)")
                _refuse_odd(archive, info)
                if info.size != sizes[name]:
                    raise UsageError(
                        f"{archive}: {name} does not match its size in the manifest ({info.size} bytes, "
                        f"not {sizes[name]}: damaged or tampered)"
                    )
                members[name] = _extract(tar, info, dest / name)
        except (tarfile.TarError, EOFError) as exc:
            raise _damaged(archive, exc) from None
    return members


def _open(archive: Path) -> tarfile.TarFile:
    where = f"{archive}"
    try:
        return tarfile.open(archive, "r:")
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except tarfile.TarError:
        raise UsageError(f"{where}: not a cccatalog update (not a tar file)") from None
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or type(exc).__name__}") from None


def _refuse_large_meta_headers(archive: Path) -> None:
    """Every extended header of the file at most META_LIMIT: tarfile reads one whole into memory, so
    a file declaring a header of gigabytes would be read before any check. Walks the header chain
    (a seek per member) up to anything but a plain member, which the member checks refuse."""
    try:
        with archive.open("rb") as f:
            while len(block := f.read(tarfile.BLOCKSIZE)) == tarfile.BLOCKSIZE:
                try:
                    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                except tarfile.HeaderError:
                    return  # not a header at all: tarfile says what is wrong
                if info.type not in (*_META_TYPES, tarfile.REGTYPE, tarfile.AREGTYPE):
                    return
                if info.type in _META_TYPES and info.size > META_LIMIT:
                    raise UsageError(
                        f"{archive}: not a cccatalog update (an extended header of {info.size} bytes)"
                    )
                f.seek(-(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, os.SEEK_CUR)
    except OSError:
        return  # _open reports it


def _refuse_odd(archive: Path, info: tarfile.TarInfo) -> None:
    """Only plain regular files: a sparse member (GNU 'S', or PAX GNU.sparse.*) expands holes into
    real bytes on extraction, so a few KiB of tar can declare a TiB; links and devices never belong."""
    sparse = info.sparse is not None or any(k.startswith("GNU.sparse") for k in info.pax_headers)
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or sparse:
        kind = "a sparse file" if sparse else "not a regular file"
        raise UsageError(f"{archive}: not a cccatalog update (member {info.name!r} is {kind})")


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> Member:
    target.parent.mkdir(parents=True, exist_ok=True)  # images/blobs/sha256/...
    source = tar.extractfile(info)
    assert source is not None  # a regular file always has one
    h = hashlib.sha256()
    written = 0
    with source, target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > info.size:  # never more than the header said, whatever the reader does
                raise tarfile.ReadError(f"{info.name} is longer than its header says")
            h.update(chunk)
            out.write(chunk)
    return Member(target, h.hexdigest(), info.size)


def _damaged(archive: Path, exc: BaseException) -> UsageError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UsageError(f"{archive}: the file is damaged or cut short ({reason})")


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
    # Only the first header block: tarfile.is_tarfile would read a leading extended header whole,
    # however large it declares itself (extract_head bounds those before reading them).
    try:
        with path.open("rb") as f:
            tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")
    except OSError as exc:
        raise UsageError(f"update file {path}: {exc.strerror or type(exc).__name__}") from None
    except tarfile.HeaderError:
        raise UsageError(f"update file {path}: not a cccatalog update (not a tar file)") from None
