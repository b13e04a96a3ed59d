"""Keep bare mirrors fresh: decide which repos to sync (plan), then sync each one safely (apply).

Safety rules applied here: a new or rebuilt mirror is made in a temporary directory, verified and
renamed into place; a live mirror is only ever updated with an atomic fetch; one flock per repo keeps
two processes from working on the same mirror; every message that leaves is redacted; credentials go
to the configured upstream's origin only (see `redirects.py`); a run that stopped between changing a
mirror and maintaining it leaves a marker, and the next run finishes the maintenance.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cccatalog.config import AuthConfig, Config, GitConfig, RefScope
from cccatalog.credentials import resolve, url_host
from cccatalog.errors import CCCatalogError, GitError, LockBusy, UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.mirror import LocalState, Mirror, RemoteRefs, fingerprint, in_scope, is_complete
from cccatalog.gitmirror.redirects import (
    MAX_HOPS,
    NO_REDIRECTS,
    origin,
    refused_redirect,
    repository_base,
    show_origin,
    shown,
)
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.redact import strip_url_credentials

log = logging.getLogger("cccatalog.sync")

_CORRUPTION_SIGNS = (
    "bad object",
    "missing blob",
    "missing tree",
    "missing commit",
    "unable to read",
    "corrupt",
    "did not send all necessary objects",
    "packfile",
    "loose object",
    "invalid sha1 pointer",
)


class Action(StrEnum):
    CLONED = "cloned"
    REBUILT = "rebuilt"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class RepoTask:
    """What to sync for one CodeCollection."""

    slug: str
    url: str

    @property
    def display_url(self) -> str:
        return strip_url_credentials(self.url)


_GIT = GitConfig()  # the git.* defaults, from the one place they are written


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a run syncs: the git.* settings it uses, and this run's choices (jobs, no_wait)."""

    scope: RefScope = _GIT.refs
    auth: AuthConfig = _GIT.auth
    clone_timeout: float = _GIT.clone_timeout_seconds
    fetch_timeout: float = _GIT.fetch_timeout_seconds
    lock_timeout: float = _GIT.lock_timeout_seconds
    no_wait: bool = False
    jobs: int = _GIT.parallelism

    @classmethod
    def from_config(cls, config: Config, *, jobs: int | None = None, no_wait: bool = False) -> SyncOptions:
        git = config.git
        return cls(
            scope=git.refs,
            auth=git.auth,
            clone_timeout=git.clone_timeout_seconds,
            fetch_timeout=git.fetch_timeout_seconds,
            lock_timeout=git.lock_timeout_seconds,
            no_wait=no_wait,
            jobs=jobs or git.parallelism,
        )


@dataclass(frozen=True, slots=True)
class RepoResult:
    slug: str
    action: Action
    upstream_url: str
    head_commit: str | None = None
    default_branch: str | None = None
    refs_fingerprint: str | None = None
    duration_s: float = 0.0
    error: str | None = None
    note: str | None = None  # what the operator should know although it worked (a redirect followed)

    @property
    def failed(self) -> bool:
        return self.action is Action.FAILED

    def to_json(self) -> dict[str, object]:
        return {
            "slug": self.slug,
            "action": self.action.value,
            "upstream_url": self.upstream_url,
            "head_commit": self.head_commit,
            "default_branch": self.default_branch,
            "duration_s": self.duration_s,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """What a published mirror needs, decided from its refs and the upstream's, before any change."""

    drop: tuple[str, ...] = ()  # refs the scope no longer mirrors (refs/pull/* of a `clone --mirror`)
    fetch: bool = False  # the upstream's branches and tags differ from the mirror's
    new_head: str | None = None  # the upstream's default branch moved to this ref
    refused: str | None = None  # why the mirror is kept as it is rather than synced to this upstream

    @property
    def changes(self) -> bool:
        return bool(self.drop) or self.fetch or self.new_head is not None


def plan_update(local: LocalState, remote: RemoteRefs, scope: RefScope) -> UpdatePlan:
    """Decide how to bring a mirror to what the upstream advertises (pure: table-tested).

    An upstream that suddenly advertises nothing, or lost its default branch, is refused instead of
    pruning the mirror to nothing: that is far more often a broken upstream than a real deletion.
    """
    head = remote.head or local.head
    if not remote.refs:
        return UpdatePlan(refused="the upstream advertises no branches or tags; the mirror was kept as it is")
    if head and head not in remote.refs:
        return UpdatePlan(
            refused=f"the upstream's default branch {head} does not exist; the mirror was kept as it is"
        )
    in_scope_refs = {name: sha for name, sha in local.refs.items() if in_scope(name, scope)}
    return UpdatePlan(
        drop=tuple(sorted(name for name in local.refs if not in_scope(name, scope))),
        fetch=remote.refs != in_scope_refs,
        new_head=head if head and head != local.head else None,
    )


def plan_sync(config: Config, *, only: Sequence[str] = (), ignore_enabled: bool = False) -> list[RepoTask]:
    """The repos a sync covers: CodeCollections with a git_url, narrowed by git.codecollections and `only`.

    `only` must name configured collections; those without a mirror are simply not in the git plan
    (they may still have images). `ignore_enabled` is for bake, which mirrors whatever git.enabled says.
    """
    unknown = [slug for slug in only if config.collection(slug) is None]
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: no CodeCollection with that slug in {config.path}")
    mirrored = mirrored_slugs(config, ignore_enabled=ignore_enabled)
    return [
        RepoTask(cc.slug, cc.git_url or "")
        for cc in config.codecollections
        if cc.slug in mirrored and (not only or cc.slug in only)
    ]


Record = Callable[[RepoResult, datetime], None]  # an outcome and when its attempt started


class MirrorSyncer:
    """Applies RepoTasks under `layout` with `git`; hands each outcome to `record` when given one
    (the orchestration layer writes it to the state: `jobs.recorder`)."""

    def __init__(
        self,
        *,
        git: Git,
        layout: Layout,
        options: SyncOptions,
        environ: Mapping[str, str],
        record: Record | None = None,
    ) -> None:
        self.git = git
        self.layout = layout
        self.options = options
        self.environ = environ
        self.record = record

    def run(
        self, tasks: Sequence[RepoTask], *, on_done: Callable[[RepoResult], None] | None = None
    ) -> list[RepoResult]:
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)

        def one(task: RepoTask) -> RepoResult:
            result = self.sync_one(task)
            if on_done:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs), thread_name_prefix="sync") as pool:
            return list(pool.map(one, tasks))

    def sync_one(self, task: RepoTask) -> RepoResult:
        started = time.monotonic()
        attempted_at = datetime.now(UTC)
        opts = self.options
        try:
            wait = 0 if opts.no_wait else opts.lock_timeout

            def waiting(pid: int | None) -> None:
                by = f" (pid {pid})" if pid else ""
                log.warning(
                    "%s: waiting for another sync of this mirror%s, up to %.0fs (git.lock_timeout_seconds)",
                    task.slug,
                    by,
                    wait,
                )

            lock = self.layout.lock(task.slug)
            with file_lock(lock, timeout=wait, what=f"mirror {task.slug}", on_wait=waiting):
                result = self._sync_locked(task)
        except LockBusy as exc:
            action = Action.SKIPPED if opts.no_wait else Action.FAILED
            reason = f"{exc}; skipped (--no-wait)" if opts.no_wait else str(exc)
            result = RepoResult(task.slug, action, task.display_url, error=reason)
        except (CCCatalogError, OSError) as exc:
            message = _describe(exc) + _hint(exc, authenticated=not opts.auth.is_anonymous)
            result = RepoResult(task.slug, Action.FAILED, task.display_url, error=self.git.redactor(message))
        result = _with_duration(result, time.monotonic() - started)
        if self.record is not None and result.action is not Action.SKIPPED:
            self.record(result, attempted_at)
        return result

    def _sync_locked(self, task: RepoTask) -> RepoResult:
        self.layout.remove_stale_temps(task.slug)
        auth = self._auth_config(task.url)
        target = self.layout.repo(task.slug)
        owed = _Owed(self.layout.maintenance_owed(task.slug))
        try:
            if target.exists():
                try:
                    result = self._update(task, Mirror(self.git, target), auth, owed)
                except GitError as exc:
                    if not any(sign in exc.stderr.lower() for sign in _CORRUPTION_SIGNS):
                        raise
                else:
                    if result is not None:
                        return result
                # the published repo is damaged: build a new one beside it and swap it in
            result = self._clone(task, auth, rebuild=target.exists())
            owed.clear()  # the new repo owes nothing
            return result
        except BaseException:
            owed.settle()
            raise

    def probe(self, task: RepoTask) -> int:
        """Ask the upstream for its refs, as a sync would (same credentials, scope and timeouts), without
        touching any mirror. Returns how many branches and tags it advertises; raises GitError."""
        from cccatalog.gitmirror.mirror import FETCH_CONFIG, parse_ls_remote

        scope = self.options.scope
        patterns = ["HEAD", "refs/heads/*", "refs/tags/*"] if scope == "branches-and-tags" else []
        out = self.git.run(
            ["ls-remote", "--symref", task.url, *patterns],
            timeout=self.options.fetch_timeout,
            config={**FETCH_CONFIG, **self._auth_config(task.url)},
        ).stdout
        return len(parse_ls_remote(out, scope).refs)

    def _auth_config(self, url: str) -> dict[str, str]:
        """The Authorization header for this upstream, and redirects refused whenever git has credentials.

        The header is scoped to the upstream's origin, but git matches that scope once, against the
        configured URL, and keeps sending the header after a redirect has moved it to another host
        (see `redirects.py`). So git follows no redirect while it holds credentials (ours, or a
        user:password in the URL); `_list_remote` follows those that stay within the origin.
        """
        if not url.lower().startswith(("https://", "http://")):
            return {}
        auth = self.options.auth
        named = (auth.token_env, auth.user_env, auth.pass_env, auth.dockerconfigjson_env)
        if any(name and not self.environ.get(name) for name in named):
            # credentials not set: fetched anonymously (the run warns once: jobs.credential_warnings)
            return {}
        host = url_host(url)
        creds = resolve(auth, key="git.auth", host=host, environ=self.environ)
        config = dict(NO_REDIRECTS) if creds is not None or "@" in url.split("/")[2] else {}
        if creds is not None:
            self.git.redactor.add(*creds.secrets)
            scope = url.split("://", 1)[0].lower() + "://" + (host or "") + "/"
            config[f"http.{scope}.extraHeader"] = f"Authorization: {creds.authorization}"
        return config

    def _list_remote(
        self, task: RepoTask, mirror: Mirror, auth: Mapping[str, str], timeout: float
    ) -> tuple[RemoteRefs, dict[str, str], str | None]:
        """`ls-remote` the upstream; returns its refs, the git config that reaches it (a same-origin
        redirect git was told not to follow, followed) and a note when it redirected."""
        config = dict(auth)
        current = task.url
        for _hop in range(MAX_HOPS + 1):
            try:
                remote = mirror.ls_remote(config, self.options.scope, timeout)
            except GitError as exc:
                if not NO_REDIRECTS.items() <= config.items() or not refused_redirect(exc.stderr):
                    raise
                current = self._redirect_target(
                    task, mirror, config=config, current=current, timeout=timeout, refused=exc
                )
                config = {**auth, f"url.{current}.insteadOf": task.url}
                continue
            note = None
            if remote.redirected_to:
                note = (
                    f"the upstream redirected to {remote.redirected_to} and git followed it "
                    "(no credentials are configured for it): set git_url to the new location"
                )
            elif current != task.url:
                note = (
                    f"the upstream redirected to {strip_url_credentials(current)} (same origin, "
                    "followed with the credentials): set git_url to the new location"
                )
            return remote, config, note
        raise GitError(f"the upstream redirected more than {MAX_HOPS} times; set git_url to where it ends")

    def _redirect_target(
        self,
        task: RepoTask,
        mirror: Mirror,
        *,
        config: Mapping[str, str],
        current: str,
        timeout: float,
        refused: GitError,
    ) -> str:
        """Where a refused redirect points, when it may be followed: within the configured origin.
        Raises GitError saying where it pointed and what to do otherwise."""
        location = mirror.redirect_location(config, timeout)
        configured = show_origin(task.url)
        if location is None:
            raise GitError(
                f"the upstream answered with a redirect ({refused}); credentials are only sent to "
                f"{configured}, so it was not followed: set git_url to the new location",
                stderr=refused.stderr,
            )
        target = shown(location, current)
        if origin(target) != origin(task.url):
            raise GitError(
                f"the upstream redirected to {target}, another origin than {configured}: credentials "
                "are only sent to the configured origin, so the redirect was not followed. "
                "If the repository moved, set git_url to the new location (and check the credentials "
                "are meant for it)",
                stderr=refused.stderr,
            )
        base = repository_base(current, location)
        if base is None:
            raise GitError(
                f"the upstream redirected to {target}, which is not a git repository's address: "
                "set git_url to the repository's new location",
                stderr=refused.stderr,
            )
        return base

    def _update(
        self, task: RepoTask, mirror: Mirror, auth: Mapping[str, str], owed: _Owed
    ) -> RepoResult | None:
        """Bring a published mirror up to date; None when it is not complete (rebuild it instead)."""
        scope = self.options.scope
        if owed.interrupted:
            owed.take_over(mirror, task.slug)
        # The mirror's refs are read (and it is proved complete) while the upstream lists its own;
        # nothing is changed before both answers are in, except a config that differs.
        inspection = mirror.start_inspect()
        failure: GitError | None = None
        try:
            mirror.configure(task.url, scope, before_write=owed.mark)
            remote, auth, note = self._list_remote(task, mirror, auth, self.options.fetch_timeout)
        except GitError as exc:
            failure = exc
        finally:
            local = inspection()
        if local is None and not is_complete(self.git, mirror.path):
            return None
        if failure is not None:
            raise failure
        if local is None:
            local = mirror.local_state(scope)
        plan = plan_update(local, remote, scope)
        if plan.refused:
            raise GitError(plan.refused)
        if plan.changes:
            owed.mark()
        if plan.drop:
            mirror.delete_refs(plan.drop)
        if plan.fetch:
            mirror.fetch(auth, self.options.fetch_timeout)
        if plan.new_head:
            mirror.set_head(plan.new_head)
        changed = plan.changes
        if changed or owed.pending or mirror.needs_repack():
            mirror.optimize(self.options.clone_timeout)
            owed.clear()
        # Unchanged refs need no second for-each-ref: optimize() repacks them but moves none.
        state = mirror.local_state(scope) if changed else local
        return self._result(task, state, Action.UPDATED if changed else Action.UNCHANGED, note)

    def _clone(self, task: RepoTask, auth: Mapping[str, str], *, rebuild: bool) -> RepoResult:
        scope = self.options.scope
        tmp = self.layout.new_temp_repo(task.slug)
        try:
            mirror = Mirror(self.git, tmp)
            mirror.init(task.url, scope)
            remote, auth, note = self._list_remote(task, mirror, auth, self.options.clone_timeout)
            if not remote.refs:
                raise GitError("the upstream has no branches or tags to mirror")
            mirror.fetch(auth, self.options.clone_timeout)
            if remote.head:
                mirror.set_head(remote.head)
            state = mirror.verify(self.options.clone_timeout)
            mirror.optimize(self.options.clone_timeout)
            result = self._result(task, state, Action.REBUILT if rebuild else Action.CLONED, note)
            self.layout.publish(tmp, task.slug)
            return result
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _result(
        self, task: RepoTask, state: LocalState, action: Action, note: str | None = None
    ) -> RepoResult:
        if not state.head_commit:
            raise GitError("HEAD does not resolve to a commit after the sync")
        if note:
            log.warning("%s: %s", task.slug, note)
        return RepoResult(
            task.slug,
            action,
            task.display_url,
            head_commit=state.head_commit,
            default_branch=(state.head or "").removeprefix("refs/heads/") or None,
            refs_fingerprint=fingerprint(state.head, state.refs),
            note=self.git.redactor(note) if note else None,
        )


class _Owed:
    """The maintenance-owed marker of one published mirror (`Layout.maintenance_owed`).

    Written ("running") before the first change to the mirror and removed once the mirror is
    maintained. A run that fails or is stopped by a signal rewrites it as "owed": its git ended
    itself and released its locks, only the maintenance is due. Found still "running", it means the
    run was killed in between (after a fetch, before the repack): its git may have left lock files
    and a half-written pack behind, and the refs may look unchanged while the maintenance is due.
    """

    RUNNING = "running\n"
    OWED = "owed\n"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            content: str | None = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            content = None
        self.pending = content is not None
        self.interrupted = content is not None and content != self.OWED
        self._running = False

    def mark(self) -> None:
        if not self._running:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self.RUNNING, encoding="ascii")
            self.pending = self._running = True

    def settle(self) -> None:
        """This run ends itself with the maintenance still due (a failure, a signal it handled)."""
        if self._running:
            self.path.write_text(self.OWED, encoding="ascii")
            self._running = False

    def clear(self) -> None:
        if self.pending:
            self.path.unlink(missing_ok=True)
        self.pending = self._running = False

    @staticmethod
    def take_over(mirror: Mirror, slug: str) -> None:
        """A run was killed after changing this mirror: what its git was writing is garbage now."""
        cleared = mirror.clear_interrupted_work()
        if cleared:
            log.info("%s: removed what a killed run left: %s", slug, ", ".join(cleared))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _hint(exc: BaseException, *, authenticated: bool) -> str:
    """What to do about the failures people actually hit."""
    stderr = exc.stderr.lower() if isinstance(exc, GitError) else ""
    if refused_redirect(exc.stderr if isinstance(exc, GitError) else "") and "redirect" not in str(exc):
        return (
            " (the upstream answered with a redirect, which git does not follow while it holds "
            "credentials: set git_url to the repository's new location)"
        )
    if "could not read username" in stderr or "authentication failed" in stderr:
        if authenticated:
            return " (the upstream refused the credentials named in git.auth: are they valid for this repo?)"
        return " (the upstream wants credentials: name their environment variables in git.auth)"
    if "could not resolve host" in stderr or "failed to connect" in stderr or "couldn't connect" in stderr:
        return " (the upstream is unreachable from here; on an air-gapped host, serve baked mirrors instead)"
    return ""


def _with_duration(result: RepoResult, seconds: float) -> RepoResult:
    return replace(result, duration_s=round(seconds, 3))
