"""What `resolve-latest`'s argument means: a CodeCollection slug from the config (its registry, its
source's credentials, its default ref) or an image repository (the user's Docker/Podman logins).

A bare name (no `/`) is a slug. Without a config to look it up in, it is refused rather than guessed
to be a Docker Hub image: `rw-cli-codecollection` would otherwise quietly become
`docker.io/library/rw-cli-codecollection` and go to the internet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cccatalog.config import Config
from cccatalog.credentials import user_registry_credentials
from cccatalog.errors import CCCatalogError, UsageError
from cccatalog.oci.auth import AuthFor, RegistryAuth, source_auth
from cccatalog.oci.reference import Repository, parse_reference
from cccatalog.oci.resolve import RefResolution
from cccatalog.redact import Redactor


@dataclass(frozen=True, slots=True)
class Target:
    repo: Repository
    auth_for: AuthFor
    default_ref: str


def is_bare_name(text: str) -> bool:
    """A name with no registry or path part: a slug, when a config is at hand."""
    return "/" not in text.strip()


def resolve_target(
    text: str,
    config: Config | None,
    *,
    config_path: Path,
    environ: Mapping[str, str],
    redactor: Redactor,
    plain_http: bool = False,
) -> Target:
    """`config` is the loaded config when there is one (None: no file at `config_path`)."""
    if is_bare_name(text):
        return _slug_target(
            text.strip(),
            config=config,
            config_path=config_path,
            environ=environ,
            redactor=redactor,
            plain_http=plain_http,
        )
    repo, _tag = parse_reference(text, allow_plain_http=plain_http)

    def user_auth(host: str) -> RegistryAuth | None:
        creds = user_registry_credentials(host, environ)
        if creds is None:
            return None
        redactor.add(*creds.secrets)
        return RegistryAuth(basic=creds)

    return Target(repo, user_auth, "main")


def _slug_target(
    slug: str,
    *,
    config: Config | None,
    config_path: Path,
    environ: Mapping[str, str],
    redactor: Redactor,
    plain_http: bool,
) -> Target:
    hint = f"give an image repository instead, like ghcr.io/<org>/{slug} (docker.io/{slug} for Docker Hub)"
    if config is None:
        raise UsageError(
            f"{slug}: looks like a CodeCollection slug, but there is no config file at {config_path} "
            f"to look it up in; pass --config, or {hint}"
        )
    cc = config.collection(slug)
    if cc is None:
        raise UsageError(f"{slug}: no CodeCollection with this slug in {config.path}; {hint}")
    source = config.source(cc.source)
    if source is None or not cc.image_registry:
        raise UsageError(f"{slug}: this CodeCollection has no image_registry in {config.path}")
    repo, _tag = parse_reference(cc.image_registry, allow_plain_http=plain_http or source.plain_http)
    return Target(repo, source_auth(source, environ, redactor), cc.default_ref)


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where `resolve-latest` keeps registry documents: $XDG_CACHE_HOME/cccatalog/oci."""
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "cccatalog" / "oci"


def newest_builds(
    target: Target, refs: Sequence[str] | None, *, environ: Mapping[str, str]
) -> tuple[list[RefResolution], dict[str, int]]:
    """The newest build of each of `refs` (None: every ref), and the registry requests made, by kind.

    Raises CCCatalogError when there is no build at all to report.
    """
    from cccatalog.oci.cache import BlobCache
    from cccatalog.oci.client import RegistryClient
    from cccatalog.oci.resolve import resolve_repository

    with RegistryClient(auth_for=target.auth_for, cache=BlobCache(user_cache_dir(environ))) as client:
        found = resolve_repository(client, target.repo, refs=refs)
        requests = dict(client.counts)
    if not found:
        wanted = refs[0] if refs else "any ref"
        raise CCCatalogError(f"{target.repo.name}: no builds of {wanted} (tags <ref>-<sha7>-<sha7>)")
    return found, requests
