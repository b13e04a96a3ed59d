"""Operations on one bare mirror repository: inspect, configure, fetch, verify, optimize for serving."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cccatalog.config import RefScope
from cccatalog.errors import GitError
from cccatalog.gitmirror.git import Git

REFSPECS: dict[RefScope, tuple[str, ...]] = {
    # GitHub's refs/pull/* are most refs of a busy repo and bloat every client's advertisement.
    "branches-and-tags": ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"),
    "all": ("+refs/*:refs/*",),
}
_SCOPE_PREFIXES: dict[RefScope, tuple[str, ...]] = {
    "branches-and-tags": ("refs/heads/", "refs/tags/"),
    "all": ("refs/",),
}

# Settings every mirror carries in its own config (no secrets ever go here).
MIRROR_CONFIG: dict[str, str] = {
    "core.logAllRefUpdates": "false",  # reflogs of a mirror only grow
    "gc.auto": "0",  # we never want auto-gc in a repo being served; we maintain it ourselves
    "fetch.unpackLimit": "1",  # keep fetched objects packed: no loose-object storms under serving
    "repack.writeBitmaps": "true",  # reachability bitmaps make upload-pack cheap
    "pack.writeBitmapHashCache": "true",
    "uploadpack.allowFilter": "true",  # partial clone for clients
    "remote.origin.mirror": "true",
}

# Network settings for fetches: give up on a stalled transfer instead of hanging until the timeout.
FETCH_CONFIG: dict[str, str] = {
    "http.lowSpeedLimit": "1000",
    "http.lowSpeedTime": "60",
    "protocol.version": "2",
}


@dataclass(frozen=True, slots=True)
class RemoteRefs:
    head: str | None  # the upstream's default branch as a full ref name, when it says
    refs: dict[str, str]


@dataclass(frozen=True, slots=True)
class LocalState:
    head: str | None
    head_commit: str | None
    refs: dict[str, str]


def in_scope(refname: str, scope: RefScope) -> bool:
    return refname.startswith(_SCOPE_PREFIXES[scope])


def fingerprint(head: str | None, refs: Mapping[str, str]) -> str:
    """A stable digest of what a client would see: the refs and where HEAD points."""
    h = hashlib.sha256(f"HEAD {head or '-'}\n".encode())
    for name in sorted(refs):
        h.update(f"{refs[name]} {name}\n".encode())
    return h.hexdigest()


def parse_ls_remote(output: str, scope: RefScope) -> RemoteRefs:
    head: str | None = None
    refs: dict[str, str] = {}
    for line in output.splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head = left[5:]
        elif name.endswith("^{}") or not in_scope(name, scope):
            continue
        else:
            refs[name] = left
    return RemoteRefs(head, refs)


class Mirror:
    """A bare repository at `path`, run through `git`."""

    def __init__(self, git: Git, path: Path, *, foreign: bool = False) -> None:
        """`foreign`: the repo may belong to another uid (serve reading baked mirrors)."""
        self.git = git
        self.path = path
        self._base_config = {"safe.directory": str(path)} if foreign else {}

    def _run(
        self,
        *args: str,
        timeout: float | None = 120,
        check: bool = True,
        config: Mapping[str, str] | None = None,
    ) -> str:
        merged = {**self._base_config, **(config or {})}
        return self.git.run(["-C", str(self.path), *args], timeout=timeout, check=check, config=merged).stdout

    def init(self, url: str, scope: RefScope) -> None:
        self.git.run(["init", "--quiet", "--bare", str(self.path)], timeout=60)
        self._run("remote", "add", "origin", url)
        self.configure(url, scope)

    def configure(self, url: str, scope: RefScope) -> None:
        """Make the repo config match: upstream URL, refspecs, mirror settings. Writes only what differs."""
        current: dict[str, list[str]] = {}
        for line in self._run("config", "--local", "--null", "--list").split("\0"):
            key, _, value = line.partition("\n")
            if key:
                current.setdefault(key.lower(), []).append(value)
        wanted = {**MIRROR_CONFIG, "remote.origin.url": url}
        for key, value in wanted.items():
            if current.get(key.lower()) != [value]:
                self._run("config", "--local", "--replace-all", key, value)
        refspecs = list(REFSPECS[scope])
        if current.get("remote.origin.fetch") != refspecs:
            self._run("config", "--local", "--unset-all", "remote.origin.fetch", check=False)
            for spec in refspecs:
                self._run("config", "--local", "--add", "remote.origin.fetch", spec)

    def ls_remote(self, auth: Mapping[str, str], scope: RefScope, timeout: float) -> RemoteRefs:
        patterns = ["HEAD", "refs/heads/*", "refs/tags/*"] if scope == "branches-and-tags" else []
        out = self._run(
            "ls-remote", "--symref", "origin", *patterns, timeout=timeout, config={**FETCH_CONFIG, **auth}
        )
        return parse_ls_remote(out, scope)

    def fetch(self, auth: Mapping[str, str], timeout: float) -> None:
        # --atomic: a failed transfer updates no ref at all; --prune: refs deleted upstream go here too.
        self._run(
            "fetch", "--quiet", "--prune", "--atomic", "--no-write-fetch-head", "--no-auto-gc", "origin",
            timeout=timeout, config={**FETCH_CONFIG, **auth},
        )  # fmt: skip

    def local_state(self, scope: RefScope) -> LocalState:
        out = self._run("for-each-ref", "--format=%(objectname) %(refname)")
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition(" ")
            refs[name] = sha
        # HEAD is read from its file rather than with two more git processes: a no-op sync of a
        # mirror costs one for-each-ref here instead of three spawns.
        try:
            content = (self.path / "HEAD").read_text(encoding="utf-8").strip()
        except OSError:
            content = ""
        if content.startswith("ref: "):
            head: str | None = content[5:]
            commit = refs.get(content[5:])
        else:
            head, commit = None, content if len(content) == 40 else None
        return LocalState(head, commit, refs)

    def drop_out_of_scope(self, refs: Mapping[str, str], scope: RefScope) -> int:
        """Delete refs a narrower scope no longer mirrors (e.g. refs/pull/* from a `clone --mirror`)."""
        stale = [name for name in refs if not in_scope(name, scope)]
        if stale:
            script = "".join(f"delete {name}\n" for name in stale)
            self.git.run(["-C", str(self.path), "update-ref", "--stdin"], stdin=script, timeout=120)
        return len(stale)

    def set_head(self, ref: str) -> None:
        self._run("symbolic-ref", "HEAD", ref)

    def verify(self, timeout: float) -> str:
        """HEAD must resolve to a commit and every ref's history must be present. Returns the HEAD commit."""
        head = self._run("rev-parse", "-q", "--verify", "HEAD^{commit}", check=False).strip()
        if not head:
            raise GitError(
                "HEAD does not resolve to a commit (empty upstream, or its default branch is missing)"
            )
        self._run("fsck", "--connectivity-only", "--no-progress", "--no-dangling", timeout=timeout)
        return head

    def optimize(self, timeout: float) -> None:
        """Keep serving cheap after a change: one pack with a bitmap, a commit-graph, dumb-protocol info."""
        self._run("pack-refs", "--all", "--prune", timeout=timeout)
        self._run("repack", "-a", "-d", "-q", "--write-bitmap-index", timeout=timeout)
        self._run("commit-graph", "write", "--reachable", "--no-progress", timeout=timeout)
        self._run("update-server-info", timeout=timeout)


def is_complete(git: Git, path: Path) -> bool:
    """A published mirror is complete when it is a bare repo whose HEAD resolves to a commit."""
    if not (path / "HEAD").is_file() or not (path / "objects").is_dir():
        return False
    # safe.directory: the serving uid may not own the mirrors (git >= 2.39.4 refuses them otherwise)
    result = git.run(
        ["--git-dir", str(path), "rev-parse", "-q", "--verify", "HEAD^{commit}"],
        check=False,
        timeout=30,
        config={"safe.directory": str(path)},
    )
    return result.returncode == 0 and bool(result.stdout.strip())
