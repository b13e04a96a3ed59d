"""The `destinations:` block read into Destinations: which keys each type takes, Artifactory URLs and
repository paths, credentials that must be variable names, and filters naming known collections."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

from cccatalog.config.auth import DestinationAuth
from cccatalog.config.destinations import Destination, DestinationType, MirrorFilter, Pointer
from cccatalog.config.reader import Reader, describe, quote, read_settings
from cccatalog.config.sections import auth_names, first_or_duplicate
from cccatalog.config.settings import keys, settings
from cccatalog.config.urls import registry_problem, url_problem
from cccatalog.names import REPOSITORY_COMPONENT_RE, split_registry_host

# An Artifactory repository key and a path under it: repository components, as a registry reads them.
_COMPONENT = REPOSITORY_COMPONENT_RE.pattern
_REPO_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# The keys this module reads itself; the others come from the table.
_READ_HERE = ("name", "type", "base_url", "repo_key", "path_prefix", "registry", "auth", "mirror")
# The keys only one type of destination takes.
_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "jfrog": ("base_url", "repo_key", "path_prefix", "enable_xray_scan"),
    "registry": ("registry",),
}


def destinations(top: Reader, slugs: Mapping[str, str]) -> tuple[Destination, ...]:
    found: list[Destination] = []
    names: dict[str, str] = {}
    for where, item in top.items("destinations"):
        if (r := Reader.of(top.ctx, where, item)) is not None:
            found.append(_destination(r, names, slugs))
    return tuple(found)


def _destination(r: Reader, names: dict[str, str], slugs: Mapping[str, str]) -> Destination:
    r.check_keys(keys(Destination))
    name = r.str_("name", "", required=True)
    if name:
        first_or_duplicate(r, "name", name, names, "destination name")
    # The predecessor knew only `jfrog`, and made it the default.
    (type_setting,) = (s for s in settings(Destination) if s.name == "type")
    type_ = cast(DestinationType, r.choice("type", type_setting.default, type_setting.choices))
    if r.data.get("type", type_setting.default) not in type_setting.choices:
        # Which keys it needs depends on the type: said once the type is right.
        return Destination(name=name, type=type_)
    other = "registry" if type_ == "jfrog" else "jfrog"
    for key in _TYPE_KEYS[other]:
        if key in r.data:
            r.problem(key, f"is not a key of a {type_} destination (only of {other} ones)")
    base_url = repo_key = path_prefix = registry = None
    if type_ == "jfrog":
        base_url = _artifactory_url(r)
        repo_key = _repo_path(r, "repo_key", required=True)
        path_prefix = _repo_path(r, "path_prefix", required=False)
    else:
        registry = _destination_registry(r)
    return Destination(
        name=name,
        type=type_,
        base_url=base_url,
        repo_key=repo_key,
        path_prefix=path_prefix,
        registry=registry,
        auth=DestinationAuth(**auth_names(r.child("auth"), keys(DestinationAuth), "docker_config_env")),
        mirror=_mirror_filter(r.child("mirror"), slugs),
        **read_settings(r, Destination, skip=_READ_HERE),
    )


def _artifactory_url(r: Reader) -> str | None:
    base_url = r.str_("base_url", None, required=True)
    if base_url is None:
        return None
    base_url = base_url.rstrip("/")
    if problem := url_problem(base_url, ("https", "http"), f"name them in {r.key('auth')}"):
        r.problem("base_url", problem)
    elif urlsplit(base_url).path.strip("/"):
        r.problem(
            "base_url",
            f"expected the Artifactory URL without a path, like https://acme.jfrog.io; got {quote(base_url)}",
        )
    elif urlsplit(base_url).scheme == "http" and not _is_loopback_url(base_url):
        r.problem("base_url", "plain http is only used for a loopback Artifactory; use https://")
    return base_url


def _destination_registry(r: Reader) -> str | None:
    registry = r.str_("registry", None, required=True)
    if registry is None:
        return None
    registry = registry.rstrip("/")
    if problem := registry_problem(registry):
        r.problem("registry", problem)
    elif split_registry_host(registry)[0] is None:
        r.problem(
            "registry",
            "expected host[:port]/prefix with a registry host, like registry.example.com/cc; "
            f"got {quote(registry)}",
        )
    return registry


def _is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _repo_path(r: Reader, name: str, *, required: bool) -> str | None:
    value = r.str_(name, None, required=required)
    if value is None:
        return None
    value = value.strip("/")
    if not _REPO_PATH_RE.fullmatch(value):
        r.problem(
            name,
            "expected a repository path (lowercase letters, digits and . _ - between slashes), "
            f"got {quote(value)}",
        )
        return None
    return value


def _mirror_filter(r: Reader, slugs: Mapping[str, str]) -> MirrorFilter:
    r.check_keys(keys(MirrorFilter))
    d = MirrorFilter()
    collections = _strings(r, "codecollections", d.codecollections)
    for slug in collections:
        if slug != "*" and slug not in slugs:
            close = difflib.get_close_matches(slug, list(slugs), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            r.warn(
                "codecollections",
                f"{quote(slug)} is not a slug of any configured CodeCollection; "
                f"nothing is mirrored for it{hint}",
            )
    pointers = _strings(r, "include_pointers", d.include_pointers)
    for pointer in pointers:
        if pointer not in ("latest", "stable"):
            r.problem("include_pointers", f"expected latest and/or stable, got {quote(pointer)}")
    return MirrorFilter(
        codecollections=collections,
        include_pointers=cast("tuple[Pointer, ...]", tuple(p for p in pointers if p in ("latest", "stable"))),
        include_branches=_strings(r, "include_branches", d.include_branches),
        **read_settings(r, MirrorFilter, skip=("codecollections", "include_pointers", "include_branches")),
    )


def _strings(r: Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of non-empty strings (a YAML null: the default; `[]`: none)."""
    if r.data.get(name) is None:
        return default
    found: list[str] = []
    for where, item in r.items(name):
        if isinstance(item, str) and item.strip():
            found.append(item.strip())
        else:
            r.ctx.problems.append(f"{where}: expected a non-empty string, got {describe(item)}")
    return tuple(found)
