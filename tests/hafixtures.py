"""Replicas of `serve` on one PostgreSQL database, as separate processes, and a slow catalog for them
to poll: an `upstream` source whose answer takes a while and which counts how many polls it is
answering at once (two at once means two replicas polled together)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.apifixtures import ADMIN_TOKEN

# A replica whose scheduler minute is short (`cccatalog serve` has no such option): the same
# run_server the command runs, with the minute's length in seconds as the last argument.
REPLICA = """
import os, sys
from pathlib import Path
from cccatalog.config import load_config
from cccatalog.logs import announce_server_logs, setup_logging
from cccatalog.redact import Redactor
from cccatalog.server.service import run_server

redactor = Redactor()
setup_logging(1, redactor)
announce_server_logs(1)
config = load_config(Path(sys.argv[1]))
run_server(config, host="127.0.0.1", port=int(sys.argv[2]), environ=os.environ, redactor=redactor,
           git_sync_minutes=None, catalog_poll_minutes=1, minute_seconds=float(sys.argv[3]))
"""


@dataclass
class SlowCatalog:
    """Answers `GET /api/v1/catalog/codecollections/{slug}/refs` with `refs[slug]` after `delay`."""

    url: str = ""
    delay: float = 0.3
    refs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    in_flight: int = 0
    most_at_once: int = 0
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def slow_catalog(refs: dict[str, list[dict[str, Any]]], *, delay: float = 0.3) -> Iterator[SlowCatalog]:
    catalog = SlowCatalog(delay=delay, refs=refs)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with catalog.lock:
                catalog.in_flight += 1
                catalog.most_at_once = max(catalog.most_at_once, catalog.in_flight)
            try:
                time.sleep(catalog.delay)
                slug = self.path.split("/")[-2]
                body = json.dumps(catalog.refs.get(slug, [])).encode()
                self.send_response(200 if slug in catalog.refs else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            finally:
                with catalog.lock:
                    catalog.in_flight -= 1
                    catalog.answered += 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    catalog.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield catalog
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def refs(main_commit: str, stable: str = "v1.0.0") -> list[dict[str, Any]]:
    """An upstream catalog's refs answer: main is latest, `stable` the highest release."""
    return [
        {"ref": "main", "ref_type": "branch", "image_tag": f"main-{main_commit}-1111111"},
        {"ref": stable, "ref_type": "tag", "image_tag": f"{stable}-2222222-1111111"},
    ]


def replica_config(
    root: Path,
    name: str,
    *,
    upstream_url: str,
    slugs: Sequence[str],
    git: dict[str, object] | None = None,
    git_urls: dict[str, str] | None = None,
) -> Path:
    """One replica's config: its own name and mirror directory, the catalog polled from `upstream_url`,
    the git upstreams of `git_urls` (slug -> URL)."""
    path = root / name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "serve": {"replica_id": name},
        "git": {"enabled": False, "data_dir": "mirrors", **(git or {})},
        "sources": [
            {
                "name": "connected",
                "type": "upstream",
                "options": {"upstream_url": upstream_url},
                "codecollections": [
                    {"slug": slug, "image_registry": f"registry.example.com/{slug}"}
                    | ({"git_url": (git_urls or {})[slug]} if slug in (git_urls or {}) else {})
                    for slug in slugs
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[str]
    log: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lock released by hand (the database notices the dead connection)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_replica(
    config: Path, *, state_url: str, minute_seconds: float | None = None, env: dict[str, str] | None = None
) -> Replica:
    """`cccatalog serve` as its own process (with the scheduler off), or, given `minute_seconds`, the
    same server with a short scheduler minute. Returns once it answers /healthz."""
    port = _free_port()
    name = config.parent.name
    log = config.parent / "serve.log"
    environ = {
        **os.environ,
        "CCCATALOG_STATE_URL": state_url,
        "CCCATALOG_ADMIN_TOKEN": ADMIN_TOKEN,
        "CC_CATALOG_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    if minute_seconds is None:
        environ["CC_CATALOG_DISABLE_SCHEDULER"] = "1"
        argv = [
            sys.executable,
            "-m",
            "cccatalog",
            "serve",
            "-c",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        argv = [sys.executable, "-c", REPLICA, str(config), str(port), str(minute_seconds)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, env=environ, stdout=out, stderr=out, text=True, cwd="/", start_new_session=True
        )
    replica = Replica(name, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{replica.url}/healthz", timeout=0.5).status_code == 200:
                return replica
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            replica.stop()
            raise RuntimeError(f"replica {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextmanager
def replicas(configs: Sequence[Path], **kwargs: Any) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for config in configs:
            started.append(start_replica(config, **kwargs))
        yield started
    finally:
        for replica in started:
            replica.stop()
