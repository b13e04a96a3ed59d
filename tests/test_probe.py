"""`cccatalog probe`, the release image's HEALTHCHECK: it asks the running server over its socket, so a
server that stops answering fails it (the old in-process `serve --get /healthz` answered a constant
from a new process and called a hung server healthy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import MakeConfig
from tests.servefixtures import serve_process


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCATALOG_")}
    return subprocess.run(
        [sys.executable, "-m", "cccatalog", "probe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_probe_passes_while_serve_answers_and_fails_while_it_is_stopped(
    write_config: MakeConfig, tmp_path: Path
) -> None:
    config = write_config({})
    with serve_process(config) as (proc, url):
        port = url.rpartition(":")[2]
        ok = _probe("--port", port)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.splitlines()[0] == "200"
        assert '"ok"' in ok.stdout
        ready = _probe(f"{url}/readyz", "--timeout", "5")
        assert ready.returncode == 0, ready.stderr

        proc.send_signal(signal.SIGSTOP)  # the kernel still accepts the connection; nobody answers
        try:
            hung = _probe("--port", port, "--timeout", "1")
        finally:
            proc.send_signal(signal.SIGCONT)
        assert hung.returncode == 1
        assert hung.stderr.splitlines() == [f"error: http://127.0.0.1:{port}/healthz: no answer within 1 s"]

        missing = _probe(f"{url}/no-such-page", "--timeout", "5")
        assert missing.returncode == 1
        assert missing.stdout.splitlines()[0] == "404"
        assert missing.stderr.splitlines() == [f"error: {url}/no-such-page: answered 404"]
        assert _probe("--port", port).returncode == 0  # answering again after SIGCONT


def test_probe_of_a_closed_port_fails_with_the_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        out = _probe("--port", str(port), "--timeout", "2")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"error: http://127.0.0.1:{port}/healthz: Connection refused"]
