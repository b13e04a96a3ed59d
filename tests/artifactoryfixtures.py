"""A stand-in for JFrog Artifactory made of real parts: nginx in front of a real registry (Debian's
`docker-registry`, htpasswd), answering the registry API on `/v2/` and Artifactory's Docker API path
`/artifactory/api/docker/<repo_key>/v2/...` (the same repository, as Artifactory does), plus Xray's
scan endpoint. Repository keys `answers500`, `answers403` and `answers401` make the API path answer
that status. The access log records every request with its Authorization header, to check where
credentials go."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.registry import RunningRegistry

NGINX = "/usr/sbin/nginx"

_CONF = """\
daemon off;
master_process off;
@USER@
worker_processes 1;
pid @WORK@/nginx.pid;
error_log @WORK@/error.log warn;
events { worker_connections 256; }
http {
    log_format withauth '$request_method $request_uri $status auth="$http_authorization"';
    access_log @WORK@/access.log withauth;
    client_body_temp_path @WORK@/tmp;
    proxy_temp_path @WORK@/tmp;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    server {
        listen 127.0.0.1:@PORT@;
        location ^~ /artifactory/api/docker/answers500/ { return 500; }
        location ^~ /artifactory/api/docker/answers403/ { return 403; }
        location ^~ /artifactory/api/docker/answers401/ { return 401; }
        location ~ ^/artifactory/api/docker/([^/]+)/v2/(.*)$ {
            proxy_set_header Host $http_host;
            proxy_pass http://@REGISTRY@/v2/$1/$2$is_args$args;
        }
        location = /xray/api/v1/scanArtifact {
            if ($request_method != POST) { return 405; }
            return @XRAY@ '{"info": "scan of artifact is in progress"}';
        }
        location /v2/ {
            proxy_set_header Host $http_host;
            proxy_pass http://@REGISTRY@;
        }
    }
}
"""


@dataclass
class FakeArtifactory:
    base_url: str
    host: str
    work: Path
    process: subprocess.Popen[bytes]
    registry: RunningRegistry

    def requests(self) -> list[str]:
        """The access log: `METHOD URI STATUS auth="..."` per request."""
        log = self.work / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def fake_artifactory(
    work: Path, registry: RunningRegistry, *, xray_status: int = 200
) -> Iterator[FakeArtifactory]:
    """nginx in front of `registry` on a free loopback port, until the block ends."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = _CONF
    for key, value in {
        "@USER@": "user root;" if os.geteuid() == 0 else "",
        "@WORK@": str(work),
        "@PORT@": str(port),
        "@REGISTRY@": registry.host,
        "@XRAY@": str(xray_status),
    }.items():
        conf = conf.replace(key, value)
    (work / "nginx.conf").write_text(conf)
    log = open(work / "nginx.out", "ab")  # noqa: SIM115 - nginx writes to it
    process = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    artifactory = FakeArtifactory(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", work, process, registry)
    try:
        deadline = time.monotonic() + 10
        while True:
            with suppress(httpx.HTTPError):
                if (
                    httpx.get(f"{artifactory.base_url}/xray/api/v1/scanArtifact", timeout=1).status_code
                    == 405
                ):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start:\n" + (work / "error.log").read_text()[-2000:])
            time.sleep(0.05)
        yield artifactory
    finally:
        artifactory.stop()
