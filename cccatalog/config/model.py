"""The config file as typed, frozen objects: one dataclass per block, every key a `setting` with its
default, range or choices and documentation (the table the reader and the reference use)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cccatalog.config.auth import AuthConfig
from cccatalog.config.destinations import Destination
from cccatalog.config.settings import setting
from cccatalog.redact import mask_url_password, url_password

RefScope = Literal["branches-and-tags", "all"]
Visibility = Literal["public", "hidden"]
SourceType = Literal["oci", "static", "upstream"]

# The predecessor's default: baked mirrors live outside /data, so a volume on /data cannot hide them.
DEFAULT_DATA_DIR = Path("/opt/cc-catalog/git")
# Seconds an upstream catalog has to answer (`options.timeout`), the predecessor's default.
UPSTREAM_TIMEOUT = 15.0


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
        UPSTREAM_TIMEOUT,
        doc="`upstream` sources: seconds the other catalog has to answer",
        key="options.timeout",
        range=(1, 3600),
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
    clone_timeout_seconds: int = setting(
        900, doc="timeout of a first clone (and of repacking)", range=(30, 7200)
    )
    fetch_timeout_seconds: int = setting(
        600, doc="timeout of `ls-remote` and fetch on updates", range=(30, 3600)
    )
    # cccatalog's own keys
    refs: RefScope = setting("branches-and-tags", doc="`all` mirrors every ref (`refs/pull/*` too)")
    parallelism: int = setting(4, doc="repos synced at once (`-j` overrides)", range=(1, 64))
    lock_timeout_seconds: int = setting(
        600, doc="how long a sync waits for another process's lock on a repo", range=(0, 86400)
    )


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Intervals of the syncs `serve` runs itself (the predecessor's defaults); 0 turns one off."""

    catalog_poll_minutes: int = setting(
        5, doc="image poll interval inside `serve`, first run at start-up; `0` turns it off", range=(0, 1440)
    )
    git_sync_minutes: int = setting(
        60, doc="git sync interval inside `serve`, first run at start-up; `0` turns it off", range=(0, 1440)
    )
    mirror_poll_minutes: int = setting(
        5,
        doc="image mirroring to `destinations` inside `serve`, first run at start-up; `0` turns it off",
        range=(0, 1440),
    )
    # the predecessor's ranges
    mirror_workers: int = setting(2, doc="images copied to destinations at once", range=(1, 32))
    per_job_timeout_seconds: int = setting(
        600, doc="one image copy running longer than this fails", range=(10, 3600)
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
        return mask_url_password(self.url) if self.url else str(self.path)

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
    port: int = setting(8080, doc="listen port (`--port` overrides)", range=(0, 65535))
    max_concurrent_upload_packs: int = setting(
        8, doc="git backends running at once; more wait in the queue", range=(1, 1024)
    )
    max_request_body_mb: int = setting(64, doc="request body cap (413 beyond it)", range=(1, 4096))
    idle_timeout_seconds: int = setting(
        60, doc="an idle or stalled client connection is closed after this", range=(1, 3600)
    )
    request_timeout_seconds: int = setting(
        3600, doc="a git backend running longer is killed", range=(10, 86400)
    )
    shutdown_grace_seconds: int = setting(
        30, doc="how long SIGTERM waits for in-flight requests", range=(0, 3600)
    )
    advertisement_cache_mb: int = setting(
        32,
        doc="memory for ref advertisements answered without running git; `0` turns it off",
        range=(0, 4096),
    )
    path_prefix: str = setting(
        "",
        doc="where a reverse proxy mounts serve: links and clone URLs on the status page start with it "
        "(or with a validated `X-Forwarded-Prefix`)",
        shown="none",
    )
    freshness_budget_minutes: int = setting(
        120,
        doc="how old a mirror may get before the status page, `/metrics` and `status` call it stale",
        range=(1, 525600),
    )
    # A fleet's burst waits instead of failing (git clients do not retry a 503): room for two bursts
    # of 64 runners, each queued request holding only a thread and its (small) request body.
    max_queued_upload_packs: int = setting(
        128,
        doc="git requests waiting for a backend, served fairly across clients; beyond it 503 + "
        "`Retry-After`; `0` means no queue",
        range=(0, 65536),
    )
    # 128 uncached shallow fetches drain in about 25 s on two cores; past a minute, say so.
    max_queue_wait_seconds: int = setting(
        60, doc="how long a request may wait in the queue before it gets 503 + `Retry-After`", range=(1, 3600)
    )
    # Fits the example deployment's 1 GiB /data volume beside the state file, and keeps dozens of
    # distinct fleet answers (a shallow fetch of a CodeCollection is ~6 MB).
    pack_cache_mb: int = setting(
        256,
        doc="disk for pack answers made once and sent to every identical fetch "
        "([serving](serving.md#fleets-admission-queue-and-pack-cache)); `0` turns it off",
        range=(0, 1024 * 1024),
    )
    # On by default from benchmarks/fleet: one-off answers then cost the disk nothing (1.78 MB per fetch
    # reached it without) and evict nothing, while a fleet's burst shares as before (docs/serving.md).
    pack_cache_second_sight: bool = setting(
        True,
        doc="keep a pack answer only when its request is seen a second time within 10 minutes, or "
        "joins it while it is made (the first is sent through a spool that is not kept): no disk "
        "writes for one-off clones; `false` keeps every answer the first time",
    )
    # On from benchmarks/serving: a full clone handed over ran 0.97x raw upload-pack against the
    # relay's 0.81x, at less CPU per clone (docs/serving.md).
    pack_hand_off: bool = setting(
        True,
        doc="a fetch's last request, when the pack cache does not answer it, gets the connection "
        "itself: git writes the pack to the socket, with no relay, and the connection closes after it "
        "([serving](serving.md#the-pack-hand-off)); `false` relays every answer",
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
    destinations: tuple[Destination, ...] = ()
    warnings: tuple[str, ...] = ()

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

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
