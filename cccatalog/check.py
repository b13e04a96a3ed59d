"""`cccatalog check`: is this config ready to run here? Every answer is found without changing anything.

Checked: the config itself (and its warnings), the environment variables it names (set, non-empty,
Docker configs readable and covering their hosts), the state file (readable, a cccatalog state file,
its schema version) or the state database (reachable with its credentials, its schema version, read
without writing anything) and the data directory (a directory this user can write), each mirror on
disk, each `static_path` file; with `network`, whether each upstream answers `ls-remote` and each registry
lists tags, with the configured credentials. Nothing is created: no state file, no directory, no lock,
no cache entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cccatalog.catalog.store import state_database_version, state_file_version
from cccatalog.config import AuthConfig, Config
from cccatalog.credentials import docker_config_lookup, url_host
from cccatalog.errors import CCCatalogError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import is_complete
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.gitmirror.sync import MirrorSyncer, SyncOptions, plan_sync
from cccatalog.paths import writable_dir_problem
from cccatalog.redact import Redactor
from cccatalog.signing import allowed_signers_problem


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    subject: str  # what was checked: a key path, a slug, a file
    status: Status
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"subject": self.subject, "status": self.status.value, "detail": self.detail}


@dataclass(slots=True)
class CheckReport:
    config: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "config": str(self.config),
            "ok": not self.failed,
            "checks": [c.to_json() for c in self.checks],
        }


def check(
    config: Config, *, environ: Mapping[str, str], redactor: Redactor, network: bool = False
) -> CheckReport:
    report = CheckReport(config.path)
    add = report.checks.append
    redactor.add(*config.state.secrets(environ))  # the database password, in anything logged
    mirrored = sorted(mirrored_slugs(config))
    collections = len(config.codecollections)
    add(
        Check(
            "config",
            Status.OK,
            f"{len(config.sources)} sources, {collections} CodeCollections, {len(mirrored)} mirrored",
        )
    )
    for warning in config.warnings:
        add(Check("config", Status.WARN, warning))
    report.checks.extend(_credentials(config, environ))
    report.checks.extend(_directories(config, environ))
    git = Git(redactor=redactor, environ=environ)
    layout = Layout(config.git.data_dir)
    for slug in mirrored:
        repo = layout.repo(slug)
        if is_complete(git, repo):
            add(Check(f"mirror {slug}", Status.OK, f"complete at {repo}"))
        else:
            state = "incomplete" if repo.exists() else "not cloned yet"
            add(Check(f"mirror {slug}", Status.WARN, f"{state} ({repo}): a sync makes it"))
    for cc in config.codecollections:
        if cc.static_path is not None:
            add(_static_file(cc.slug, cc.static_path))
    if (signers := config.transfer.allowed_signers) is not None:
        add(_allowed_signers(signers))
    if network:
        report.checks.extend(_network(config, git, environ, redactor))
    return report


def _credentials(config: Config, environ: Mapping[str, str]) -> Iterator[Check]:
    blocks: list[tuple[str, list[tuple[str, str | None]], list[str]]] = []
    if mirrored_slugs(config):
        hosts = [h for cc in config.codecollections if cc.git_url and (h := _http_host(cc.git_url))]
        blocks.append(("git.auth", _names(config.git.auth), hosts))
    for i, source in enumerate(config.sources):
        hosts = [url_host(cc.image_registry) or "" for cc in source.codecollections if cc.image_registry]
        blocks.append((f"sources[{i}].auth", _names(source.auth), hosts))
    for i, destination in enumerate(config.destinations):
        auth = destination.auth  # the predecessor's name for the Docker config key
        names = [
            ("token_env", auth.token_env),
            ("user_env", auth.user_env),
            ("pass_env", auth.pass_env),
            ("docker_config_env", auth.docker_config_env),
        ]
        blocks.append((f"destinations[{i}].auth", names, [destination.host]))
    for key, names, hosts in blocks:
        for name, var in names:
            if var is None:
                continue
            value = environ.get(var, "")
            if not value:
                yield Check(f"{key}.{name}", Status.FAIL, f"environment variable {var} is not set or empty")
                continue
            if name not in ("dockerconfigjson_env", "docker_config_env"):
                yield Check(f"{key}.{name}", Status.OK, f"{var} is set")
                continue
            yield from _docker_config(f"{key}.{name}", var, value, hosts)


def _names(auth: AuthConfig) -> list[tuple[str, str | None]]:
    return [
        ("token_env", auth.token_env),
        ("user_env", auth.user_env),
        ("pass_env", auth.pass_env),
        ("dockerconfigjson_env", auth.dockerconfigjson_env),
    ]


def _docker_config(subject: str, var: str, value: str, hosts: list[str]) -> Iterator[Check]:
    missing = []
    for host in sorted(set(hosts)):
        try:
            if docker_config_lookup(value, host, origin=f"{subject} ({var})") is None:
                missing.append(host)
        except CCCatalogError as exc:
            yield Check(subject, Status.FAIL, str(exc))
            return
    if missing:
        yield Check(subject, Status.WARN, f"{var} has no credentials for {', '.join(missing)}")
    else:
        yield Check(subject, Status.OK, f"{var} is a Docker config covering every host")


def _directories(config: Config, environ: Mapping[str, str]) -> Iterator[Check]:
    if mirrored_slugs(config):
        problem = writable_dir_problem(config.git.data_dir)
        where = config.git.data_dir
        if problem and _baked_read_only(config):
            # The air-gapped layout: mirrors baked into the image, read-only by design; serve only
            # reads them and nothing syncs them here.
            yield Check(
                "git.data_dir",
                Status.OK,
                f"{where} is read-only, as baked mirrors are: serve reads "
                "them and git.runtime_sync is false (import needs a writable copy)",
            )
        elif problem:
            yield Check("git.data_dir", Status.FAIL, problem)
        else:
            shown = "exists" if where.is_dir() else "will be created"
            yield Check("git.data_dir", Status.OK, f"{where} {shown} and is writable")
    if mirrored_slugs(config) and not config.git.public_base_url:
        yield Check(
            "git.public_base_url",
            Status.WARN,
            "not set: the catalog API's git_url sends clients to "
            "each collection's upstream, not to this server; set it to the clone URL base clients "
            f"reach this server by (e.g. http://cc-catalog:8080{config.git.mount_path})",
        )
    if config.state.url:
        yield _state_database(config, environ)
        return
    state = config.state.path
    try:
        version = state_file_version(state)
    except CCCatalogError as exc:
        yield Check("state.path", Status.FAIL, str(exc))
        return
    problem = writable_dir_problem(state.parent)
    if problem:
        yield Check("state.path", Status.FAIL, f"the state file's directory: {problem}")
    elif version is None:
        yield Check("state.path", Status.OK, f"{state} will be created by the first sync or serve")
    else:
        from cccatalog.catalog.migrations import MIGRATIONS

        note = "current" if version == len(MIGRATIONS) else "the next sync or serve migrates it"
        yield Check("state.path", Status.OK, f"{state}: schema version {version} ({note})")


def _baked_read_only(config: Config) -> bool:
    """git.data_dir is an existing, readable directory that nothing here is meant to sync into."""
    where = config.git.data_dir
    return not config.git.runtime_sync and where.is_dir() and os.access(where, os.R_OK | os.X_OK)


def _state_database(config: Config, environ: Mapping[str, str]) -> Check:
    from cccatalog.catalog.migrations import MIGRATIONS

    state = config.state
    assert state.url is not None
    try:
        version = state_database_version(state.url, secrets=state.secrets(environ))
    except CCCatalogError as exc:
        return Check(state.setting, Status.FAIL, str(exc))
    if version is None:
        note = "the predecessor's tables: the first sync or serve adopts them"
    elif version == 0:
        note = "empty: the first sync or serve creates the schema"
    else:
        note = "current" if version == len(MIGRATIONS) else "the next sync or serve migrates it"
        note = f"schema version {version} ({note})"
    return Check(state.setting, Status.OK, f"{state.display}: {note}")


def _static_file(slug: str, path: Path) -> Check:
    subject = f"static_path {slug}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return Check(subject, Status.FAIL, f"{path}: {exc.strerror or type(exc).__name__}")
    except (ValueError, UnicodeDecodeError) as exc:
        return Check(subject, Status.FAIL, f"{path}: not valid JSON ({type(exc).__name__})")
    refs = data.get("refs") if isinstance(data, dict) else None
    if not isinstance(refs, list):
        return Check(subject, Status.FAIL, f"{path}: expected an object with a 'refs' list")
    return Check(subject, Status.OK, f"{path}: {len(refs)} builds listed")


def _allowed_signers(path: Path) -> Check:
    subject = "transfer.allowed_signers"
    try:
        text = path.read_text(encoding="utf-8")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as exc:
        return Check(subject, Status.FAIL, f"{path}: {exc.strerror or type(exc).__name__}")
    except UnicodeDecodeError:
        return Check(subject, Status.FAIL, f"{path}: not a text file")
    if problem := allowed_signers_problem(text):
        return Check(subject, Status.FAIL, f"{path}: {problem}")
    return Check(subject, Status.OK, f"{path}: {len(lines)} signers")


def _network(config: Config, git: Git, environ: Mapping[str, str], redactor: Redactor) -> Iterator[Check]:
    tasks = plan_sync(config)
    if tasks and not config.git.runtime_sync:
        yield Check("upstreams", Status.WARN, "git.runtime_sync is false: upstreams were not contacted")
    elif tasks:
        syncer = MirrorSyncer(
            git=git,
            layout=Layout(config.git.data_dir),
            options=SyncOptions.from_config(config),
            environ=environ,
        )
        for task in tasks:
            try:
                count = syncer.probe(task)
            except CCCatalogError as exc:
                yield Check(f"upstream {task.slug}", Status.FAIL, redactor(str(exc)))
            else:
                yield Check(f"upstream {task.slug}", Status.OK, f"{task.display_url} answers: {count} refs")
    yield from _registries(config, environ, redactor)


def _registries(config: Config, environ: Mapping[str, str], redactor: Redactor) -> Iterator[Check]:
    from cccatalog.oci.auth import source_auth
    from cccatalog.oci.client import RegistryClient
    from cccatalog.oci.reference import parse_reference
    from cccatalog.oci.tags import group_by_ref

    for source in config.sources:
        if source.type != "oci" or not any(cc.image_registry for cc in source.codecollections):
            continue
        with RegistryClient(auth_for=source_auth(source, environ, redactor), cache=None) as client:
            for cc in source.codecollections:
                if not cc.image_registry:
                    continue
                subject = f"registry {cc.slug}"
                try:
                    repo, _ = parse_reference(cc.image_registry, allow_plain_http=source.plain_http)
                    tags = client.list_tags(repo)
                except CCCatalogError as exc:
                    yield Check(subject, Status.FAIL, redactor(str(exc)))
                    continue
                builds = f"{len(tags)} tags, builds of {len(group_by_ref(tags))} refs"
                yield Check(subject, Status.OK, f"{cc.image_registry}: {builds}")


def _http_host(url: str) -> str | None:
    return url_host(url) if url.lower().startswith(("https://", "http://")) else None
