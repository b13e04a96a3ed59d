"""A real `serve` for tests: in-process on a loopback port, or as a separate `cccatalog serve` process."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx

from cccatalog.config import Config, load_config
from cccatalog.gitmirror.refstate import RACY_SECONDS
from cccatalog.redact import Redactor
from cccatalog.server.app import CatalogServer
from cccatalog.server.cgi import HttpBackend
from cccatalog.server.service import build_service


@contextmanager
def running_server(
    config: Config,
    *,
    backend: HttpBackend | None = None,
    racy_seconds: float = RACY_SECONDS,
    **settings: object,
) -> Iterator[CatalogServer]:
    """Serve `config` on 127.0.0.1:<free port> in a thread; `settings` override the serve block.
    `racy_seconds=0` lets a test that has just synced see advertisements kept at once."""
    serve_settings = replace(config.serve, **settings)  # type: ignore[arg-type]
    service = build_service(config, environ=dict(os.environ), redactor=Redactor())
    server = service.serve_on(
        ("127.0.0.1", 0), settings=serve_settings, backend=backend, racy_seconds=racy_seconds
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        service.close()


def wait_for_stderr(proc: subprocess.Popen[str], text: str, timeout: float = 15.0) -> str:
    """What `proc` has written to its (piped) stderr up to the first line holding `text`; fails the
    test when the process says nothing of the kind in time."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"serve never said {text!r}; it said: {seen.decode(errors='replace')[-2000:]}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"serve closed stderr before saying {text!r}: {seen.decode(errors='replace')}"
            seen += chunk
    return seen.decode(errors="replace")


@contextmanager
def serve_process(
    config_path: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    options: tuple[str, ...] = (),
    scheduler: bool = False,
    wrapper: tuple[str, ...] = (),
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m cccatalog [options] serve` on a free port as its own process; yields (process, base
    URL). `options` are the global ones (`-vv`); `wrapper` is a command line it runs under (`unshare
    ...`). The scheduler (on by default in a real deployment)
    stays off unless asked for: its start-up syncs would race the test's own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        *wrapper,
        sys.executable,
        "-m",
        "cccatalog",
        *options,
        "serve",
        "-c",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **({} if scheduler else {"CC_CATALOG_DISABLE_SCHEDULER": "1"}), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        user=user,
        cwd="/",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def synced_config(config_path: Path) -> Config:
    """Load `config_path` and sync it once with the real CLI, so every mirror is published."""
    from cccatalog.cli import run

    assert run(["-q", "sync", "-c", str(config_path)]) == 0
    return load_config(config_path)
