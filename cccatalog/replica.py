"""Who this process is among replicas that share one state: its replica id (named in answers about its
own disk) and the mirror volume it syncs (git status and git run locks are per volume).

The replica id is `serve.replica_id`, else the hostname (a Kubernetes pod's name). The volume id is a
random id kept in `<git.data_dir>/.cccatalog/volume-id`: replicas sharing one ReadWriteMany volume
read the same id, replicas with a disk each have one each. Where no id can be kept (no data directory
yet, or a read-only one, as with mirrors baked into a read-only image) the volume is the replica's
own. An SQLite state has one volume, the empty name: one host, one disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket

from cccatalog.config import Config

VOLUME_FILE = ".cccatalog/volume-id"


def replica_id(config: Config) -> str:
    return config.serve.replica_id or socket.gethostname() or "replica"


def mirror_volume(config: Config, replica: str) -> str:
    """The id of the mirror volume under git.data_dir ("" for an SQLite state)."""
    if config.state.url is None:
        return ""
    path = config.git.data_dir / VOLUME_FILE
    try:
        return path.read_text(encoding="ascii").strip() or f"replica:{replica}"
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return f"replica:{replica}"
    if not config.git.data_dir.is_dir():
        return f"replica:{replica}"
    new = secrets.token_hex(8)
    scratch = path.with_name(f".volume-id.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        scratch.write_text(new + "\n", encoding="ascii")
        # link, not rename: two replicas creating it at once on a shared volume agree on the first
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
        return path.read_text(encoding="ascii").strip() or f"replica:{replica}"
    except OSError:
        return f"replica:{replica}"
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
