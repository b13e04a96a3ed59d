"""`serve`'s start-up check of the mirrors in `data_dir` against the manifest beside them.

The manifest is the one `bake` wrote or the last `import` left (the export's own, signed one). When
`transfer.allowed_signers` is configured, its signature must check out. Every repo it lists that the
config mirrors and that no local sync has changed since must be present, complete (HEAD resolves to a
commit, as the servable rule asks) and at exactly the listed refs — or at the refs of the update an
import is applying (`also`: an import killed midway leaves each repo wholly old or wholly new). Each
finding is one line, for `/readyz` and the log. A manifest that cannot be read or whose signature
fails is the replica's problem; a repo that is missing, half-made or at other refs is that repo's
(`/readyz` then says "degraded": the other repos are served as before).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cccatalog.config import TransferConfig
from cccatalog.errors import CCCatalogError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import Mirror, is_complete
from cccatalog.manifest import MANIFEST, SIGNATURE, parse

_SHOWN_REFS = 3


@dataclass
class Findings:
    manifest: list[str] = field(default_factory=list)  # the manifest itself: unreadable, badly signed
    repos: list[str] = field(default_factory=list)  # one line per repo that is not as listed


def check_mirrors(
    git: Git,
    data_dir: Path,
    slugs: Collection[str],
    *,
    transfer: TransferConfig,
    environ: Mapping[str, str],
    also: Mapping[str, Mapping[str, str]] | None = None,
) -> Findings:
    """What is wrong with `<data_dir>/manifest.json` and the mirrors of `slugs` it lists (nothing
    without one). `also`: slug -> refs a repo may be at instead (the update being imported)."""
    path = data_dir / MANIFEST
    found = Findings()
    if not path.is_file():
        return found
    try:
        manifest = parse(path.read_bytes(), source=str(path))
    except (OSError, CCCatalogError) as exc:
        found.manifest.append(f"{path}: unreadable manifest ({exc})")
        return found
    problems = found.repos
    if transfer.allowed_signers is not None:
        from cccatalog.signing import verify

        try:
            verify(
                path,
                data_dir / SIGNATURE,
                transfer.allowed_signers,
                signer=transfer.signer,
                environ=environ,
                what=str(path),
            )
        except CCCatalogError as exc:
            found.manifest.append(f"{exc} (transfer.allowed_signers is set)")
    for slug, entry in sorted(manifest.repos.items()):
        if slug not in slugs:
            continue
        repo = Layout(data_dir).repo(slug)  # manifest slugs are validated when it is read
        if not (repo / "HEAD").is_file():
            problems.append(f"{slug}: listed in the manifest but missing from {data_dir}")
            continue
        if not is_complete(git, repo):
            problems.append(f"{slug}: half-made or damaged (HEAD does not resolve to a commit)")
            continue
        try:
            refs = Mirror(git, repo, foreign=True).local_state("all").refs
        except CCCatalogError as exc:
            problems.append(f"{slug}: cannot read its refs ({exc})")
            continue
        if refs != entry.refs and refs != (also or {}).get(slug):
            differ = sorted(set(refs) ^ set(entry.refs) | {n for n in refs if entry.refs.get(n) != refs[n]})
            shown = ", ".join(differ[:_SHOWN_REFS]) + (", ..." if len(differ) > _SHOWN_REFS else "")
            problems.append(f"{slug}: its refs differ from the manifest ({len(differ)}: {shown})")
    return found
