"""The pages `serve` answers besides JSON and git: the status page (`GET /`, `/ui`) and `GET /metrics`.

The status page is one server-rendered HTML document with everything inline: an air-gapped site has
no CDN, so no font, script or style comes from anywhere else, and the Content-Security-Policy forbids
the browser to ask (`default-src 'none'`; the one style block and the few lines of script that make
the copy buttons work are allowed by their hashes). It reads without JavaScript (the clone URLs are
selectable text; the copy buttons only appear when the script runs), at phone width, and in dark mode.

The page is the Jinja2 template `page/status.html` (with `status.css` and `status.js` beside it),
rendered with autoescaping on: everything shown is HTML-escaped, from slugs and URLs to stored error
messages (which are also redacted again), without a call to remember at each place. This module
only gathers what the page shows, as plain values. Hidden CodeCollections are left out. Links and
clone URLs honour `git.mount_path` and a path prefix from a reverse proxy: `X-Forwarded-Prefix` when
it is a plain path (anything else is ignored, so a header cannot inject markup or another host), else
`serve.path_prefix`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Protocol

from jinja2 import DictLoader, Environment, StrictUndefined, Template, pass_context
from jinja2.runtime import Context

from cccatalog import __version__, status
from cccatalog.config import Config, is_path_prefix
from cccatalog.errors import CCCatalogError
from cccatalog.manifest import baked_at
from cccatalog.redact import Redactor
from cccatalog.server import metrics as metrics_module
from cccatalog.timestamps import rfc3339

if TYPE_CHECKING:
    from cccatalog.server.metrics import ServerMetrics

_PAGES = frozenset({"/", "/ui", "/ui/", "/metrics"})
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
_MAX_ERROR_CHARS = 1500


class Headers(Protocol):
    """A request's header fields, looked up by name without regard to case (http.client.HTTPMessage)."""

    def get(self, name: str, failobj: None = None) -> str | None: ...


class Observed(Protocol):
    """What the pages need from a server."""

    metrics: ServerMetrics
    redactor: Redactor


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


def answer(server: Observed, method: str, path: str, headers: Headers) -> Page | None:
    """The answer to `/`, `/ui` or `/metrics`; None for any other path."""
    if path not in _PAGES:
        return None
    if method not in ("GET", "HEAD"):
        body = b'{"detail": "Method Not Allowed"}'
        return Page(405, body, (("Content-Type", "application/json"), ("Allow", "GET, HEAD")))
    if path == "/metrics":
        return Page(
            200,
            server.metrics.exposition(),
            (("Content-Type", metrics_module.CONTENT_TYPE), ("Cache-Control", "no-store")),
        )
    page = render_page(server.metrics, server.redactor, headers, now=datetime.now(UTC))
    return Page(200, page.encode(), _PAGE_HEADERS)


# --- what the page shows -------------------------------------------------------------------------


def request_prefix(headers: Headers, config: Config) -> str:
    """The path a reverse proxy serves us under: a valid X-Forwarded-Prefix, else serve.path_prefix."""
    forwarded = (headers.get("X-Forwarded-Prefix") or "").strip()
    if forwarded and is_path_prefix(forwarded):
        return forwarded.rstrip("/")
    return config.serve.path_prefix


def clone_base(headers: Headers, config: Config, prefix: str) -> str:
    """Where clients clone from: git.public_base_url, else this request's own host and scheme."""
    if config.git.public_base_url:
        return config.git.public_base_url
    host = (headers.get("Host") or "").strip()
    proto = (headers.get("X-Forwarded-Proto") or "http").strip().lower()
    scheme = proto if proto in ("http", "https") else "http"
    origin = f"{scheme}://{host}" if _HOST.fullmatch(host) else ""
    return f"{origin}{prefix}{config.git.mount_path}"


def render_page(metrics: ServerMetrics, redactor: Redactor, headers: Headers, *, now: datetime) -> str:
    api = metrics.api
    config = api.live.current
    budget = config.serve.freshness_budget_minutes * 60
    report, state_error = None, None
    try:
        report = status.collect(
            config,
            api.store,
            budget_seconds=budget,
            now=now,
            baked_at=baked_at(config.git.data_dir),
            servable=api.servable(config),
            include_hidden=False,
        )
    except CCCatalogError as exc:
        state_error = redactor(str(exc))
    prefix = request_prefix(headers, config)
    base = clone_base(headers, config, prefix)
    text, tone = _verdict(report)
    return _template().render(
        now=now,
        verdict={"text": text, "tone": tone},
        budget=status.format_age(budget),
        tiles=_tiles(report, metrics),
        git_enabled=config.git.enabled,
        state_error=state_error,
        repos=[_repo(r, base, redactor) for r in report.repos] if report else [],
        collections=[_collection(c, redactor) for c in report.collections] if report else [],
        hidden=sum(cc.visibility == "hidden" for cc in config.codecollections),
        server=_server(config, metrics, redactor),
        prefix=prefix,
        links=_LINKS,
    )


_LINKS = (
    ("Repositories (JSON)", "/api/v1/git/repos"),
    ("Catalog (JSON)", "/api/v1/catalog/codecollections"),
    ("Metrics", "/metrics"),
    ("Readiness", "/readyz"),
    ("OpenAPI", "/api/openapi.json"),
)

_LABELS = {
    status.Freshness.FRESH: ("fresh", "ok"),
    status.Freshness.FAILING: ("sync failing", "warn"),
    status.Freshness.STALE: ("stale", "bad"),
    status.Freshness.BAKED: ("as baked", "info"),
}


def _verdict(report: status.StatusReport | None) -> tuple[str, str]:
    if report is None:
        return "state unreadable", "bad"
    counts = {f: sum(r.freshness is f for r in report.repos) for f in status.Freshness}
    polls = sum(c.poll_error is not None for c in report.collections)
    problems = [
        f"{n} {label}"
        for n, label in (
            (counts[status.Freshness.STALE], "stale"),
            (counts[status.Freshness.FAILING], "failing"),
            (polls, "image polls failing" if polls != 1 else "image poll failing"),
        )
        if n
    ]
    if problems:
        return " · ".join(problems), "bad" if counts[status.Freshness.STALE] else "warn"
    repos = len(report.repos)
    if not repos:
        return "no repositories mirrored", "info"
    return (f"all {repos} repositories fresh" if repos != 1 else "the repository is fresh"), "ok"


def _tiles(report: status.StatusReport | None, metrics: ServerMetrics) -> list[dict[str, str]]:
    repos = report.repos if report else []
    served = sum(bool(r.servable) for r in repos)
    cap = metrics.settings.max_concurrent_upload_packs
    refused = metrics.refused_recently.count()
    return [
        {
            "label": "Repositories served",
            "value": f"{served} / {len(repos)}",
            "tone": "ok" if served == len(repos) else "warn",
        },
        {"label": "Upload-packs in flight", "value": f"{metrics.backend.running} / {cap}", "tone": ""},
        {"label": "Refused (503), last hour", "value": str(refused), "tone": "warn" if refused else ""},
        {"label": "Uptime", "value": status.format_age(int(metrics.uptime())), "tone": ""},
    ]


def _repo(r: status.RepoStatus, base: str, redactor: Redactor) -> dict[str, object]:
    label, tone = _LABELS[r.freshness]
    return {
        "slug": r.slug,
        "name": r.name,
        "freshness": r.freshness.value,
        "label": label,
        "tone": tone,
        "servable": bool(r.servable),
        "not_served": "no complete mirror yet"
        if r.head_commit is None
        else "mirror missing or incomplete on disk",
        "head_commit": r.head_commit,
        "default_branch": r.default_branch,
        "baked": r.freshness is status.Freshness.BAKED,
        "baked_at": r.baked_at,
        "last_success_at": r.last_success_at,
        "clone_url": f"{base}/{r.slug}.git",
        "error": _error_text(r.last_error, redactor) if r.last_error else None,
        "last_attempt_at": r.last_attempt_at,
    }


def _collection(c: status.CollectionStatus, redactor: Redactor) -> dict[str, object]:
    return {
        "slug": c.slug,
        "name": c.name,
        "latest": c.latest,
        "stable": c.stable,
        "active_refs": c.active_refs,
        "error": _error_text(c.poll_error, redactor) if c.poll_error else None,
    }


def _server(config: Config, metrics: ServerMetrics, redactor: Redactor) -> dict[str, object]:
    live = metrics.api.live
    failed = live.last_reload_failed_at
    return {
        "version": __version__,
        "started": datetime.fromtimestamp(metrics.started, UTC),
        "running": metrics.backend.running,
        "cap": metrics.settings.max_concurrent_upload_packs,
        "refused": metrics.refused_recently.count(),
        "config_path": config.path,
        "loaded": datetime.fromtimestamp(live.loaded_at, UTC),
        "reload_error": (
            _error_text(live.last_reload_error, redactor) if live.last_reload_error and failed else None
        ),
        "reload_failed": datetime.fromtimestamp(failed, UTC) if failed else None,
        "state_in_memory": metrics.api.store.in_memory,
        "state_display": config.state.display,
        "state_location": metrics.api.store.location,
    }


def _error_text(text: str, redactor: Redactor) -> str:
    clean = redactor(text)
    if len(clean) > _MAX_ERROR_CHARS:
        clean = clean[:_MAX_ERROR_CHARS] + " …"
    return clean


@pass_context
def _age(context: Context, when: datetime) -> str:
    now: datetime = context["now"]
    return status.format_age(max(0, int((now - when).total_seconds())))


@functools.cache
def _template() -> Template:
    environment = Environment(
        # The style and script go in verbatim (their hashes are in the CSP), as included templates
        # whose whole text is raw: not values, so autoescaping never touches them.
        loader=DictLoader(
            {
                "status.html": _asset("status.html"),
                "status.css": "{% raw %}" + _STYLE + "{% endraw %}",
                "status.js": "{% raw %}" + _SCRIPT + "{% endraw %}",
            }
        ),
        autoescape=True,  # everything an upstream, a header or the state controls is escaped
        undefined=StrictUndefined,  # a misspelt name is an error in the tests, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["stamp"] = rfc3339
    environment.filters["age"] = _age
    return environment.get_template("status.html")


def _asset(name: str) -> str:
    return (resources.files("cccatalog.server") / "page" / name).read_text(encoding="utf-8")


_STYLE = _asset("status.css")
_SCRIPT = _asset("status.js")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    f"default-src 'none'; style-src {_sha256(_STYLE)}; script-src {_sha256(_SCRIPT)}; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", _CSP),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
