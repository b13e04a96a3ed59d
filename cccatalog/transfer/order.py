"""Updates apply in the order they were exported, never backwards: what stops a replayed old update.

Every export carries `transfer.sequence` in its signed manifest: the connected host's clock in
nanoseconds when it exported (an export of an earlier cccatalog has none: its `created_at`, in whole
seconds, stands in). Before it moves anything, `import` records the update it applies in
`<data_dir>/.cccatalog/imported.json` (the sequence and the manifest's sha256), beside the mirrors it
protects; a site that imported before this record existed is read from `<data_dir>/manifest.json`
when that is an export's manifest. Then:

- the same update again is applied again (an import that was killed is completed; one that finished
  changes nothing: "already applied");
- an update with a higher sequence is applied;
- an update with a lower sequence, or another update with the same one, is refused, naming both
  export times, unless the operator passes `--allow-downgrade`.

Apart from the order, each repo is checked on its own (`rewinds`): an update never moves a ref back to
an ancestor of the commit this site has, whatever its sequence (an exporter whose mirror is behind the
site's, an older update re-signed), unless `--allow-downgrade`. A branch moved elsewhere (a force
push upstream) is not a rewind; a branch deleted by a newer update is a deletion upstream.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cccatalog import manifest
from cccatalog.atomic import write_atomic
from cccatalog.errors import UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout

_RECORD = "imported.json"
_APPLYING = "imported-manifest.json"  # the manifest of that update: where each repo is headed
_HINT = "pass --allow-downgrade to apply it anyway (the site goes back to what that update says)"


@dataclass(frozen=True, slots=True)
class Order:
    sequence: int
    sha256: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "sha256": self.sha256, "created_at": self.created_at}


def new_sequence() -> int:
    """The `transfer.sequence` of an export made now."""
    return time.time_ns()


def of_manifest(data: bytes, doc: Mapping[str, Any]) -> Order | None:
    """The order of an export manifest (its bytes and parsed document); None when it has no time."""
    created = doc.get("created_at")
    transfer = doc.get("transfer")
    sequence = transfer.get("sequence") if isinstance(transfer, dict) else None
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        try:
            when = datetime.fromisoformat(str(created).replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return None
        sequence = int(when.timestamp()) * 1_000_000_000
    return Order(sequence, hashlib.sha256(data).hexdigest(), str(created))


def last_imported(data_dir: Path) -> Order | None:
    """What this site imported last (or began to), or None when it never imported an update."""
    record = Layout(data_dir).work_dir / _RECORD
    try:
        doc = json.loads(record.read_bytes())
        return Order(int(doc["sequence"]), str(doc["sha256"]), str(doc["created_at"]))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: the per-ref check still refuses a rewind
    try:
        data = (data_dir / manifest.MANIFEST).read_bytes()
        doc = json.loads(data)
    except (OSError, ValueError):
        return None
    return of_manifest(data, doc) if isinstance(doc, dict) and doc.get("kind") == "export" else None


def check(path: Path, update: Order | None, last: Order | None, *, allow_downgrade: bool) -> None:
    """UsageError when `update` would take the site back behind `last`."""
    if update is None or last is None or allow_downgrade or update.sha256 == last.sha256:
        return
    if update.sequence > last.sequence:
        return
    if update.sequence == last.sequence:
        raise UsageError(
            f"{path}: another update with the same export time ({update.created_at}) was imported "
            f"already; refusing to replace it. Export again, or {_HINT}"
        )
    raise UsageError(
        f"{path}: this update was exported at {update.created_at}, before the one this site imported "
        f"last (exported at {last.created_at}); importing it would take the site back. "
        f"Import a newer update, or {_HINT}"
    )


def record(data_dir: Path, update: Order | None, manifest_bytes: bytes) -> None:
    """Remember `update` (and its manifest) as the one this site applies, before any ref moves."""
    work = Layout(data_dir).work_dir
    work.mkdir(parents=True, exist_ok=True)
    applying = work / _APPLYING
    if not applying.is_file() or applying.read_bytes() != manifest_bytes:
        write_atomic(applying, manifest_bytes)
    target = work / _RECORD
    if update is None or (target.is_file() and last_imported(data_dir) == update):
        return
    write_atomic(target, (json.dumps(update.to_json(), indent=2) + "\n").encode())


def applying_path(data_dir: Path) -> Path:
    return Layout(data_dir).work_dir / _APPLYING


def applying(data_dir: Path) -> dict[str, dict[str, str]]:
    """slug -> refs of the update this site imports (or imported last): where a repo an import
    moved before it was killed now is. Empty when there is none or it cannot be read."""
    path = applying_path(data_dir)
    try:
        found = manifest.parse(path.read_bytes(), source=str(path))
    except (OSError, UsageError):
        return {}
    return {slug: dict(repo.refs) for slug, repo in found.repos.items()}


def rewinds(
    git: Git, repo: Path, local: Mapping[str, str], target: Mapping[str, str], types: Mapping[str, str]
) -> list[str]:
    """The refs the update moves from a commit this site has back to one of its ancestors.
    `types`: the object type in `repo` of each target sha (`missing` for one only the bundle brings,
    which cannot be an ancestor of anything here)."""
    found = []
    for name, sha in sorted(target.items()):
        old = local.get(name)
        if old is None or old == sha or types.get(sha) != "commit":
            continue
        done = git.run(
            ["-C", str(repo), "merge-base", "--is-ancestor", sha, old],
            timeout=120,
            check=False,
            config={"safe.directory": str(repo)},
        )
        if done.returncode == 0:
            found.append(name)
    return found


def rewind_error(slug: str, refs: list[str], local: Mapping[str, str], target: Mapping[str, str]) -> str:
    first = refs[0]
    more = f" (and {len(refs) - 1} more)" if len(refs) > 1 else ""
    return (
        f"{slug}: the update moves {first} back from {local[first][:12]} to its ancestor "
        f"{target[first][:12]}{more}, which this site has moved past; {_HINT}"
    )
