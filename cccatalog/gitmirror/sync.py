"""Keep bare mirrors fresh: decide which repos to sync (plan), then sync each one safely (apply).

Safety rules applied here: a new or rebuilt mirror is made in a temporary directory, verified and
renamed into place; a live mirror is only ever updated with an atomic fetch; one flock per repo keeps
two processes from working on the same mirror; every message that leaves is redacted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from cccatalog.catalog.store import Store
from cccatalog.config import AuthConfig, Config, RefScope
from cccatalog.credentials import resolve, url_host
from cccatalog.errors import CCCatalogError, GitError, LockBusy, UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.mirror import LocalState, Mirror, fingerprint, in_scope, is_complete
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.redact import strip_url_credentials

_CORRUPTION_SIGNS = (
    "bad object", "missing blob", "missing tree", "missing commit", "unable to read",
    "corrupt", "did not send all necessary objects", "packfile", "loose object", "invalid sha1 pointer",
)  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class SyncOptions:
    scope: RefScope = "branches-and-tags"
    auth: AuthConfig = field(default_factory=AuthConfig)
    clone_timeout: float = 900
    fetch_timeout: float = 600
    lock_timeout: float = 600
    no_wait: bool = False
    jobs: int = 4

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


class MirrorSyncer:
    """Applies RepoTasks under `layout` with `git`; records outcomes in `store` when given one."""

    def __init__(
        self,
        *,
        git: Git,
        layout: Layout,
        options: SyncOptions,
        environ: Mapping[str, str],
        store: Store | None = None,
    ) -> None:
        self.git = git
        self.layout = layout
        self.options = options
        self.environ = environ
        self.store = store

    def run(
        self,
        tasks: Sequence[RepoTask],
        *,
        on_start: Callable[[RepoTask], None] | None = None,
        on_done: Callable[[RepoResult], None] | None = None,
    ) -> list[RepoResult]:
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)

        def one(task: RepoTask) -> RepoResult:
            if on_start:
                on_start(task)
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
            with file_lock(self.layout.lock(task.slug), timeout=wait, what=f"mirror {task.slug}"):
                result = self._sync_locked(task)
        except LockBusy as exc:
            action = Action.SKIPPED if opts.no_wait else Action.FAILED
            result = RepoResult(task.slug, action, task.display_url, error=str(exc))
        except (CCCatalogError, OSError) as exc:
            message = _describe(exc) + _hint(exc, authenticated=not opts.auth.is_anonymous)
            result = RepoResult(task.slug, Action.FAILED, task.display_url, error=self.git.redactor(message))
        result = _with_duration(result, time.monotonic() - started)
        self._record(result, attempted_at)
        return result

    def _sync_locked(self, task: RepoTask) -> RepoResult:
        self.layout.remove_stale_temps(task.slug)
        auth = self._auth_config(task.url)
        target = self.layout.repo(task.slug)
        if target.exists():
            try:
                result = self._update(task, Mirror(self.git, target), auth)
            except GitError as exc:
                if not any(sign in exc.stderr.lower() for sign in _CORRUPTION_SIGNS):
                    raise
            else:
                if result is not None:
                    return result
            # the published repo is damaged: build a new one beside it and swap it in
        return self._clone(task, auth, rebuild=target.exists())

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
        """The Authorization header for this upstream, scoped to its origin so redirects elsewhere lack it."""
        if not url.lower().startswith(("https://", "http://")):
            return {}
        auth = self.options.auth
        named = (auth.token_env, auth.user_env, auth.pass_env, auth.dockerconfigjson_env)
        if any(name and not self.environ.get(name) for name in named):
            # credentials not set: fetched anonymously (the run warns once: jobs.credential_warnings)
            return {}
        host = url_host(url)
        creds = resolve(auth, key="git.auth", host=host, environ=self.environ)
        if creds is None:
            return {}
        self.git.redactor.add(*creds.secrets)
        origin = url.split("://", 1)[0].lower() + "://" + (host or "") + "/"
        return {f"http.{origin}.extraHeader": f"Authorization: {creds.authorization}"}

    def _update(self, task: RepoTask, mirror: Mirror, auth: Mapping[str, str]) -> RepoResult | None:
        """Bring a published mirror up to date; None when it is not complete (rebuild it instead)."""
        scope = self.options.scope
        # The mirror's refs are read (and it is proved complete) while the upstream lists its own;
        # nothing is changed before both answers are in, except a config that differs.
        inspection = mirror.start_inspect()
        failure: GitError | None = None
        try:
            mirror.configure(task.url, scope)
            remote = mirror.ls_remote(auth, scope, self.options.fetch_timeout)
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
        new_head = remote.head or local.head
        if not remote.refs:
            raise GitError("the upstream advertises no branches or tags; the mirror was kept as it is")
        if new_head and new_head not in remote.refs:
            raise GitError(
                f"the upstream's default branch {new_head} does not exist; the mirror was kept as it is"
            )
        changed = mirror.drop_out_of_scope(local.refs, scope) > 0
        if remote.refs != {k: v for k, v in local.refs.items() if in_scope(k, scope)}:
            mirror.fetch(auth, self.options.fetch_timeout)
            changed = True
        if new_head != local.head and new_head:
            mirror.set_head(new_head)
            changed = True
        if changed or not any((mirror.path / "objects" / "pack").glob("*.bitmap")):
            mirror.optimize(self.options.clone_timeout)
        # Unchanged refs need no second for-each-ref: optimize() repacks them but moves none.
        state = mirror.local_state(scope) if changed else local
        return self._result(task, state, Action.UPDATED if changed else Action.UNCHANGED)

    def _clone(self, task: RepoTask, auth: Mapping[str, str], *, rebuild: bool) -> RepoResult:
        scope = self.options.scope
        tmp = self.layout.new_temp_repo(task.slug)
        try:
            mirror = Mirror(self.git, tmp)
            mirror.init(task.url, scope)
            remote = mirror.ls_remote(auth, scope, self.options.clone_timeout)
            if not remote.refs:
                raise GitError("the upstream has no branches or tags to mirror")
            mirror.fetch(auth, self.options.clone_timeout)
            if remote.head:
                mirror.set_head(remote.head)
            state = mirror.verify(self.options.clone_timeout)
            mirror.optimize(self.options.clone_timeout)
            result = self._result(task, state, Action.REBUILT if rebuild else Action.CLONED)
            self.layout.publish(tmp, task.slug)
            return result
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _result(self, task: RepoTask, state: LocalState, action: Action) -> RepoResult:
        if not state.head_commit:
            raise GitError("HEAD does not resolve to a commit after the sync")
        return RepoResult(
            task.slug,
            action,
            task.display_url,
            head_commit=state.head_commit,
            default_branch=(state.head or "").removeprefix("refs/heads/") or None,
            refs_fingerprint=fingerprint(state.head, state.refs),
        )

    def _record(self, result: RepoResult, attempted_at: datetime) -> None:
        if self.store is None or result.action is Action.SKIPPED:
            return
        if result.failed:
            self.store.record_mirror_failure(
                result.slug,
                upstream_url=result.upstream_url,
                action=result.action.value,
                error=result.error or "unknown error",
                attempted_at=attempted_at,
            )
        else:
            self.store.record_mirror_success(
                result.slug,
                upstream_url=result.upstream_url,
                action=result.action.value,
                head_commit=result.head_commit or "",
                default_branch=result.default_branch or "",
                refs_fingerprint=result.refs_fingerprint or "",
                attempted_at=attempted_at,
                finished_at=datetime.now(UTC),
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _hint(exc: BaseException, *, authenticated: bool) -> str:
    """What to do about the failures people actually hit."""
    stderr = exc.stderr.lower() if isinstance(exc, GitError) else ""
    if "could not read username" in stderr or "authentication failed" in stderr:
        if authenticated:
            return " (the upstream refused the credentials named in git.auth: are they valid for this repo?)"
        return " (the upstream wants credentials: name their environment variables in git.auth)"
    if "could not resolve host" in stderr or "failed to connect" in stderr or "couldn't connect" in stderr:
        return " (the upstream is unreachable from here; on an air-gapped host, serve baked mirrors instead)"
    return ""


def _with_duration(result: RepoResult, seconds: float) -> RepoResult:
    return replace(result, duration_s=round(seconds, 3))
