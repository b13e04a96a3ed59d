"""Each block of the config file read into its dataclass: the plain keys through the table
(`read_settings`), and here only what a table cannot say — credentials that must be variable names,
slugs unique across sources, URLs, paths that must be URL paths, keys that depend on each other."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import cast

from cccatalog.config.auth import AuthConfig
from cccatalog.config.model import (
    CodeCollection,
    GitConfig,
    ImagesConfig,
    SchedulerConfig,
    ServeConfig,
    Source,
    SourceType,
    TransferConfig,
)
from cccatalog.config.reader import Reader, describe, keys_under, quote, read_settings
from cccatalog.config.settings import keys, settings
from cccatalog.config.urls import git_url_problem, registry_problem, url_problem
from cccatalog.names import SLUG_RULE, is_valid_slug
from cccatalog.redact import GITHUB_TOKEN

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An allowed-signers principal: what `ssh-keygen -Y verify -I` matches (an email-like name).
_PRINCIPAL_RE = re.compile(r"[^\s,\"'*?!]{1,200}")
_MOUNT_RE = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?")
_RESERVED_MOUNTS = ("/api", "/healthz", "/readyz")


def scheduler(r: Reader) -> SchedulerConfig:
    r.check_keys(keys(SchedulerConfig))
    return SchedulerConfig(**read_settings(r, SchedulerConfig))


def auth(r: Reader) -> AuthConfig:
    return AuthConfig(**auth_names(r, keys(AuthConfig), "dockerconfigjson_env"))


def auth_names(r: Reader, names: tuple[str, ...], docker_key: str) -> dict[str, str | None]:
    """The environment variable names of an auth block whose keys are `names`: at most one form."""
    r.check_keys(names)
    found: dict[str, str | None] = {}
    for key in names:
        value = r.data.get(key)
        ok = isinstance(value, str) and _ENV_NAME_RE.fullmatch(value) and not GITHUB_TOKEN.fullmatch(value)
        found[key] = value if ok and isinstance(value, str) else None
        # Never echo the value: it may be the secret itself (and a GitHub token is a valid name).
        if value is not None and not ok:
            r.problem(key, "expected the NAME of an environment variable holding the secret, not the secret")
    given = {key for key in names if r.data.get(key) is not None}
    pair = given & {"user_env", "pass_env"}
    if ("token_env" in given) + bool(pair) + (docker_key in given) > 1:
        r.problem(None, f"set only one of token_env, user_env+pass_env, {docker_key}")
    if len(pair) == 1:
        r.problem(None, f"{pair.pop()} is set without {({'user_env', 'pass_env'} - given).pop()}; set both")
    return found


def sources(top: Reader) -> tuple[tuple[Source, ...], dict[str, str]]:
    """The sources, and every slug seen -> the key path that first defined it."""
    found: list[Source] = []
    names: dict[str, str] = {}
    slugs: dict[str, str] = {}
    for where, item in top.items("sources"):
        if (r := Reader.of(top.ctx, where, item)) is not None:
            found.append(_source(r, names, slugs))
    return tuple(found), slugs


def first_or_duplicate(r: Reader, name: str, value: str, seen: dict[str, str], what: str) -> None:
    first = seen.setdefault(value, r.key(name))
    if first != r.key(name):
        r.problem(name, f"duplicate {what} {quote(value)} (first defined at {first})")


def _source(r: Reader, names: dict[str, str], slugs: dict[str, str]) -> Source:
    r.check_keys(keys(Source))
    name = r.str_("name", "", required=True)
    if name:
        first_or_duplicate(r, "name", name, names, "source name")
    (type_setting,) = (s for s in settings(Source) if s.name == "type")
    type_ = r.choice("type", "oci", type_setting.choices, required=True)
    source_auth = auth(r.child("auth"))
    options = r.child("options")
    options.check_keys(keys_under(Source, "options."))
    upstream_url = _catalog_url(options, "upstream_url", r.key("auth"))
    read = read_settings(options, Source, prefix="options.", skip=("upstream_url",))
    for key, used_by in (("upstream_url", "upstream"), ("timeout", "upstream"), ("plain_http", "oci")):
        if key in options.data and type_ != used_by:
            options.warn(key, f"ignored — only {used_by} sources use it")
    collections = []
    for where, item in r.items("codecollections"):
        if (reader := Reader.of(r.ctx, where, item)) is None:
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
        auth=source_auth,
        codecollections=tuple(collections),
        upstream_url=upstream_url,
        **read,
    )


def _catalog_url(r: Reader, name: str, auth_key: str) -> str | None:
    """Another catalog's base URL (http or https, no credentials), without a trailing slash."""
    url = r.str_(name, None)
    if url is None:
        return None
    hint = f"credentials belong in environment variables named by {auth_key}"
    if problem := url_problem(url, ("https", "http"), hint):
        r.problem(name, problem)
    return url.rstrip("/")


def _collection(r: Reader, source: str, slugs: dict[str, str], auth_key: str) -> CodeCollection:
    r.check_keys(keys(CodeCollection))
    slug = r.str_("slug", "", required=True).strip()
    if slug:
        if not is_valid_slug(slug):
            r.problem("slug", f"{quote(slug)} is not a valid slug ({SLUG_RULE})")
        first_or_duplicate(r, "slug", slug, slugs, "slug")
    git_url = r.str_("git_url", None)
    if git_url is not None and (problem := git_url_problem(git_url)):
        r.problem("git_url", problem)
    registry = r.str_("image_registry", None)
    if registry is not None and (problem := registry_problem(registry)):
        r.problem("image_registry", problem)
    return CodeCollection(
        slug=slug,
        source=source,
        git_url=git_url,
        image_registry=registry,
        upstream_url=_catalog_url(r, "upstream_url", auth_key),
        **read_settings(r, CodeCollection, skip=("slug", "git_url", "image_registry", "upstream_url")),
    )


def git(r: Reader, slugs: Mapping[str, str]) -> GitConfig:
    r.check_keys(keys(GitConfig))
    d = GitConfig()
    mount_path = r.str_("mount_path", d.mount_path)
    if not _MOUNT_RE.fullmatch(mount_path) or mount_path.rstrip("/") in _RESERVED_MOUNTS:
        r.problem("mount_path", f"expected an absolute URL path such as /git, got {quote(mount_path)}")
    base_url = r.str_("public_base_url", None)
    if base_url is not None:
        if problem := url_problem(base_url, ("https", "http"), "clients would see them; remove them"):
            r.problem("public_base_url", problem)
        base_url = base_url.rstrip("/")
    return GitConfig(
        mount_path=mount_path.rstrip("/") or d.mount_path,
        public_base_url=base_url,
        auth=auth(r.child("auth")),
        codecollections=_allow_list(r, slugs),
        **read_settings(r, GitConfig, skip=("mount_path", "public_base_url", "auth", "codecollections")),
    )


def _allow_list(r: Reader, slugs: Mapping[str, str]) -> tuple[str, ...]:
    allow: list[str] = []
    for where, item in r.items("codecollections"):
        slug = item.strip() if isinstance(item, str) else None
        if not slug:
            r.ctx.problems.append(f"{where}: expected a slug, got {describe(item)}")
            continue
        if slug not in slugs:
            # The predecessor warned and went on: such an entry can only ever match nothing.
            close = difflib.get_close_matches(slug, list(slugs), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            r.ctx.warnings.append(
                f"{where}: {quote(slug)} is not a slug of any configured CodeCollection; "
                f"nothing is mirrored for it{hint}"
            )
        if slug not in allow:
            allow.append(slug)
    return tuple(allow)


def images(r: Reader) -> ImagesConfig:
    r.check_keys(keys(ImagesConfig))
    return ImagesConfig(**read_settings(r, ImagesConfig))


def transfer(r: Reader) -> TransferConfig:
    r.check_keys(keys(TransferConfig))
    signer = r.str_("signer", None)
    if signer is not None and not _PRINCIPAL_RE.fullmatch(signer):
        r.problem("signer", f"expected one principal of the allowed signers file, got {quote(signer)}")
        signer = None
    read = read_settings(r, TransferConfig, skip=("signer",))
    if signer is not None and read["allowed_signers"] is None:
        r.problem("signer", "is set without transfer.allowed_signers (the file that holds its key)")
    return TransferConfig(signer=signer, **read)


def serve(r: Reader) -> ServeConfig:
    r.check_keys(keys(ServeConfig))
    return ServeConfig(path_prefix=_path_prefix(r), **read_settings(r, ServeConfig, skip=("path_prefix",)))


def _path_prefix(r: Reader) -> str:
    """`/cccatalog` (no trailing slash), or "" for none; the same characters a mount path may use."""
    prefix = r.str_("path_prefix", "/")
    if not is_path_prefix(prefix):
        r.problem("path_prefix", f"expected an absolute URL path such as /cccatalog, got {quote(prefix)}")
        return ""
    return prefix.rstrip("/")


def is_path_prefix(value: str) -> bool:
    """True for `/`, `/a`, `/a/b/`: segments of URL-safe characters, none starting with a dot (no `..`)."""
    return value == "/" or (len(value) <= 200 and _MOUNT_RE.fullmatch(value) is not None)
