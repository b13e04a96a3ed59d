"""Images for the copy, layout and transfer tests: builds that share base layers, pushed over the
plain registry API; a check that a tag names nothing missing; and a loopback front of a real registry
that sends blob downloads and uploads to another origin, recording what each origin was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from tests.registry import (
    ALL_MANIFESTS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    ChallengeAuth,
    RunningRegistry,
    put_manifest,
    registry_client,
    sha256,
    upload_blob,
)


def layer(name: str, size: int = 2048) -> bytes:
    """Incompressible bytes standing for a layer, the same for the same name (base layers shared)."""
    seed = name.encode()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += sha256(seed + counter.to_bytes(8, "big")).encode()
        counter += 1
    return bytes(out[:size])


def _manifest(config: bytes, layers: Sequence[bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
    }
    return json.dumps(doc, sort_keys=True).encode()


@dataclass(frozen=True)
class Build:
    tag: str
    digest: str  # of the index
    blobs: frozenset[str]  # every blob digest (configs and layers)
    manifests: tuple[str, ...] = field(default=())  # child manifest digests


def push_build(
    registry: RunningRegistry,
    repo: str,
    tag: str,
    *,
    base: Sequence[str],
    own: str,
    platforms: Sequence[str] = ("amd64", "arm64"),
    size: int = 2048,
    created: str = "2026-01-02T00:00:00Z",
) -> Build:
    """An index with one manifest per platform: layers `base` (shared between builds) and one layer
    of its own, per platform; its config says when it was built."""
    blobs: set[str] = set()
    entries: list[dict[str, Any]] = []
    with registry_client(registry) as client:
        for arch in platforms:
            layers = [layer(f"{b}/{arch}", size) for b in base] + [layer(f"{own}/{arch}", size)]
            config = json.dumps(
                {
                    "architecture": arch,
                    "os": "linux",
                    "created": created,
                    "own": own,
                    "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in layers]},
                },
                sort_keys=True,
            ).encode()
            for blob in (*layers, config):
                blobs.add(upload_blob(client, repo, blob))
            body = _manifest(config, layers)
            put_manifest(client, repo, sha256(body), body, OCI_MANIFEST)
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(body),
                    "size": len(body),
                    "platform": {"os": "linux", "architecture": arch},
                }
            )
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        digest = put_manifest(client, repo, tag, index, OCI_INDEX)
    return Build(tag, digest, frozenset(blobs), tuple(e["digest"] for e in entries))


def tag_is_whole(registry: RunningRegistry, repo: str, tag: str) -> bool | None:
    """None when the tag does not exist; else whether everything it names (child manifests, configs,
    layers) is there to pull."""
    with registry_client(registry) as client:
        top = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS})
        if top.status_code == 404:
            return None
        top.raise_for_status()
        pending = [top.json()]
        while pending:
            doc = pending.pop()
            for entry in doc.get("manifests", []):
                child = client.get(
                    f"/v2/{repo}/manifests/{entry['digest']}", headers={"Accept": ALL_MANIFESTS}
                )
                if child.status_code != 200:
                    return False
                pending.append(child.json())
            for blob in [doc.get("config"), *doc.get("layers", [])]:
                if blob and client.head(f"/v2/{repo}/blobs/{blob['digest']}").status_code != 200:
                    return False
    return True


# --- a front that sends blob traffic to another origin ---------------------------------------------


@dataclass(frozen=True)
class Seen:
    origin: str  # "front" or "storage"
    method: str
    path: str
    authorization: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OtherOriginFront
    role: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded as data."""

    def _any(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, answer = server.owner.handle(
            server.role, self.command, self.path, dict(self.headers), body
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any


class OtherOriginFront:
    """A registry (anonymous, real) behind a front that wants `Bearer <token>`: its blob downloads
    are redirected (307) to a second loopback origin, "storage", and its upload `Location`s point
    there too. Storage serves from and uploads to the real registry. `seen` records every request."""

    def __init__(self, registry: RunningRegistry, token: str) -> None:
        self.registry = registry
        self.token = token
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        # the front reaches its registry as the robot, whatever the client presented to the front
        self._http = httpx.Client(
            base_url=registry.url, timeout=10, auth=ChallengeAuth(registry.username, registry.password)
        )
        self._servers = []
        for role in ("front", "storage"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.owner, server.role = self, role
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        self.host = f"127.0.0.1:{self._servers[0].server_address[1]}"
        self.storage = f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def handle(
        self, role: str, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        auth = headers.get("Authorization")
        with self._lock:
            self.seen.append(Seen(role, method, urlsplit(target).path, auth))
        if role == "storage":
            return self._storage(method, target, body, headers)
        if auth != f"Bearer {self.token}":
            return 401, {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:9/none"'}, b""
        path = urlsplit(target).path
        if "/blobs/uploads/" in path and method == "POST":
            started = self._http.post(target)
            upstream = str(self._http.base_url.join(started.headers["Location"]))
            return 202, {"Location": f"{self.storage}/upload?to={quote(upstream, safe='')}"}, b""
        if "/blobs/sha256:" in path and method == "GET":
            return 307, {"Location": f"{self.storage}/blob?from={quote(path, safe='')}"}, b""
        forwarded = {k: v for k, v in headers.items() if k.lower() in ("accept", "content-type")}
        answer = self._http.request(method, target, content=body, headers=forwarded)
        kept = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() in ("content-type", "docker-content-digest", "location")
        }
        return answer.status_code, kept, answer.content if method != "HEAD" else b""

    def _storage(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        query = dict(p.split("=", 1) for p in urlsplit(target).query.split("&") if "=" in p)
        if method == "GET" and "from" in query:
            got = self._http.get(unquote(query["from"]))
            return got.status_code, {}, got.content
        if method == "PUT" and "to" in query:
            upstream = httpx.URL(unquote(query["to"])).copy_merge_params({"digest": unquote(query["digest"])})
            done = self._http.put(
                upstream, content=body, headers={"Content-Type": "application/octet-stream"}
            )
            return done.status_code, {}, b""
        return 404, {}, b""

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._http.close()


# --- a pass-through front that holds one upload ----------------------------------------------------


class _HoldingServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: HoldingFront


class _HoldingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _any(self) -> None:
        server = self.server
        assert isinstance(server, _HoldingServer)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, answer = server.owner.forward(self.command, self.path, dict(self.headers), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class HoldingFront:
    """Passes every request to `registry` (its answers' Locations rewritten to the front), except
    that the blob upload after `uploads_before_hold` others is held until `release` is set:
    `held` says a client is waiting there, so a test can kill it at that point."""

    def __init__(self, registry: RunningRegistry, *, uploads_before_hold: int) -> None:
        self.registry = registry
        self.uploads_before_hold = uploads_before_hold
        self.uploads = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=registry.url, timeout=30)
        self._server = _HoldingServer(("127.0.0.1", 0), _HoldingHandler)
        self._server.owner = self
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def forward(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "PUT" and "/blobs/uploads/" in target:
            with self._lock:
                self.uploads += 1
                hold = self.uploads == self.uploads_before_hold + 1
            if hold:
                self.held.set()
                self.release.wait(60)
                return 503, {}, b""
        sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        answer = self._http.request(method, target, content=body, headers=sent)
        kept = {
            k: v.replace(self.registry.url, f"http://{self.host}")
            for k, v in answer.headers.items()
            if k.lower() in ("content-type", "docker-content-digest", "location", "www-authenticate")
        }
        return answer.status_code, kept, answer.content if method != "HEAD" else b""

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
