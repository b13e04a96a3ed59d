"""YAML config -> typed, frozen objects. The only module that reads the raw config dict.

The file format is the predecessor's (cc-catalog-svc) plus a few keys of cccatalog's own; every
problem is reported with its key path, all at once, and unknown keys are refused.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from cccatalog import envvars
from cccatalog.errors import ConfigError
from cccatalog.redact import GITHUB_TOKEN, strip_url_credentials

RefScope = Literal["branches-and-tags", "all"]
Visibility = Literal["public", "hidden"]
SourceType = Literal["oci", "static", "upstream"]

# The predecessor's default: baked mirrors live outside /data, so a volume on /data cannot hide them.
DEFAULT_DATA_DIR = Path("/opt/cc-catalog/git")
# Seconds an upstream catalog has to answer (`options.timeout`), the predecessor's default.
_UPSTREAM_TIMEOUT = 15.0


def setting(
    default: Any = None, *, doc: str, key: str | None = None, shown: str | None = None, required: bool = False
) -> Any:
    """A config key's field, documented where it is defined: `docs/configuration.md` is generated
    from these (`tools/docs.py`), and a test fails when the two disagree. `key` is its YAML name
    when that differs from the field's; `shown` is how its default reads when not as the value."""
    metadata = {"doc": doc, "key": key, "shown": "required" if required and shown is None else shown}
    if required:
        return field(metadata=metadata)
    # A frozen dataclass (an AuthConfig) is hashable, so it may be a plain default, shared safely.
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Names of environment variables holding credentials; at most one form is set."""

    token_env: str | None = setting(
        doc="a token: sent to git upstreams as GitHub's Basic `x-access-token:<token>`, to registries "
        "and other catalogs as a Bearer token"
    )
    user_env: str | None = setting(doc="a user name, with `pass_env`: Basic credentials")
    pass_env: str | None = setting(doc="the password of `user_env`")
    dockerconfigjson_env: str | None = setting(
        doc="a Docker `config.json` (a path, or the JSON itself: a mounted pull secret); the host is "
        "looked up in its `auths`"
    )

    @property
    def is_anonymous(self) -> bool:
        return not (self.token_env or self.user_env or self.dockerconfigjson_env)


@dataclass(frozen=True, slots=True)
class CodeCollection:
    slug: str = setting(
        doc="unique across sources; letters, digits, `.`, `_`, `-`; not ending in `.git`", required=True
    )
    source: str = setting(doc="", key="", required=True)  # the source it is under, not a key of its own
    name: str | None = setting(doc="display name", shown="the slug")
    git_url: str | None = setting(
        doc="upstream repository (https, http, ssh, git, file, `user@host:path`); no credentials in it"
    )
    image_registry: str | None = setting(doc="`host/path` of the image repository, no scheme")
    default_ref: str = setting("main", doc="the ref whose newest build is `latest`")
    visibility: Visibility = setting("public", doc="`public` or `hidden` (hidden: left out of the list)")
    static_path: Path | None = setting(doc="JSON refs file for a `static` source")
    upstream_url: str | None = setting(
        doc="the catalog an `upstream` source reads this collection from", shown="the source's"
    )

    @property
    def display_name(self) -> str:
        """The name clients see: the configured one, else the slug (as the predecessor did)."""
        return self.name or self.slug


@dataclass(frozen=True, slots=True)
class Source:
    name: str = setting(doc="unique source name", required=True)
    type: SourceType = setting(
        doc="`oci` (a registry), `static` (a JSON file) or `upstream` (another catalog's "
        "`…/codecollections/{slug}/refs`, rows re-published as they are)",
        required=True,
    )
    auth: AuthConfig = setting(AuthConfig(), doc="credentials, as for `git.auth`", shown="anonymous")
    codecollections: tuple[CodeCollection, ...] = setting((), doc="the collections of this source")
    upstream_url: str | None = setting(
        doc="`upstream` sources: the other catalog's base URL", key="options.upstream_url"
    )
    plain_http: bool = setting(
        False, doc="`oci` sources: allow plain HTTP to a non-loopback registry", key="options.plain_http"
    )
    timeout_seconds: float = setting(
        _UPSTREAM_TIMEOUT,
        doc="`upstream` sources: seconds the other catalog has to answer",
        key="options.timeout",
    )

    def upstream_for(self, cc: CodeCollection) -> str | None:
        """The catalog an `upstream` source reads `cc` from: the collection's own URL wins."""
        return cc.upstream_url or self.upstream_url


@dataclass(frozen=True, slots=True)
class GitConfig:
    enabled: bool = setting(False, doc="mirror git repositories at all")
    data_dir: Path = setting(
        DEFAULT_DATA_DIR,
        doc="where mirrors live: `<data_dir>/<slug>.git` (the predecessor's default, outside a `/data` "
        "volume)",
    )
    mount_path: str = setting("/git", doc="HTTP path prefix for serving")
    public_base_url: str | None = setting(doc="clone URL base for clients: `public_base_url/<slug>.git`")
    runtime_sync: bool = setting(
        True,
        doc="`false` on air-gapped hosts: no git egress (`sync` exits 2 unless `--no-git` or "
        "`--allow-runtime-sync`; the scheduler and admin API skip git); image polls still run",
    )
    auth: AuthConfig = setting(
        AuthConfig(), doc="credentials for http(s) upstreams (one of the forms below)", shown="anonymous"
    )
    codecollections: tuple[str, ...] = setting((), doc="allow-list of slugs to mirror", shown="all")
    clone_timeout_seconds: int = setting(900, doc="timeout of a first clone (and of repacking)")
    fetch_timeout_seconds: int = setting(600, doc="timeout of `ls-remote` and fetch on updates")
    # cccatalog's own keys
    refs: RefScope = setting("branches-and-tags", doc="`all` mirrors every ref (`refs/pull/*` too)")
    parallelism: int = setting(4, doc="repos synced at once (`-j` overrides)")
    lock_timeout_seconds: int = setting(600, doc="how long a sync waits for another process's lock on a repo")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Intervals of the syncs `serve` runs itself (the predecessor's defaults); 0 turns one off."""

    catalog_poll_minutes: int = setting(
        5, doc="image poll interval inside `serve`, first run at start-up; `0` turns it off"
    )
    git_sync_minutes: int = setting(
        60, doc="git sync interval inside `serve`, first run at start-up; `0` turns it off"
    )


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    """`images.runtime_sync: false` is the air-gap guard of the image half, as `git.runtime_sync` is
    of the git half: no registry and no other catalog is polled. `static` files are still read."""

    runtime_sync: bool = setting(
        True,
        doc="`false` where no registry or other catalog may be polled: like `git.runtime_sync`, for `oci` "
        "and `upstream` sources (`static` files are always read)",
    )


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where the state lives: an SQLite file (`path`), or a PostgreSQL database shared by replicas
    (`url`). With a database, `path`'s directory still holds this host's own files (the registry
    cache, lock files of an import)."""

    path: Path = setting(
        required=True,
        doc="the SQLite state file; `$CCCATALOG_STATE_FILE` or a `sqlite:///` `$CC_CATALOG_DB_URL` "
        "override it. With `state.url`, its directory holds only this host's own files (the registry "
        "cache)",
        shown="`<data_dir>/.cccatalog/state.sqlite3`",
    )
    # Where the state came from, as a user would change it: named in messages about it.
    setting: str = field(default="state.path", metadata={"key": ""})
    # kept out of repr: it may carry a password
    url: str | None = field(
        default=None,
        repr=False,
        metadata={
            "doc": "a PostgreSQL database (`postgresql://user@host:5432/db`; no password here: "
            "`PGPASSWORD`) that several `serve` replicas share instead of the file; "
            "`$CCCATALOG_STATE_URL` or a `postgresql://` `$CC_CATALOG_DB_URL` (password included) "
            "override it. See [docs/ha.md](ha.md)",
            "key": None,
            "shown": None,
        },
    )

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "sqlite"

    @property
    def local_dir(self) -> Path:
        """This host's own state files: run locks of the SQLite state, the registry cache."""
        return self.path.parent

    @property
    def display(self) -> str:
        """The state as messages show it: the file, or the URL with its password masked."""
        return display_url(self.url) if self.url else str(self.path)

    def secrets(self, environ: Mapping[str, str]) -> list[str]:
        """The database password wherever it comes from (the URL, libpq's PGPASSWORD), for redaction."""
        if not self.url:
            return []
        return [s for s in (url_password(self.url), environ.get("PGPASSWORD")) if s]


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Who may sign what this site imports (`cccatalog import`) and the manifest `serve` checks at
    start-up: an OpenSSH allowed-signers file, and optionally the one principal in it that must sign."""

    allowed_signers: Path | None = setting(
        doc="OpenSSH allowed-signers file: who may sign what `import` applies and the manifest `serve` "
        "checks its mirrors against at start-up (then a signature is required)"
    )
    signer: str | None = setting(
        doc="the one principal that must have signed (`import --signer` overrides)",
        shown="any principal of the file",
    )


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """`cccatalog serve`: where to listen and how much one host gives to clients."""

    host: str = setting("0.0.0.0", doc="listen address (`--host` overrides)")  # noqa: S104 - a server
    port: int = setting(8080, doc="listen port (`--port` overrides)")
    max_concurrent_upload_packs: int = setting(8, doc="git backends running at once; more wait in the queue")
    max_request_body_mb: int = setting(64, doc="request body cap (413 beyond it)")
    idle_timeout_seconds: int = setting(60, doc="an idle or stalled client connection is closed after this")
    request_timeout_seconds: int = setting(3600, doc="a git backend running longer is killed")
    shutdown_grace_seconds: int = setting(30, doc="how long SIGTERM waits for in-flight requests")
    advertisement_cache_mb: int = setting(
        32, doc="memory for ref advertisements answered without running git; `0` turns it off"
    )
    path_prefix: str = setting(
        "",
        doc="where a reverse proxy mounts serve: links and clone URLs on the status page start with it "
        "(or with a validated `X-Forwarded-Prefix`)",
        shown="none",
    )
    freshness_budget_minutes: int = setting(
        120, doc="how old a mirror may get before the status page, `/metrics` and `status` call it stale"
    )
    # A fleet's burst waits instead of failing (git clients do not retry a 503): room for two bursts
    # of 64 runners, each queued request holding only a thread and its (small) request body.
    max_queued_upload_packs: int = setting(
        128,
        doc="git requests waiting for a backend, served fairly across clients; beyond it 503 + "
        "`Retry-After`; `0` means no queue",
    )
    # 128 uncached shallow fetches drain in about 25 s on two cores; past a minute, say so.
    max_queue_wait_seconds: int = setting(
        60, doc="how long a request may wait in the queue before it gets 503 + `Retry-After`"
    )
    # Fits the example deployment's 1 GiB /data volume beside the state file, and keeps dozens of
    # distinct fleet answers (a shallow fetch of a CodeCollection is ~6 MB).
    pack_cache_mb: int = setting(
        256,
        doc="disk for pack answers made once and sent to every identical fetch "
        "([serving](serving.md#fleets-admission-queue-and-pack-cache)); `0` turns it off",
    )
    # On by default from benchmarks/fleet: one-off answers then cost the disk nothing (1.78 MB per fetch
    # reached it without) and evict nothing, while a fleet's burst shares as before (docs/serving.md).
    pack_cache_second_sight: bool = setting(
        True,
        doc="keep a pack answer only when its request is seen a second time within 10 minutes, or "
        "joins it while it is made (the first is sent through a spool that is not kept): no disk "
        "writes for one-off clones; `false` keeps every answer the first time",
    )
    pack_cache_dir: Path | None = setting(
        doc="where the pack cache lives; must be writable (never the mirrors)",
        shown="`pack-cache` beside the state file",
    )
    replica_id: str | None = setting(
        doc="how this replica names itself in the git status it answers (its mirrors are on its own "
        "disk): see [docs/ha.md](ha.md)",
        shown="the hostname",
    )


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    git: GitConfig
    scheduler: SchedulerConfig
    state: StateConfig
    serve: ServeConfig = field(default_factory=ServeConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    sources: tuple[Source, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def codecollections(self) -> tuple[CodeCollection, ...]:
        return tuple(cc for src in self.sources for cc in src.codecollections)

    def collection(self, slug: str) -> CodeCollection | None:
        return next((cc for cc in self.codecollections if cc.slug == slug), None)

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources if s.name == name), None)

    def polled_collections(self, only: Sequence[str] = ()) -> list[CodeCollection]:
        """Collections whose image builds a sync records: an image_registry on an oci source, a
        static_path on a static source, an upstream catalog URL on an upstream source (narrowed to
        `only` when given)."""
        chosen = []
        for cc in self.codecollections:
            source = self.source(cc.source)
            if (only and cc.slug not in only) or source is None:
                continue
            if (
                (source.type == "oci" and cc.image_registry)
                or (source.type == "static" and cc.static_path)
                or (source.type == "upstream" and source.upstream_for(cc))
            ):
                chosen.append(cc)
        return chosen


# --- loading -----------------------------------------------------------------------------------------

SLUG_RULE = (
    "letters, digits, '.', '_', '-'; must start with a letter or digit; at most 200 characters; "
    "must not end in .git"
)
_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An allowed-signers principal: what `ssh-keygen -Y verify -I` matches (an email-like name).
_PRINCIPAL_RE = re.compile(r"[^\s,\"'*?!]{1,200}")
_SCP_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+")
_MOUNT_RE = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?")
_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")

_TOP_KEYS = ("git", "images", "scheduler", "serve", "sources", "state", "transfer")
_LEGACY_TOP = {
    "destinations": "image mirroring to other registries is not part of cccatalog",
    "storage": "cccatalog keeps its state in an SQLite file or a PostgreSQL database (state.path, state.url)",
    "catalog_api": "not used by cccatalog (serve takes its options on the command line)",
}
_LEGACY_SCHEDULER = dict.fromkeys(
    ("mirror_poll_minutes", "mirror_workers", "per_job_timeout_seconds"), _LEGACY_TOP["destinations"]
)
# The keys each block accepts are its dataclass's fields (a field that is not a key, like a
# collection's `source`, is left out): one list to keep in step with the code.
_GIT_KEYS = tuple(GitConfig.__dataclass_fields__)
_AUTH_KEYS = tuple(AuthConfig.__dataclass_fields__)
_CC_KEYS = tuple(name for name in CodeCollection.__dataclass_fields__ if name != "source")

_T = TypeVar("_T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (it would silently override the first)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def is_valid_slug(slug: str) -> bool:
    """True when `slug` is safe as `<data_dir>/<slug>.git` and in `/git/<slug>.git` URLs."""
    return _SLUG_RE.fullmatch(slug) is not None and not slug.endswith(".git")


def config_path_from_env(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """`explicit`, else $CCCATALOG_CONFIG, else $CC_CATALOG_CONFIG_FILE, else ./config.yaml."""
    if explicit is not None:
        return explicit
    value = envvars.first(environ, envvars.CONFIG)
    return Path(value) if value else Path("config.yaml")


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file, or raise ConfigError listing every problem.

    `environ` (default: os.environ) supplies the config path fallbacks and the state path overrides.
    """
    env = os.environ if environ is None else environ
    path = config_path_from_env(path, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found (set --config or CCCATALOG_CONFIG)"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror or type(exc).__name__}"]) from None
    try:
        data = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_problem(exc)]) from None
    except RecursionError:
        # PyYAML composes nested nodes recursively; no config is nested more than a few levels.
        raise ConfigError(str(path), ["nested too deeply to be a config file"]) from None
    return parse_config(data, path=path, environ=env)


def parse_config(data: object, *, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate already-loaded YAML. Pure: reads no environment beyond `environ` (None = empty).

    Relative paths in the file are taken against the directory of `path`. A YAML null anywhere means
    "not set" (defaults; an empty list for lists).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level: expected a mapping of config keys, got {_describe(data)}"])
    ctx = _Ctx(base_dir=path.absolute().parent)
    top = _Reader(ctx, "", data)
    top.check_keys(_TOP_KEYS, _LEGACY_TOP)
    scheduler = _scheduler(top.child("scheduler"))
    sources, slugs = _sources(top)
    git = _git(top.child("git"), slugs)
    state = _state(top.child("state"), git.data_dir, environ or {})
    serve = _serve(top.child("serve"))
    images = _images(top.child("images"))
    transfer = _transfer(top.child("transfer"))
    if ctx.problems:
        raise ConfigError(str(path), ctx.problems)
    return Config(
        path=path.absolute(),
        git=git,
        scheduler=scheduler,
        state=state,
        serve=serve,
        images=images,
        transfer=transfer,
        sources=sources,
        warnings=tuple(ctx.warnings),
    )


@dataclass
class _Ctx:
    base_dir: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Reader:
    """One mapping of the raw config at key path `where`. Getters record problems and return defaults."""

    def __init__(self, ctx: _Ctx, where: str, data: dict[Any, object] | None = None) -> None:
        self.ctx, self.where, self.data = ctx, where, data or {}

    @classmethod
    def of(cls, ctx: _Ctx, where: str, value: object) -> _Reader | None:
        if value is None:
            return cls(ctx, where)
        if not isinstance(value, dict):
            ctx.problems.append(f"{where}: expected a mapping, got {_describe(value)}")
            return None
        return cls(ctx, where, value)

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str | None, message: str) -> None:
        self.ctx.problems.append(f"{self.key(name) if name else self.where}: {message}")

    def warn(self, name: str, message: str) -> None:
        self.ctx.warnings.append(f"{self.key(name)}: {message}")

    def check_keys(self, allowed: Sequence[str], legacy: Mapping[str, str] | None = None) -> None:
        for key in self.data:
            name = str(key)
            if name in allowed:
                continue
            if legacy and name in legacy:
                self.warn(name, f"ignored — {legacy[name]}")
                continue
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.problem(name, f"unknown key (expected one of: {', '.join(sorted(allowed))}){hint}")

    def child(self, name: str) -> _Reader:
        return _Reader.of(self.ctx, self.key(name), self.data.get(name)) or _Reader(self.ctx, self.key(name))

    def items(self, name: str) -> list[tuple[str, object]]:
        """(key path, value) of each entry of the list at `name`."""
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(name, f"expected a list, got {_describe(value)}")
            return []
        return [(f"{self.key(name)}[{i}]", item) for i, item in enumerate(value)]

    def _value(self, name: str, default: object, ok: bool, expected: str, required: bool = False) -> object:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problem(name, f"is required ({expected})")
            return default
        if ok:
            return value
        self.problem(name, f"expected {expected}, got {_describe(value)}")
        return default

    def str_(self, name: str, default: _T, *, required: bool = False) -> str | _T:
        value = self.data.get(name)
        ok = isinstance(value, str) and bool(value.strip())
        return cast("str | _T", self._value(name, default, ok, "a non-empty string", required))

    def bool_(self, name: str, default: bool) -> bool:
        ok = isinstance(self.data.get(name), bool)
        return cast(bool, self._value(name, default, ok, "true or false"))

    def int_(self, name: str, default: _T, lo: int, hi: int) -> int | _T:
        value = self.data.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return cast("int | _T", self._value(name, default, ok, f"an integer from {lo} to {hi}"))

    def number(self, name: str, default: _T, lo: float, hi: float) -> float | _T:
        value = self.data.get(name)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi
        found = self._value(name, default, ok, f"a number of seconds from {lo:g} to {hi:g}")
        return cast("float | _T", float(found) if isinstance(found, int | float) else found)

    def choice(self, name: str, default: _T, choices: Sequence[str], *, required: bool = False) -> str | _T:
        ok = self.data.get(name) in choices
        expected = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
        return cast("str | _T", self._value(name, default, ok, expected, required))

    def path_(self, name: str, default: _T) -> Path | _T:
        value = self.str_(name, None)
        return default if value is None else self.ctx.base_dir / value


def _scheduler(r: _Reader) -> SchedulerConfig:
    r.check_keys(("catalog_poll_minutes", "git_sync_minutes"), _LEGACY_SCHEDULER)
    d = SchedulerConfig()
    return SchedulerConfig(
        catalog_poll_minutes=r.int_("catalog_poll_minutes", d.catalog_poll_minutes, 0, 1440),
        git_sync_minutes=r.int_("git_sync_minutes", d.git_sync_minutes, 0, 1440),
    )


def _auth(r: _Reader) -> AuthConfig:
    r.check_keys(_AUTH_KEYS)
    names: dict[str, str | None] = {}
    for key in _AUTH_KEYS:
        value = r.data.get(key)
        ok = isinstance(value, str) and _ENV_NAME_RE.fullmatch(value) and not GITHUB_TOKEN.fullmatch(value)
        names[key] = value if ok and isinstance(value, str) else None
        # Never echo the value: it may be the secret itself (and a GitHub token is a valid name).
        if value is not None and not ok:
            r.problem(key, "expected the NAME of an environment variable holding the secret, not the secret")
    given = {key for key in _AUTH_KEYS if r.data.get(key) is not None}
    pair = given & {"user_env", "pass_env"}
    if ("token_env" in given) + bool(pair) + ("dockerconfigjson_env" in given) > 1:
        r.problem(None, "set only one of token_env, user_env+pass_env, dockerconfigjson_env")
    if len(pair) == 1:
        r.problem(None, f"{pair.pop()} is set without {({'user_env', 'pass_env'} - given).pop()}; set both")
    return AuthConfig(**names)


def _sources(top: _Reader) -> tuple[tuple[Source, ...], dict[str, str]]:
    """The sources, and every slug seen -> the key path that first defined it."""
    sources: list[Source] = []
    names: dict[str, str] = {}
    slugs: dict[str, str] = {}
    for where, item in top.items("sources"):
        if (r := _Reader.of(top.ctx, where, item)) is not None:
            sources.append(_source(r, names, slugs))
    return tuple(sources), slugs


def _first_or_duplicate(r: _Reader, name: str, value: str, seen: dict[str, str], what: str) -> None:
    first = seen.setdefault(value, r.key(name))
    if first != r.key(name):
        r.problem(name, f"duplicate {what} {_quote(value)} (first defined at {first})")


def _source(r: _Reader, names: dict[str, str], slugs: dict[str, str]) -> Source:
    r.check_keys(("name", "type", "auth", "codecollections", "options"))
    name = r.str_("name", "", required=True)
    if name:
        _first_or_duplicate(r, "name", name, names, "source name")
    type_ = r.choice("type", "oci", ("oci", "static", "upstream"), required=True)
    auth = _auth(r.child("auth"))
    options = r.child("options")
    options.check_keys(("upstream_url", "plain_http", "timeout"))
    upstream_url = _catalog_url(options, "upstream_url", r.key("auth"))
    timeout = options.number("timeout", _UPSTREAM_TIMEOUT, 1, 3600)
    for key, used_by in (("upstream_url", "upstream"), ("timeout", "upstream"), ("plain_http", "oci")):
        if key in options.data and type_ != used_by:
            options.warn(key, f"ignored — only {used_by} sources use it")
    collections = []
    for where, item in r.items("codecollections"):
        if (reader := _Reader.of(r.ctx, where, item)) is None:
            continue
        cc = _collection(reader, name, slugs, r.key("auth"))
        collections.append(cc)
        if type_ == "upstream" and not (cc.upstream_url or upstream_url):
            reader.warn(
                "upstream_url",
                f"not set here nor in {options.key('upstream_url')}; this collection gets no image refs",
            )
        elif type_ != "upstream" and cc.upstream_url:
            reader.warn("upstream_url", "ignored — only upstream sources use it")
    return Source(
        name=name,
        type=cast(SourceType, type_),
        auth=auth,
        codecollections=tuple(collections),
        upstream_url=upstream_url,
        plain_http=options.bool_("plain_http", False),
        timeout_seconds=timeout,
    )


def _catalog_url(r: _Reader, name: str, auth_key: str) -> str | None:
    """Another catalog's base URL (http or https, no credentials), without a trailing slash."""
    url = r.str_(name, None)
    if url is None:
        return None
    hint = f"credentials belong in environment variables named by {auth_key}"
    if problem := _url_problem(url, ("https", "http"), hint):
        r.problem(name, problem)
    return url.rstrip("/")


def _collection(r: _Reader, source: str, slugs: dict[str, str], auth_key: str) -> CodeCollection:
    r.check_keys(_CC_KEYS)
    slug = r.str_("slug", "", required=True).strip()
    if slug:
        if not is_valid_slug(slug):
            r.problem("slug", f"{_quote(slug)} is not a valid slug ({SLUG_RULE})")
        _first_or_duplicate(r, "slug", slug, slugs, "slug")
    git_url = r.str_("git_url", None)
    if git_url is not None and (problem := _git_url_problem(git_url)):
        r.problem("git_url", problem)
    registry = r.str_("image_registry", None)
    if registry is not None and (problem := _registry_problem(registry)):
        r.problem("image_registry", problem)
    return CodeCollection(
        slug=slug,
        source=source,
        name=r.str_("name", None),
        git_url=git_url,
        image_registry=registry,
        default_ref=r.str_("default_ref", "main"),
        visibility=cast(Visibility, r.choice("visibility", "public", ("public", "hidden"))),
        static_path=r.path_("static_path", None),
        upstream_url=_catalog_url(r, "upstream_url", auth_key),
    )


def _git(r: _Reader, slugs: Mapping[str, str]) -> GitConfig:
    r.check_keys(_GIT_KEYS)
    d = GitConfig()
    mount_path = r.str_("mount_path", d.mount_path)
    if not _MOUNT_RE.fullmatch(mount_path) or mount_path.rstrip("/") in ("/api", "/healthz", "/readyz"):
        r.problem("mount_path", f"expected an absolute URL path such as /git, got {_quote(mount_path)}")
    base_url = r.str_("public_base_url", None)
    if base_url is not None:
        if problem := _url_problem(base_url, ("https", "http"), "clients would see them; remove them"):
            r.problem("public_base_url", problem)
        base_url = base_url.rstrip("/")
    allow: list[str] = []
    for where, item in r.items("codecollections"):
        slug = item.strip() if isinstance(item, str) else None
        if not slug:
            r.ctx.problems.append(f"{where}: expected a slug, got {_describe(item)}")
        elif slug not in slugs:
            # The predecessor warned and went on: such an entry can only ever match nothing.
            close = difflib.get_close_matches(slug, list(slugs), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            r.ctx.warnings.append(
                f"{where}: {_quote(slug)} is not a slug of any configured CodeCollection; "
                f"nothing is mirrored for it{hint}"
            )
            if slug not in allow:
                allow.append(slug)
        elif slug not in allow:
            allow.append(slug)
    return GitConfig(
        enabled=r.bool_("enabled", d.enabled),
        data_dir=r.path_("data_dir", d.data_dir),
        mount_path=mount_path.rstrip("/") or d.mount_path,
        public_base_url=base_url,
        runtime_sync=r.bool_("runtime_sync", d.runtime_sync),
        auth=_auth(r.child("auth")),
        codecollections=tuple(allow),
        clone_timeout_seconds=r.int_("clone_timeout_seconds", d.clone_timeout_seconds, 30, 7200),
        fetch_timeout_seconds=r.int_("fetch_timeout_seconds", d.fetch_timeout_seconds, 30, 3600),
        refs=cast(RefScope, r.choice("refs", d.refs, ("branches-and-tags", "all"))),
        parallelism=r.int_("parallelism", d.parallelism, 1, 64),
        lock_timeout_seconds=r.int_("lock_timeout_seconds", d.lock_timeout_seconds, 0, 86400),
    )


def _images(r: _Reader) -> ImagesConfig:
    r.check_keys(("runtime_sync",))
    return ImagesConfig(runtime_sync=r.bool_("runtime_sync", True))


def _transfer(r: _Reader) -> TransferConfig:
    r.check_keys(("allowed_signers", "signer"))
    signer = r.str_("signer", None)
    if signer is not None and not _PRINCIPAL_RE.fullmatch(signer):
        r.problem("signer", f"expected one principal of the allowed signers file, got {_quote(signer)}")
        signer = None
    allowed = r.path_("allowed_signers", None)
    if signer is not None and allowed is None:
        r.problem("signer", "is set without transfer.allowed_signers (the file that holds its key)")
    return TransferConfig(allowed_signers=allowed, signer=signer)


def _serve(r: _Reader) -> ServeConfig:
    d = ServeConfig()
    r.check_keys(tuple(ServeConfig.__dataclass_fields__))
    return ServeConfig(
        host=r.str_("host", d.host),
        port=r.int_("port", d.port, 0, 65535),
        max_concurrent_upload_packs=r.int_(
            "max_concurrent_upload_packs", d.max_concurrent_upload_packs, 1, 1024
        ),
        max_request_body_mb=r.int_("max_request_body_mb", d.max_request_body_mb, 1, 4096),
        idle_timeout_seconds=r.int_("idle_timeout_seconds", d.idle_timeout_seconds, 1, 3600),
        request_timeout_seconds=r.int_("request_timeout_seconds", d.request_timeout_seconds, 10, 86400),
        shutdown_grace_seconds=r.int_("shutdown_grace_seconds", d.shutdown_grace_seconds, 0, 3600),
        advertisement_cache_mb=r.int_("advertisement_cache_mb", d.advertisement_cache_mb, 0, 4096),
        path_prefix=_path_prefix(r),
        freshness_budget_minutes=r.int_("freshness_budget_minutes", d.freshness_budget_minutes, 1, 525600),
        max_queued_upload_packs=r.int_("max_queued_upload_packs", d.max_queued_upload_packs, 0, 65536),
        max_queue_wait_seconds=r.int_("max_queue_wait_seconds", d.max_queue_wait_seconds, 1, 3600),
        pack_cache_mb=r.int_("pack_cache_mb", d.pack_cache_mb, 0, 1024 * 1024),
        pack_cache_second_sight=r.bool_("pack_cache_second_sight", d.pack_cache_second_sight),
        pack_cache_dir=r.path_("pack_cache_dir", d.pack_cache_dir),
        replica_id=r.str_("replica_id", d.replica_id),
    )


def _path_prefix(r: _Reader) -> str:
    """`/cccatalog` (no trailing slash), or "" for none; the same characters a mount path may use."""
    prefix = r.str_("path_prefix", "/")
    if not is_path_prefix(prefix):
        r.problem("path_prefix", f"expected an absolute URL path such as /cccatalog, got {_quote(prefix)}")
        return ""
    return prefix.rstrip("/")


def is_path_prefix(value: str) -> bool:
    """True for `/`, `/a`, `/a/b/`: segments of URL-safe characters, none starting with a dot (no `..`)."""
    return value == "/" or (len(value) <= 200 and _MOUNT_RE.fullmatch(value) is not None)


def _state(r: _Reader, data_dir: Path, environ: Mapping[str, str]) -> StateConfig:
    """$CCCATALOG_STATE_URL, else $CCCATALOG_STATE_FILE, else $CC_CATALOG_DB_URL (sqlite or
    postgresql), else state.url, else state.path, else a file under git.data_dir."""
    r.check_keys(("path", "url"))
    from_yaml = r.path_("path", None)
    yaml_url = r.str_("url", None)
    local = from_yaml or data_dir / ".cccatalog" / "state.sqlite3"
    if yaml_url is not None and from_yaml is not None:
        r.problem(None, "set state.url (a database) or state.path (a file), not both")
    if value := envvars.first(environ, envvars.STATE_URL):
        found = _state_url(r, envvars.STATE_URL[0], value, local)
        if found is not None:
            return found
    if value := environ.get("CCCATALOG_STATE_FILE"):
        return StateConfig(Path.cwd() / value, "CCCATALOG_STATE_FILE")
    if db_url := environ.get("CC_CATALOG_DB_URL"):
        if (sqlite_path := _sqlite_path(db_url)) is not None:
            return StateConfig(Path.cwd() / sqlite_path, "CC_CATALOG_DB_URL")
        if (pg_url := _postgres_url(db_url)) is not None:
            return StateConfig(local, "CC_CATALOG_DB_URL", pg_url)
        # Never echo the URL: it may carry a database password.
        r.ctx.warnings.append(
            "CC_CATALOG_DB_URL: ignored — only sqlite:///<path> and postgresql://… URLs can be used; "
            "set CCCATALOG_STATE_FILE or state.path instead"
        )
    if yaml_url is not None:
        if url_password(yaml_url):
            r.problem(
                "url",
                "embeds a password; secrets do not belong in the config file: put the URL in "
                "CCCATALOG_STATE_URL (from a secret), or the password in PGPASSWORD",
            )
        elif (found := _state_url(r, r.key("url"), yaml_url, local)) is not None:
            return found
    if from_yaml is not None:
        return StateConfig(from_yaml)
    return StateConfig(local, "git.data_dir (the state file is under it)")


def _state_url(r: _Reader, setting: str, url: str, local: Path) -> StateConfig | None:
    """A state URL of cccatalog's own (an environment variable or state.url): postgresql:// or
    sqlite:///; anything else is a problem (its value never shown: it may carry a password)."""
    if (sqlite_path := _sqlite_path(url)) is not None:
        return StateConfig(Path.cwd() / sqlite_path if setting.isupper() else r.ctx.base_dir / sqlite_path,
                           setting)  # fmt: skip
    if (pg_url := _postgres_url(url)) is not None:
        return StateConfig(local, setting, pg_url)
    r.ctx.problems.append(
        f"{setting}: expected a postgresql://user@host:port/database or sqlite:///<path> URL"
    )
    return None


def _postgres_url(url: str) -> str | None:
    """`url` in libpq's form when it names a PostgreSQL database (`postgres://`, SQLAlchemy's
    `postgresql+psycopg2://` and the like are the same database), else None."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or not (scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")):
        return None
    return f"postgresql://{rest}"


def display_url(url: str) -> str:
    """A database URL as messages show it: the password masked wherever it was given."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))
    except ValueError:
        return "<the state database URL, which cannot be parsed>"


def url_password(url: str) -> str | None:
    """The password a database URL carries (in its userinfo or as `?password=`), for redaction."""
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        return next(iter(parse_qs(parts.query).get("password", [])), None)
    except ValueError:
        return None


def _sqlite_path(url: str) -> str | None:
    """The file of `sqlite:///<path>` (SQLAlchemy form: `sqlite:////abs`, `sqlite:///rel`), else None."""
    scheme, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    if not sep or not (scheme == "sqlite" or scheme.startswith("sqlite+")) or path in ("", ":memory:"):
        return None
    return path


# One component of a repository path in distribution's grammar (lowercase, . _ - between runs).
REPOSITORY_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


def split_registry_host(reference: str) -> tuple[str | None, str]:
    """`ghcr.io/org/x` -> ("ghcr.io", "org/x"); `org/x` -> (None, "org/x") (Docker Hub). The first
    component is a host when it has a dot or a port, or is localhost, as docker and distribution read it."""
    first, sep, rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, reference


def _registry_problem(value: str) -> str | None:
    shown = _quote(strip_url_credentials(value))
    if "://" in value:
        return f"expected host/path without a scheme, like ghcr.io/org/repo; got {shown}"
    host, path = split_registry_host(value)
    components = path.split("/")
    if all(REPOSITORY_COMPONENT_RE.fullmatch(c) for c in components):
        return None
    if all(REPOSITORY_COMPONENT_RE.fullmatch(c) for c in path.lower().split("/")):
        lowered = f"{host}/{path.lower()}" if host else path.lower()
        return f"{shown}: registries only have lowercase repository paths; write {_quote(lowered)}"
    return (
        f"expected host/path like ghcr.io/org/repo (lowercase letters, digits and . _ - between "
        f"slashes after the host); got {shown}"
    )


def _git_url_problem(url: str) -> str | None:
    if "://" in url:
        hint = "credentials belong in environment variables named by git.auth"
        return _url_problem(url, _GIT_SCHEMES, hint)
    if url.startswith("/") or _SCP_RE.fullmatch(url):
        return None
    expected = ", ".join(f"{s}://" for s in _GIT_SCHEMES) + ", user@host:path or an absolute path"
    return f"{_quote(strip_url_credentials(url))} is not a git URL (expected {expected})"


def _url_problem(url: str, schemes: Sequence[str], credentials_hint: str) -> str | None:
    shown = _quote(strip_url_credentials(url))
    try:
        parts = urlsplit(url)
        scheme, host, password = parts.scheme.lower(), parts.hostname, parts.password
    except ValueError:
        return f"{shown} is not a valid URL"
    if scheme not in schemes:
        return f"{shown} has an unsupported scheme (expected {', '.join(s + '://' for s in schemes)})"
    # ssh://git@host is a user name, not a credential; in an http(s) URL any userinfo is one.
    if password is not None or ("@" in parts.netloc and scheme != "ssh"):
        return f"{shown} embeds credentials; {credentials_hint}"
    if not host and scheme != "file":
        return f"{shown} has no host"
    return None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # Only the problem and its position: str(exc) quotes the offending line, which may hold a secret.
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not readable as text ({exc.reason}) at byte {exc.position}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML ({type(exc).__name__})"


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _describe(value: object) -> str:
    """A value as messages show it: short strings quoted, scalars as YAML writes them, containers by kind."""
    if isinstance(value, str):
        return _quote(value)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a value"
