"""Operations on one bare mirror repository: inspect, configure, fetch, verify, optimize for serving."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cccatalog.config import RefScope
from cccatalog.errors import GitError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.redirects import followed_redirect, location_from_trace

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
    redirected_to: str | None = None  # where git followed a redirect to (`warning: redirecting to`)


@dataclass(frozen=True, slots=True)
class LocalState:
    head: str | None
    head_commit: str | None
    refs: dict[str, str]


# The subset of git's config syntax that `git config` itself writes for plain values. A file with
# anything else (quotes, escapes, comments after a value, includes, tabs) is read by git instead.
_CONFIG_SECTION = re.compile(r'\[([A-Za-z0-9-]+)(?: "([^"\\]*)")?\]')
_CONFIG_ENTRY = re.compile(r"([A-Za-z][A-Za-z0-9-]*) *= *([^\"\\#;\t\r\n]*)")


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
        """A new, empty mirror repo. Only for a fresh temp dir: its config is written as a whole."""
        self.git.run(["init", "--quiet", "--bare", str(self.path)], timeout=60)
        # One write instead of `remote add` and a `git config` per setting (a dozen processes);
        # configure() then reads it back through git, which corrects anything git reads differently.
        wanted = {**MIRROR_CONFIG, "remote.origin.url": url}
        with (self.path / "config").open("a", encoding="utf-8") as config:
            config.write(_config_text(wanted, REFSPECS[scope]))
        self.configure(url, scope, trust_file=False)

    def configure(
        self,
        url: str,
        scope: RefScope,
        *,
        trust_file: bool = True,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """Make the repo config match: upstream URL, refspecs, mirror settings. Writes only what differs.

        `trust_file`: read a plain config file directly rather than with `git config --list`
        (a no-op sync then starts no git process here); anything unusual is still read by git.
        `before_write` is called before the first write, if there is one.
        """
        current = _read_plain_config(self.path / "config") if trust_file else None
        if current is None:
            current = {}
            for line in self._run("config", "--local", "--null", "--list").split("\0"):
                key, _, value = line.partition("\n")
                if key:
                    current.setdefault(key.lower(), []).append(value)
        wanted = {**MIRROR_CONFIG, "remote.origin.url": url}
        changes = [(key, value) for key, value in wanted.items() if current.get(key.lower()) != [value]]
        refspecs = list(REFSPECS[scope])
        new_refspecs = current.get("remote.origin.fetch") != refspecs
        if before_write is not None and (changes or new_refspecs):
            before_write()
        for key, value in changes:
            self._run("config", "--local", "--replace-all", key, value)
        if new_refspecs:
            self._run("config", "--local", "--unset-all", "remote.origin.fetch", check=False)
            for spec in refspecs:
                self._run("config", "--local", "--add", "remote.origin.fetch", spec)

    def ls_remote(self, auth: Mapping[str, str], scope: RefScope, timeout: float) -> RemoteRefs:
        patterns = ["HEAD", "refs/heads/*", "refs/tags/*"] if scope == "branches-and-tags" else []
        result = self.git.run(
            ["-C", str(self.path), "ls-remote", "--symref", "origin", *patterns],
            timeout=timeout,
            config={**self._base_config, **FETCH_CONFIG, **auth},
        )
        refs = parse_ls_remote(result.stdout, scope)
        moved = followed_redirect(result.stderr)
        return replace(refs, redirected_to=moved) if moved else refs

    def redirect_location(self, auth: Mapping[str, str], timeout: float) -> str | None:
        """The Location of the redirect the upstream answers the ref advertisement with, asked again
        with git's (masked) HTTP trace on; None when it no longer redirects. `auth` must refuse
        redirects (`http.followRedirects=false`): this only reads where one points."""
        result = self.git.run(
            ["-C", str(self.path), "ls-remote", "origin", "HEAD"],
            timeout=timeout,
            check=False,
            config={**self._base_config, **FETCH_CONFIG, **auth},
            trace_http=True,
        )
        return location_from_trace(result.stderr)

    def fetch(self, auth: Mapping[str, str], timeout: float) -> None:
        # --atomic: a failed transfer updates no ref at all; --prune: refs deleted upstream go here too.
        self._run(
            "fetch",
            "--quiet",
            "--prune",
            "--atomic",
            "--no-write-fetch-head",
            "--no-auto-gc",
            "origin",
            timeout=timeout,
            config={**FETCH_CONFIG, **auth},
        )

    def local_state(self, scope: RefScope) -> LocalState:
        out = self._run("for-each-ref", "--format=%(objectname) %(refname)")
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition(" ")
            refs[name] = sha
        return self._with_head(refs)

    def inspect(self) -> LocalState | None:
        """The local state, read by one git process that also proves the mirror complete.

        None unless HEAD names a branch whose commit is present (asked for `%(objecttype)`,
        for-each-ref fails when a ref's object is missing, and says which are commits): what
        `is_complete` asks of `HEAD^{commit}`, answered without a `rev-parse` of its own. None is no
        verdict, only "ask `is_complete`".
        """
        return self.start_inspect()()

    def start_inspect(self) -> Callable[[], LocalState | None]:
        """Start `inspect` and return at once; call what it returns for the answer (always: that
        reaps git). A sync reads its mirror this way while the upstream answers `ls-remote`."""
        if not (self.path / "HEAD").is_file() or not (self.path / "objects").is_dir():
            return lambda: None
        run = self.git.start(
            ["-C", str(self.path), "for-each-ref", "--format=%(objectname) %(objecttype) %(refname)"],
            timeout=120,
            config=self._base_config,
        )

        def finish() -> LocalState | None:
            try:
                out = run.result().stdout
            except GitError:
                return None
            refs: dict[str, str] = {}
            commits: set[str] = set()
            for line in out.splitlines():
                sha, _, rest = line.partition(" ")
                kind, _, name = rest.partition(" ")
                refs[name] = sha
                if kind == "commit":
                    commits.add(name)
            state = self._with_head(refs)
            return state if state.head is not None and state.head in commits else None

        return finish

    def _with_head(self, refs: dict[str, str]) -> LocalState:
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

    def delete_refs(self, names: Sequence[str]) -> None:
        """Delete refs in one transaction (e.g. refs/pull/* a narrower scope no longer mirrors)."""
        script = "".join(f"delete {name}\n" for name in names)
        self.git.run(["-C", str(self.path), "update-ref", "--stdin"], stdin=script, timeout=120)

    def set_head(self, ref: str) -> None:
        self._run("symbolic-ref", "HEAD", ref)

    def verify(self, timeout: float) -> LocalState:
        """HEAD must resolve to a commit and every ref's history must be present. Returns the state."""
        state = self.inspect()
        if state is None:
            raise GitError(
                "HEAD does not resolve to a commit (empty upstream, or its default branch is missing)"
            )
        # A fresh clone has no commit-graph or multi-pack-index yet: spare fsck the two processes
        # it would start to verify them.
        no_indexes = {"core.commitGraph": "false", "core.multiPackIndex": "false"}
        fsck = ("fsck", "--connectivity-only", "--no-progress", "--no-dangling")
        self._run(*fsck, timeout=timeout, config=no_indexes)
        return state

    def needs_repack(self) -> bool:
        """Not one pack with a bitmap: a change was fetched but never maintained (or never will be)."""
        try:
            names = os.listdir(self.path / "objects" / "pack")
        except OSError:
            return True
        packs = sum(name.endswith(".pack") for name in names)
        return packs != 1 or not any(name.endswith(".bitmap") for name in names)

    def clear_interrupted_work(self) -> list[str]:
        """Remove what a git stopped mid-write leaves in the repo: lock files (with one in place the
        next git refuses to write: "Unable to create '...lock': File exists") and temporary packs.
        Only for a repo whose lock we hold, after a run that stopped: no other writer can be at work
        (serving reads, and takes no lock). Returns the paths removed, relative to the repo."""
        removed: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            here = Path(dirpath)
            if here == self.path / "objects":
                # loose object directories hold objects only; pack/ and info/ are walked
                dirnames[:] = [d for d in dirnames if d in ("pack", "info")]
            in_pack = here == self.path / "objects" / "pack"
            for name in filenames:
                if name.endswith(".lock") or (in_pack and name.startswith(("tmp_", ".tmp-"))):
                    with contextlib.suppress(FileNotFoundError):
                        (here / name).unlink()
                        removed.append(str((here / name).relative_to(self.path)))
        return removed

    def optimize(self, timeout: float) -> None:
        """Keep serving cheap after a change: one pack with a bitmap, a commit-graph, dumb-protocol info."""
        self._run("pack-refs", "--all", "--prune", timeout=timeout)
        # repack also runs update-server-info (unless -n): the refs are packed and final by then
        self._run("repack", "-a", "-d", "-q", "--write-bitmap-index", timeout=timeout)
        self._run("commit-graph", "write", "--reachable", "--no-progress", timeout=timeout)


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


def _read_plain_config(path: Path) -> dict[str, list[str]] | None:
    """What `git config --local --null --list` would report for `path`, keys lowercased, when the file
    uses only the plain syntax `git config` writes for simple values; otherwise None (ask git)."""
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text(): it would turn a lone "\r" into "\n"
    except (OSError, UnicodeDecodeError):
        return None
    values: dict[str, list[str]] = {}
    section: str | None = None
    for raw in text.split("\n"):
        line = raw.lstrip(" \t")
        if not line or line[0] in "#;":
            continue
        if match := _CONFIG_SECTION.fullmatch(line.rstrip(" ")):
            name, sub = match.group(1).lower(), match.group(2)
            if name in ("include", "includeif"):
                return None
            section = name if sub is None else f"{name}.{sub}"
        elif (match := _CONFIG_ENTRY.fullmatch(line)) and section is not None:
            key = f"{section}.{match.group(1)}".lower()
            values.setdefault(key, []).append(match.group(2).rstrip(" "))
        else:
            return None
    return values


def _config_text(settings: Mapping[str, str], refspecs: tuple[str, ...]) -> str:
    """Config file text for `settings` (full key names) and the origin's fetch refspecs, written the
    way `git config` writes them, so `_read_plain_config` can read them back without git."""
    sections: dict[str, list[str]] = {}
    entries = [*settings.items(), *(("remote.origin.fetch", spec) for spec in refspecs)]
    for key, value in entries:
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        header = f'[{section} "{sub}"]' if sub else f"[{section}]"
        sections.setdefault(header, []).append(f"\t{name} = {_config_value(value)}")
    return "".join(
        f"{header}\n" + "".join(f"{line}\n" for line in lines) for header, lines in sections.items()
    )


def _config_value(value: str) -> str:
    if _CONFIG_ENTRY.fullmatch(f"k = {value}") and value == value.strip(" "):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'
