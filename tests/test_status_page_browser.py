"""The status page in a real browser: `cccatalog serve` on loopback with real mirrors (healthy, failing,
never synced, hidden), loaded by headless Chromium (Debian's `chromium`). The DOM after the page's own
script ran is asserted on, screenshots are taken at desktop and phone width, and every request the
page made is checked twice: in Chromium's network log and in serve's access log.

`CCCATALOG_SCREENSHOT_DIR=docs python -m pytest tests/test_status_page_browser.py` refreshes the
screenshots in docs/.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cccatalog.cli import run
from tests.apifixtures import Collection, build, write_catalog_config
from tests.gitfixtures import Upstream
from tests.pagefixtures import Page
from tests.servefixtures import serve_process

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MakeUpstream = Callable[[str], Upstream]
DESKTOP, PHONE = (1280, 1600), (390, 1900)


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run against `url`, which may reach 127.0.0.1 and nothing else."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (tools/install-test-deps installs it)")
    profile = Path(os.path.realpath(tmp_path)) / f"chromium-profile-{len(list(tmp_path.glob('chromium-*')))}"
    profile.mkdir()
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        *args,
        url,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def page_requests(netlog: Path, site: str) -> list[str]:
    """URLs of every request made on behalf of a page whose top frame is on `site` (Chromium's own
    background requests belong to no page and are left out)."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start_job and params.get("network_isolation_key", "").startswith(site):
            urls.append(params["url"])
    return urls


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


NAMES = {
    "rw-cli-codecollection": "RunWhen CLI CodeCollection",
    "rw-public-codecollection": "RunWhen Public CodeCollection",
    "rw-workspace-utils": "RunWhen Workspace Utilities",
}
ROWS = {
    "rw-cli-codecollection": "fresh",
    "rw-public-codecollection": "failing",  # synced once, then its upstream went away
    "rw-workspace-utils": "fresh",
    "legacy-runbooks": "stale",  # never synced: its upstream does not exist
}


def site_config(make_upstream: MakeUpstream, tmp_path: Path) -> Path:
    """Four public repos as an operator would see them after a sync, and one hidden collection."""
    ups = {slug: make_upstream(slug) for slug in NAMES}
    collections = []
    for slug, up in ups.items():
        head, release = up.sha("main"), up.sha("v1.0.0")
        builds = [
            build("main", head[:7], built_at=_iso(timedelta(hours=5)), digest=f"sha256:{head[:32] * 2}"),
            build("v1.0.0", release[:7], built_at=_iso(timedelta(days=12))),
        ]
        collections.append(
            Collection(slug, git_url=up.url, name=NAMES[slug], builds=builds, stable_ref="v1.0.0")
        )
    collections.append(Collection("legacy-runbooks", git_url=(tmp_path / "nowhere").as_uri()))
    collections.append(
        Collection("internal-tools", git_url=ups["rw-cli-codecollection"].url, visibility="hidden")
    )
    path = write_catalog_config(tmp_path / "site" / "config.yaml", collections, git={"public_base_url": None})
    assert run(["-q", "sync", "-c", str(path)]) == 1  # legacy-runbooks has no upstream
    ups["rw-public-codecollection"].path.rename(tmp_path / "moved-away")
    assert run(["-q", "sync", "-c", str(path)]) == 1  # now rw-public-codecollection fails too
    return path


@contextmanager
def serving(config: Path) -> Iterator[tuple[str, list[str]]]:
    """serve as its own process with JSON logs; yields its URL and, after it stopped, its log lines."""
    env = {"CCCATALOG_LOG_FORMAT": "json", "CC_CATALOG_DISABLE_SCHEDULER": "1"}
    lines: list[str] = []
    with serve_process(config, env=env) as (proc, url):
        yield url, lines
    assert proc.stderr is not None
    lines.extend(proc.stderr.read().splitlines())


def test_the_status_page_in_chromium_shows_every_repo_and_asks_no_other_host(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    config = site_config(make_upstream, tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    with serving(config) as (url, log):
        site = f"{urlsplit(url).scheme}://{urlsplit(url).hostname}"
        netlog = tmp_path / "netlog.json"
        dom = chromium(tmp_path, f"{url}/", f"--log-net-log={netlog}", "--dump-dom").stdout
        for name, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
            chromium(
                tmp_path, f"{url}/", f"--screenshot={shots / name}.png", f"--window-size={width},{height}"
            )

    page = Page(dom)
    assert {slug: page.ids[f"repo-{slug}"]["data-freshness"] for slug in ROWS} == ROWS
    for slug in NAMES:
        clone = page.ids[f"clone-{slug}"]
        assert clone["class"] == "url"
        assert f">{url}/git/{slug}.git</code>" in dom
        # the page's script ran under its Content-Security-Policy: the copy button is shown
        assert ("button", {"type": "button", "class": "copy", "data-copy": f"clone-{slug}"}) in page.tags
    assert "clone-legacy-runbooks" not in page.ids
    assert "internal-tools" not in dom
    assert "does not appear to be a git repository" in page.all_text
    assert page.ids["verdict"]["data-tone"] == "bad"
    assert "cc-rw-cli-codecollection" in page.ids

    requested = page_requests(netlog, site)
    assert requested, "the network log shows no request for the page: the check is blind"
    assert {u for u in requested if not u.startswith(f"{url}/")} == set()
    access = [json.loads(line) for line in log]  # every line serve wrote is JSON
    paths = {entry["path"] for entry in access if entry["logger"] == "cccatalog.access"}
    assert paths == {"/", "/healthz"}, "the page asked serve for more than itself"

    for name, (width, _) in (("desktop", DESKTOP), ("phone", PHONE)):
        shot = shots / f"{name}.png"
        assert png_size(shot)[0] == width
        assert shot.stat().st_size > 20_000, "a blank screenshot"
    if target := os.environ.get("CCCATALOG_SCREENSHOT_DIR"):
        for name in ("desktop", "phone"):
            shutil.copy(shots / f"{name}.png", Path(target) / f"status-page-{name}.png")


class _External(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'<!doctype html><title>x</title><img src="http://assets.example.invalid/logo.png">'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_request_check_sees_a_page_that_asks_another_host(tmp_path: Path) -> None:
    """The control for the test above: a page with an external image is caught by `page_requests`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _External)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        netlog = tmp_path / "netlog.json"
        chromium(tmp_path, f"http://127.0.0.1:{server.server_port}/", f"--log-net-log={netlog}", "--dump-dom")
    finally:
        server.shutdown()
        server.server_close()
    assert "http://assets.example.invalid/logo.png" in page_requests(netlog, "http://127.0.0.1")
