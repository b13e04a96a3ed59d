"""The pages `serve` answers besides JSON and git: the status page (`GET /`, `/ui`) and `GET /metrics`.

The status page is one server-rendered HTML document with everything inline: an air-gapped site has
no CDN, so no font, script or style comes from anywhere else, and the Content-Security-Policy forbids
the browser to ask (`default-src 'none'`; the one style block and the few lines of script that make
the copy buttons work are allowed by their hashes). It reads without JavaScript (the clone URLs are
selectable text; the copy buttons only appear when the script runs), at phone width, and in dark mode.

Everything shown is HTML-escaped, from slugs and URLs to stored error messages, which are also
redacted again. Hidden CodeCollections are left out. Links and clone URLs honour `git.mount_path` and
a path prefix from a reverse proxy: `X-Forwarded-Prefix` when it is a plain path (anything else is
ignored, so a header cannot inject markup or another host), else `serve.path_prefix`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

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


@dataclass(frozen=True, slots=True)
class _View:
    config: Config
    report: status.StatusReport | None
    state_error: str | None
    hidden: int
    prefix: str
    clone_base: str
    now: datetime


def render_page(metrics: ServerMetrics, redactor: Redactor, headers: Headers, *, now: datetime) -> str:
    api = metrics.api
    config = api.live.current
    budget = config.serve.freshness_budget_minutes * 60
    report, state_error = None, None
    try:
        report = status.collect(
            config, api.store, budget_seconds=budget, now=now, baked_at=baked_at(config.git.data_dir),
            servable=api.servable(config), include_hidden=False,
        )  # fmt: skip
    except CCCatalogError as exc:
        state_error = redactor(str(exc))
    prefix = request_prefix(headers, config)
    hidden = sum(cc.visibility == "hidden" for cc in config.codecollections)
    view = _View(config, report, state_error, hidden, prefix, clone_base(headers, config, prefix), now)
    parts = [
        _head(),
        _header(view),
        "<main>",
        _tiles(view, metrics),
        _repos(view, redactor),
        _collections(view, redactor),
        _server(view, metrics, redactor),
        "</main>",
        _footer(view),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ]
    return "".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(when: datetime | None, now: datetime, *, never: str = "never") -> str:
    if when is None:
        return f'<span class="muted">{_e(never)}</span>'
    stamp = _e(rfc3339(when))
    age = status.format_age(max(0, int((now - when).total_seconds())))
    return f'<time datetime="{stamp}" title="{stamp}">{_e(age)} ago</time>'


def _since(when: datetime, now: datetime, *, ago: bool = False) -> str:
    """`3h 5m (since 2026-…Z)`, or `3h 5m ago (2026-…Z)`."""
    stamp = _e(rfc3339(when))
    age = _e(status.format_age(max(0, int((now - when).total_seconds()))))
    words = f"{age} ago" if ago else age
    since = "" if ago else "since "
    return f'{words} <span class="muted">({since}<time datetime="{stamp}">{stamp}</time>)</span>'


def _error_text(text: str, redactor: Redactor) -> str:
    clean = redactor(text)
    if len(clean) > _MAX_ERROR_CHARS:
        clean = clean[:_MAX_ERROR_CHARS] + " …"
    return _e(clean)


_LABELS = {
    status.Freshness.FRESH: ("fresh", "ok"),
    status.Freshness.FAILING: ("sync failing", "warn"),
    status.Freshness.STALE: ("stale", "bad"),
    status.Freshness.BAKED: ("as baked", "info"),
}


def _pill(text: str, tone: str) -> str:
    return f'<span class="pill {tone}"><span class="dot" aria-hidden="true"></span>{_e(text)}</span>'


def _head() -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark"><meta name="referrer" content="no-referrer">'
        '<link rel="icon" href="data:,"><title>cccatalog status</title>'
        f"<style>{_STYLE}</style></head><body>"
    )


def _verdict(view: _View) -> tuple[str, str]:
    if view.report is None:
        return "state unreadable", "bad"
    counts = {f: sum(r.freshness is f for r in view.report.repos) for f in status.Freshness}
    polls = sum(c.poll_error is not None for c in view.report.collections)
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
    repos = len(view.report.repos)
    if not repos:
        return "no repositories mirrored", "info"
    return (f"all {repos} repositories fresh" if repos != 1 else "the repository is fresh"), "ok"


def _header(view: _View) -> str:
    text, tone = _verdict(view)
    stamp = _e(rfc3339(view.now))
    return (
        '<header><div class="bar"><div class="brand"><span class="logo" aria-hidden="true"></span>'
        '<span>cccatalog</span></div><span class="muted small">status</span></div>'
        f'<div class="verdict {tone}" id="verdict" data-tone="{tone}"><span class="dot" aria-hidden="true">'
        f'</span><span>{_e(text)}</span></div><p class="muted small">As of <time datetime="{stamp}">'
        f"{stamp}</time> · fresh means synced within the last "
        f"{_e(status.format_age(view.config.serve.freshness_budget_minutes * 60))}</p></header>"
    )


def _tiles(view: _View, metrics: ServerMetrics) -> str:
    repos = view.report.repos if view.report else []
    served = sum(bool(r.servable) for r in repos)
    cap = metrics.settings.max_concurrent_upload_packs
    refused = metrics.refused_recently.count()
    tiles = [
        ("Repositories served", f"{served} / {len(repos)}", "ok" if served == len(repos) else "warn"),
        ("Upload-packs in flight", f"{metrics.backend.running} / {cap}", ""),
        ("Refused (503), last hour", str(refused), "warn" if refused else ""),
        ("Uptime", status.format_age(int(metrics.uptime())), ""),
    ]
    cells = "".join(
        f'<div class="tile {tone}"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}</div></div>'
        for label, value, tone in tiles
    )
    return f'<section class="tiles" aria-label="summary">{cells}</section>'


def _not_served_reason(r: status.RepoStatus) -> str:
    if r.head_commit is None:
        return "no complete mirror yet"
    return "mirror missing or incomplete on disk"


def _repos(view: _View, redactor: Redactor) -> str:
    out = ['<section id="repositories"><h2>Repositories</h2>']
    if not view.config.git.enabled:
        out.append('<p class="empty">Git mirroring is off (<code>git.enabled: false</code>).</p></section>')
        return "".join(out)
    if view.report is None:
        out.append(
            f'<p class="empty bad-text">The state cannot be read: {_e(view.state_error)}</p></section>'
        )
        return "".join(out)
    if not view.report.repos:
        out.append(
            '<p class="empty">No CodeCollection with a <code>git_url</code> is configured.</p></section>'
        )
        return "".join(out)
    out.append(
        '<table class="repos"><thead><tr><th scope="col">Repository</th><th scope="col">State</th>'
        '<th scope="col">Head</th><th scope="col">Last success</th></tr></thead>'
    )
    for r in view.report.repos:
        out.extend(_repo_rows(view, r, redactor))
    out.append("</table></section>")
    return "".join(out)


def _repo_rows(view: _View, r: status.RepoStatus, redactor: Redactor) -> Iterator[str]:
    label, tone = _LABELS[r.freshness]
    slug = _e(r.slug)
    name = f'<div class="muted small">{_e(r.name)}</div>' if r.name != r.slug else ""
    reason = _e(_not_served_reason(r))
    served = "" if r.servable else f'<div class="small warn-text">not served: {reason}</div>'
    head = '<span class="muted">none</span>'
    if r.head_commit:
        branch = f'<div class="small muted">{_e(r.default_branch)}</div>' if r.default_branch else ""
        head = f'<code class="commit" title="{_e(r.head_commit)}">{_e(r.head_commit[:12])}</code>{branch}'
    if r.freshness is status.Freshness.BAKED:
        success = "baked " + _ago(r.baked_at, view.now, never="(time unknown)")
    else:
        success = _ago(r.last_success_at, view.now)
    yield (
        f'<tbody id="repo-{slug}" class="repo" data-slug="{slug}" data-freshness="{_e(r.freshness.value)}">'
        f'<tr><th scope="row" data-label="Repository"><div class="slug">{slug}</div>{name}{served}</th>'
        f'<td data-label="State">{_pill(label, tone)}</td><td data-label="Head">{head}</td>'
        f'<td data-label="Last success">{success}</td></tr>'
    )
    if r.servable:
        # selectable as one piece without JavaScript (user-select: all); the script adds the button
        url = _e(f"{view.clone_base}/{r.slug}.git")
        yield (
            '<tr class="clone-row"><td colspan="4"><div class="clone"><span class="muted small">git clone'
            f'</span><code id="clone-{slug}" class="url" title="clone URL of {slug}">{url}</code>'
            f'<button type="button" class="copy" data-copy="clone-{slug}" hidden>Copy</button>'
            "</div></td></tr>"
        )
    if r.last_error:
        when = _ago(r.last_attempt_at, view.now, never="at an unknown time")
        yield (
            f'<tr class="error-row"><td colspan="4"><div class="error"><strong>Last sync failed</strong> '
            f'{when}: <span class="error-text">{_error_text(r.last_error, redactor)}</span></div></td></tr>'
        )
    yield "</tbody>"


def _pointer(p: status.ImagePointer | None, now: datetime) -> str:
    if p is None:
        return '<span class="muted">none</span>'
    built = _ago(p.built_at, now, never="unknown") if p.built_at else '<span class="muted">unknown</span>'
    digest = f'<code class="digest">{_e(p.digest)}</code>' if p.digest else ""
    return (
        f'<code class="tag">{_e(p.tag)}</code><div class="small muted">built {built}</div>'
        f'<div class="small">{digest}</div>'
    )


def _collections(view: _View, redactor: Redactor) -> str:
    out = ['<section id="collections"><h2>CodeCollections</h2>']
    collections = view.report.collections if view.report else []
    if not collections:
        out.append('<p class="empty">No image builds are tracked yet.</p>')
    else:
        out.append(
            '<table class="collections"><thead><tr><th scope="col">CodeCollection</th>'
            '<th scope="col">Latest</th><th scope="col">Stable</th><th scope="col">Refs</th></tr></thead>'
        )
        for c in collections:
            name = f'<div class="muted small">{_e(c.name)}</div>' if c.name != c.slug else ""
            error = ""
            if c.poll_error:
                error = (
                    '<tr class="error-row"><td colspan="4"><div class="error"><strong>Last image poll '
                    f'failed:</strong> <span class="error-text">{_error_text(c.poll_error, redactor)}</span>'
                    "</div></td></tr>"
                )
            out.append(
                f'<tbody id="cc-{_e(c.slug)}" class="collection" data-slug="{_e(c.slug)}"><tr>'
                f'<th scope="row" data-label="CodeCollection"><div class="slug">{_e(c.slug)}</div>{name}</th>'
                f'<td data-label="Latest">{_pointer(c.latest, view.now)}</td>'
                f'<td data-label="Stable">{_pointer(c.stable, view.now)}</td>'
                f'<td data-label="Refs">{c.active_refs}</td></tr>{error}</tbody>'
            )
        out.append("</table>")
    if view.hidden:
        noun = "collection is" if view.hidden == 1 else "collections are"
        out.append(f'<p class="muted small">{view.hidden} hidden {noun} not listed.</p>')
    out.append("</section>")
    return "".join(out)


def _server(view: _View, metrics: ServerMetrics, redactor: Redactor) -> str:
    live = metrics.api.live
    loaded = datetime.fromtimestamp(live.loaded_at, UTC)
    rows = [
        ("Version", f"<code>{_e(__version__)}</code>"),
        ("Uptime", _since(datetime.fromtimestamp(metrics.started, UTC), view.now)),
        (
            "Upload-packs in flight",
            f"{metrics.backend.running} of {metrics.settings.max_concurrent_upload_packs} allowed at once",
        ),
        ("Refused with 503, last hour", str(metrics.refused_recently.count())),
        ("Config file", f"<code>{_e(view.config.path)}</code>"),
        ("Config loaded", _since(loaded, view.now, ago=True)),
    ]
    if live.last_reload_error and live.last_reload_failed_at:
        failed = _ago(datetime.fromtimestamp(live.last_reload_failed_at, UTC), view.now)
        rows.append(
            (
                "Last reload failed",
                f'{failed}; the config above stays in effect:<pre class="error-text">'
                f"{_error_text(live.last_reload_error, redactor)}</pre>",
            )
        )
    if metrics.api.store.in_memory:
        state = (
            f'<span class="warn-text">unusable ({_e(view.config.state.display)}); state is in memory</span>'
        )
    else:
        state = f"<code>{_e(metrics.api.store.location)}</code>"
    rows.append(("State file", state))
    cells = "".join(f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<section id="server"><h2>Server</h2><dl class="facts">{cells}</dl></section>'


def _footer(view: _View) -> str:
    p = _e(view.prefix)
    links = (
        ("Repositories (JSON)", "/api/v1/git/repos"),
        ("Catalog (JSON)", "/api/v1/catalog/codecollections"),
        ("Metrics", "/metrics"),
        ("Readiness", "/readyz"),
        ("OpenAPI", "/api/openapi.json"),
    )
    items = " · ".join(f'<a href="{p}{_e(path)}">{_e(label)}</a>' for label, path in links)
    return f'<footer class="small muted">{items}</footer>'


_STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--fg:#1c2330;--muted:#5d6778;--line:#e3e7ee;--code:#eef1f5;
--ok:#1a7f4b;--ok-bg:#e4f5ec;--warn:#9a5b00;--warn-bg:#fff2d9;--bad:#b42318;--bad-bg:#fde8e7;
--info:#2f5fb3;--info-bg:#e6eefc;--accent:#3b5bdb;--on-accent:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#0f1319;--card:#171c24;--fg:#e5e9f0;--muted:#98a2b3;
--line:#2a313c;--code:#222a35;--ok:#4ade80;--ok-bg:#12301f;--warn:#fbbf24;--warn-bg:#352811;--bad:#f87171;
--bad-bg:#3b1717;--info:#8db4ff;--info-bg:#172640;--accent:#8da2fb;--on-accent:#0f1319}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1180px;margin:0 auto;padding:0 20px}
header{padding-top:20px}
.bar{display:flex;align-items:baseline;gap:10px}
.brand{display:flex;align-items:center;gap:8px;font-weight:700;font-size:18px;letter-spacing:-.01em}
.logo{width:18px;height:18px;border-radius:5px;background:linear-gradient(135deg,var(--accent),var(--ok))}
.verdict{display:inline-flex;align-items:center;gap:10px;margin:14px 0 4px;padding:10px 16px;
border-radius:12px;font-size:20px;font-weight:650}
.verdict .dot{width:12px;height:12px}
h2{font-size:16px;margin:28px 0 10px;letter-spacing:.01em}
.small{font-size:13px}.muted{color:var(--muted)}
.ok{color:var(--ok);background:var(--ok-bg)}.warn{color:var(--warn);background:var(--warn-bg)}
.bad{color:var(--bad);background:var(--bad-bg)}.info{color:var(--info);background:var(--info-bg)}
.warn-text{color:var(--warn)}.bad-text{color:var(--bad)}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;background:currentColor;flex:none}
.pill{display:inline-flex;align-items:center;gap:6px;padding:2px 10px;border-radius:999px;font-size:13px;
font-weight:600;white-space:nowrap}
.tiles{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin-top:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:12px 14px}
.tile .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.tile .value{font-size:22px;font-weight:650;margin-top:2px;color:var(--fg)}
.tile.warn .value{color:var(--warn)}.tile.ok,.tile.warn{background:var(--card)}
table{width:100%;border-collapse:separate;border-spacing:0;background:var(--card);
border:1px solid var(--line);border-radius:12px;overflow:hidden}
th,td{text-align:left;vertical-align:top;padding:10px 14px;border-top:1px solid var(--line)}
thead th{border-top:0;font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em;
font-weight:600;background:var(--card)}
tbody tr.error-row td,tbody tr.clone-row td{border-top:0;padding-top:0}
.slug{font-weight:650;overflow-wrap:anywhere}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
background:var(--code);padding:1px 5px;border-radius:5px;overflow-wrap:anywhere}
code.commit{white-space:nowrap;overflow-wrap:normal}
code.digest{background:none;padding:0;color:var(--muted);font-size:12px}
.clone{display:flex;align-items:center;gap:10px;min-width:0}
code.url{flex:1;min-width:0;user-select:all;-webkit-user-select:all;color:var(--fg);
border:1px solid var(--line);border-radius:8px;padding:6px 10px}
.copy{font:inherit;font-size:13px;font-weight:600;color:var(--on-accent);background:var(--accent);border:0;
border-radius:8px;padding:6px 14px;cursor:pointer;flex:none}
.copy:focus-visible{outline:2px solid var(--accent);outline-offset:2px}
.error{background:var(--bad-bg);color:var(--fg);border-left:3px solid var(--bad);border-radius:8px;
padding:8px 12px;font-size:13px}
.error strong{color:var(--bad)}
.error-text{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere;
white-space:pre-wrap}
pre.error-text{margin:6px 0 0;font-size:12px}
.empty{background:var(--card);border:1px dashed var(--line);border-radius:12px;padding:14px}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:8px 20px;background:var(--card);
border:1px solid var(--line);border-radius:12px;padding:14px;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0;min-width:0;overflow-wrap:anywhere}
footer{padding:24px 20px 40px}
a{color:var(--accent)}
@media (max-width:760px){
body{font-size:14px}header,main,footer{padding-left:12px;padding-right:12px}
.verdict{font-size:17px}.tiles{grid-template-columns:repeat(2,minmax(0,1fr))}
table,thead,tbody,tr,th,td{display:block}thead{display:none}
table{border:0;background:none}
tbody{background:var(--card);border:1px solid var(--line);border-radius:12px;margin-bottom:12px}
th,td{border-top:0;padding:6px 14px}
tbody tr:first-child th{padding-top:12px}tbody tr:last-child td:last-child{padding-bottom:12px}
td[data-label]::before{content:attr(data-label);display:block;font-size:11px;color:var(--muted);
text-transform:uppercase;letter-spacing:.05em}
.repos tbody tr:first-child{display:grid;grid-template-columns:auto auto 1fr;column-gap:4px}
.repos tbody tr:first-child th{grid-column:1/-1}
.clone .muted{display:none}
.facts{grid-template-columns:1fr;gap:2px}.facts dd{margin-bottom:8px}}
"""

# Shows the copy buttons (hidden without JavaScript: the URL is selectable text) and copies on click;
# navigator.clipboard needs a secure context, plain-HTTP sites fall back to selecting and execCommand.
_SCRIPT = (
    "document.querySelectorAll('button[data-copy]').forEach(function(b){b.hidden=false});"
    "document.addEventListener('click',function(e){var b=e.target.closest('button[data-copy]');if(!b)return;"
    "var c=document.getElementById(b.dataset.copy),r=document.createRange(),s=getSelection();"
    "r.selectNodeContents(c);s.removeAllRanges();s.addRange(r);"
    "var done=function(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy'},1500)};"
    "var old=function(){document.execCommand('copy');done()};"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(c.textContent)"
    ".then(done,old)}else{old()}});"
)


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
