"""YAML config -> typed, frozen objects. The only module that reads the raw config dict.

The file format is the predecessor's (cc-catalog-svc) plus a few keys of cccatalog's own; every
problem is reported with its key path, all at once, and unknown keys are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

RefScope = Literal["branches-and-tags", "all"]
Visibility = Literal["public", "hidden"]
SourceType = Literal["oci", "static", "upstream"]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Names of environment variables holding credentials; at most one form is set."""

    token_env: str | None = None
    user_env: str | None = None
    pass_env: str | None = None
    dockerconfigjson_env: str | None = None

    @property
    def is_anonymous(self) -> bool:
        return not (self.token_env or self.user_env or self.dockerconfigjson_env)


@dataclass(frozen=True, slots=True)
class CodeCollection:
    slug: str
    source: str
    name: str | None = None
    git_url: str | None = None
    image_registry: str | None = None
    default_ref: str = "main"
    visibility: Visibility = "public"
    static_path: Path | None = None


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    type: SourceType
    auth: AuthConfig = field(default_factory=AuthConfig)
    codecollections: tuple[CodeCollection, ...] = ()
    upstream_url: str | None = None
    plain_http: bool = False


@dataclass(frozen=True, slots=True)
class GitConfig:
    enabled: bool = False
    data_dir: Path = Path("/data/git")
    mount_path: str = "/git"
    public_base_url: str | None = None
    runtime_sync: bool = True
    auth: AuthConfig = field(default_factory=AuthConfig)
    codecollections: tuple[str, ...] = ()
    clone_timeout_seconds: int = 900
    fetch_timeout_seconds: int = 600
    # cccatalog's own keys
    refs: RefScope = "branches-and-tags"
    parallelism: int = 4
    lock_timeout_seconds: int = 600


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    catalog_poll_minutes: int | None = None
    git_sync_minutes: int | None = None


@dataclass(frozen=True, slots=True)
class StateConfig:
    path: Path


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    git: GitConfig
    scheduler: SchedulerConfig
    state: StateConfig
    sources: tuple[Source, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def codecollections(self) -> tuple[CodeCollection, ...]:
        return tuple(cc for src in self.sources for cc in src.codecollections)

    def collection(self, slug: str) -> CodeCollection | None:
        return next((cc for cc in self.codecollections if cc.slug == slug), None)

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources if s.name == name), None)
