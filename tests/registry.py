"""Real OCI registries on loopback for tests: distribution 2.8 in three auth modes, a token server,
image pushes over the plain HTTP API, a proxy that lies about `Last-Modified`, and `skopeo inspect`."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Mode = Literal["anonymous", "basic", "token"]
Kind = Literal["docker-v2", "oci", "oci-index"]
Platform = tuple[str, str]  # (os, architecture)
TokenField = Literal["token", "access_token"]
Grant = tuple[str, str, tuple[str, ...]]  # (type, name, actions)

USERNAME = "robot"
PASSWORD = "s3cret-robot-pw"
SERVICE = "cccatalog-test-registry"
ISSUER = "cccatalog-test-token-issuer"
BASIC_REALM = "cccatalog-test-realm"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"
ALL_MANIFESTS = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json", DOCKER_MANIFEST]
)
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"

_POLL_SECONDS = 0.02
_nonces = itertools.count()


def _serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def _stop_server(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection reuse is exercised

    def log_message(self, format: str, *args: Any) -> None:
        """Test output stays clean; requests are recorded as data instead."""

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# --- token server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    path: str
    query: dict[str, list[str]]
    has_authorization: bool
    username: str | None
    status: int
    granted: tuple[Grant, ...]


class _TokenHTTPServer(ThreadingHTTPServer):
    owner: TokenServer


class _TokenHandler(_QuietHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _TokenHTTPServer)
        status, body = server.owner.handle(self.path, self.headers.get("Authorization"))
        self._reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


class TokenServer:
    """Distribution's token auth: ES256 JWTs whose `x5c` header carries a self-signed P-256 certificate.

    Settings are plain attributes; a test that changes them on a session fixture must restore them."""

    def __init__(
        self,
        *,
        password: str = PASSWORD,
        anonymous_pull: bool = True,
        token_field: TokenField = "token",  # noqa: S107 - a JSON key, not a secret
        expires_in: int | None = 300,
    ) -> None:
        self.password = password
        self.anonymous_pull = anonymous_pull
        self.token_field = token_field
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _self_signed_certificate(self._key)
        self._x5c = base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()
        self._server = _TokenHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._server.owner = self
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = _serve_in_thread(self._server)

    @property
    def mints(self) -> list[TokenRequest]:
        """Requests that returned a token."""
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def stop(self) -> None:
        _stop_server(self._server, self._thread)

    def handle(self, target: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """Route one token request; usable without a socket."""
        split = urlsplit(target)
        query = parse_qs(split.query)
        username = _basic_username(authorization, self.password)
        body: dict[str, Any]
        granted: tuple[Grant, ...] = ()
        if authorization is not None and username is None:
            status, body = 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        elif split.path != "/token":
            status, body = 404, {"errors": [{"code": "NOT_FOUND", "message": split.path}]}
        else:
            granted = self._grant(query.get("scope", []), authenticated=username is not None)
            body = self._token_body(username, query.get("service", [""])[0], granted)
            status = 200
        with self._lock:
            self.requests.append(
                TokenRequest(split.path, query, authorization is not None, username, status, granted)
            )
        return status, body

    def _grant(self, scopes: list[str], *, authenticated: bool) -> tuple[Grant, ...]:
        granted: list[Grant] = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = tuple(a for a in actions.split(",") if a)
            if not authenticated:
                wanted = tuple(a for a in wanted if a == "pull" and self.anonymous_pull)
            if wanted:
                granted.append((kind, name, wanted))
        return tuple(granted)

    def _token_body(self, username: str | None, service: str, granted: tuple[Grant, ...]) -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.expires_in if self.expires_in is not None else 60
        claims = {
            "iss": ISSUER,
            "sub": username or "",
            "aud": service,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [{"type": t, "name": n, "actions": list(a)} for t, n, a in granted],
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})
        body: dict[str, Any] = {
            self.token_field: token,
            "issued_at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return body


def _self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cccatalog test token signer")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _basic_username(authorization: str | None, password: str) -> str | None:
    """The user name when `authorization` is Basic robot:<password>, else None."""
    if authorization is None or not authorization.lower().startswith("basic "):
        return None
    try:
        user, _, given = base64.b64decode(authorization[6:]).decode().partition(":")
    except ValueError:
        return None
    return user if (user, given) == (USERNAME, password) else None


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# --- the registry process ---------------------------------------------------------------------------


@dataclass
class RunningRegistry:
    mode: Mode
    url: str
    host: str
    root: Path
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None

    @property
    def creds(self) -> str | None:
        """`user:password` as skopeo's `--creds` wants it, None for anonymous registries."""
        return f"{self.username}:{self.password}" if self.username and self.password else None

    def log(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_config(root: Path, port: int, mode: Mode, password: str, token_server: TokenServer | None) -> Path:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "cccatalog-tests"},
    }
    if mode == "basic":
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()  # cost 4: fast tests
        (root / "htpasswd").write_text(f"{USERNAME}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": BASIC_REALM, "path": str(root / "htpasswd")}}
    elif mode == "token":
        assert token_server is not None
        (root / "token-root.pem").write_bytes(token_server.certificate_pem())
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(root / "token-root.pem"),
            }
        }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _spawn(config: Path, root: Path, timeout: float) -> tuple[subprocess.Popen[bytes], int] | None:
    """Start the registry and wait for `/v2/`; None when its port was taken in the meantime."""
    port = yaml.safe_load(config.read_text())["http"]["addr"].rsplit(":", 1)[1]
    # REGISTRY_* variables would override the config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with (root / "registry.log").open("ab") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=log, env=env, cwd=root
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                return process, int(port)
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            log_text = (root / "registry.log").read_text(errors="replace")
            if "address already in use" in log_text:
                return None
            raise RuntimeError(f"docker-registry exited with {process.returncode}:\n{log_text[-2000:]}")
        time.sleep(_POLL_SECONDS)
    process.kill()
    process.wait()
    raise RuntimeError(f"docker-registry did not answer /v2/ within {timeout}s")


def start_registry(
    root: Path,
    mode: Mode,
    *,
    password: str = PASSWORD,
    anonymous_pull: bool = True,
    token_field: TokenField = "token",  # noqa: S107 - a JSON key, not a secret
    expires_in: int | None = 300,
    timeout: float = 10,
) -> RunningRegistry:
    """Run `docker-registry serve` on 127.0.0.1:<free port> with storage under `root`; call `stop()`."""
    root.mkdir(parents=True, exist_ok=True)
    token_server = None
    if mode == "token":
        token_server = TokenServer(
            password=password, anonymous_pull=anonymous_pull, token_field=token_field, expires_in=expires_in
        )
    try:
        for _ in range(3):
            config = _write_config(root, _free_port(), mode, password, token_server)
            started = _spawn(config, root, timeout)
            if started is not None:
                break
        else:
            raise RuntimeError("docker-registry could not bind a free port three times")
    except BaseException:
        if token_server is not None:
            token_server.stop()
        raise
    process, port = started
    authenticated = mode != "anonymous"
    return RunningRegistry(
        mode=mode,
        url=f"http://127.0.0.1:{port}",
        host=f"127.0.0.1:{port}",
        root=root,
        process=process,
        username=USERNAME if authenticated else None,
        password=password if authenticated else None,
        token_server=token_server,
    )


@contextmanager
def running_registry(root: Path, mode: Mode, **options: Any) -> Iterator[RunningRegistry]:
    """`start_registry` as a context manager; `options` are its keyword arguments."""
    registry = start_registry(root, mode, **options)
    try:
        yield registry
    finally:
        registry.stop()


# --- an HTTP client that answers registry challenges ------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class ChallengeAuth(httpx.Auth):
    """Answer a 401 once: Basic credentials, or a token fetched from the Bearer realm with them."""

    requires_response_body = True

    def __init__(self, username: str | None, password: str | None) -> None:
        self._basic = basic_header(username, password) if username and password else None
        self._header: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._header is not None:
            request.headers["Authorization"] = self._header
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self._basic is not None:
            self._header = self._basic
        elif scheme == "bearer":
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self._basic is not None:
                token_request.headers["Authorization"] = self._basic
            token_response = yield token_request
            token_response.raise_for_status()
            body = token_response.json()
            self._header = f"Bearer {body.get('token') or body['access_token']}"
        else:
            return
        request.headers["Authorization"] = self._header
        yield request


def registry_client(registry: RunningRegistry) -> httpx.Client:
    """An httpx client for `registry` with its credentials; close it after use."""
    return httpx.Client(
        base_url=registry.url, auth=ChallengeAuth(registry.username, registry.password), timeout=10
    )


# --- pushing images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushedImage:
    repo: str
    tag: str
    digest: str  # of the manifest or index
    media_type: str
    config_digest: str  # for an index: the first platform's config
    created: str | None
    platform_digests: dict[str, str] = field(default_factory=dict)  # "os/arch" -> manifest, index only


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode()


def _tiny_layer(nonce: str) -> tuple[bytes, str]:
    """A gzip'd tar holding one nonce file, byte-identical for the same nonce; returns (blob, diff_id)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        content = nonce.encode()
        info = tarfile.TarInfo("nonce.txt")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    raw = tar_bytes.getvalue()
    return gzip.compress(raw, mtime=0), sha256(raw)


def upload_blob(client: httpx.Client, repo: str, blob: bytes) -> str:
    digest = sha256(blob)
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, (started.status_code, started.text)
    location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": digest})
    done = client.put(location, content=blob, headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, (done.status_code, done.text)
    return digest


def put_manifest(client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str) -> str:
    response = client.put(
        f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )
    assert response.status_code == 201, (response.status_code, response.text)
    digest = sha256(body)
    assert response.headers.get("Docker-Content-Digest") == digest
    return digest


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def _push_single(
    client: httpx.Client,
    repo: str,
    *,
    config: Mapping[str, Any],
    oci: bool,
    nonce: str,
    annotations: Mapping[str, str] | None = None,
    layer_type: str | None = None,
    reference: str | None = None,
) -> tuple[bytes, str]:
    """Push config, one layer and a manifest (under `reference`, else by digest).

    Returns (manifest bytes, config digest)."""
    layer, diff_id = _tiny_layer(nonce)
    config_bytes = _canonical({**config, "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    upload_blob(client, repo, layer)
    config_digest = upload_blob(client, repo, config_bytes)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config_bytes),
        "layers": [_descriptor(layer_type or (OCI_LAYER if oci else DOCKER_LAYER), layer)],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = _canonical(manifest)
    put_manifest(client, repo, reference or sha256(body), body, media_type)
    return body, config_digest


def _image_config(created: str | None, os_name: str = "linux", arch: str = "amd64") -> dict[str, Any]:
    config: dict[str, Any] = {"architecture": arch, "os": os_name, "config": {}}
    if created is not None:
        config["created"] = created
    return config


def push_image(
    registry: RunningRegistry,
    repo: str,
    tag: str,
    *,
    created: str | None,
    kind: Kind = "oci",
    annotations: Mapping[str, str] | None = None,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64")),
    platform_created: Mapping[str, str | None] | None = None,
    nonce: str | None = None,
) -> PushedImage:
    """Push a tiny image whose config says `created` (omitted when None) as `repo:tag`.

    `oci-index`: an attestation entry (unknown/unknown) first, then one OCI manifest per platform;
    `platform_created` overrides `created` per "os/arch". `annotations` go on the top-level manifest/index.
    Layers carry a nonce, so every push makes new digests."""
    if kind == "docker-v2" and annotations:
        raise ValueError("Docker v2 schema2 manifests have no annotations; use kind='oci'")
    nonce = nonce if nonce is not None else f"{repo}:{tag}:{next(_nonces)}"
    with registry_client(registry) as client:
        if kind != "oci-index":
            body, config_digest = _push_single(
                client,
                repo,
                config=_image_config(created),
                oci=kind == "oci",
                nonce=nonce,
                annotations=annotations,
                reference=tag,
            )
            media_type = OCI_MANIFEST if kind == "oci" else DOCKER_MANIFEST
            return PushedImage(repo, tag, sha256(body), media_type, config_digest, created)
        return _push_index(
            client,
            repo,
            tag,
            created=created,
            annotations=annotations,
            platforms=platforms,
            platform_created=platform_created or {},
            nonce=nonce,
        )


def _push_index(
    client: httpx.Client,
    repo: str,
    tag: str,
    *,
    created: str | None,
    annotations: Mapping[str, str] | None,
    platforms: Sequence[Platform],
    platform_created: Mapping[str, str | None],
    nonce: str,
) -> PushedImage:
    entries: list[dict[str, Any]] = []
    digests: dict[str, str] = {}
    config_digests: list[str] = []
    for os_name, arch in platforms:
        key = f"{os_name}/{arch}"
        body, config_digest = _push_single(
            client,
            repo,
            config=_image_config(platform_created.get(key, created), os_name, arch),
            oci=True,
            nonce=f"{nonce}:{key}",
        )
        digests[key] = sha256(body)
        config_digests.append(config_digest)
        entries.append(_descriptor(OCI_MANIFEST, body, platform={"architecture": arch, "os": os_name}))
    attestation, _ = _push_single(
        client,
        repo,
        config=_image_config(None, "unknown", "unknown"),
        oci=True,
        nonce=f"{nonce}:attestation",
        layer_type=IN_TOTO,
    )
    digests["unknown/unknown"] = sha256(attestation)
    attestation_entry = _descriptor(
        OCI_MANIFEST,
        attestation,
        platform={"architecture": "unknown", "os": "unknown"},
        annotations={
            ATTESTATION_ANNOTATION: "attestation-manifest",
            "vnd.docker.reference.digest": entries[0]["digest"],
        },
    )
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [attestation_entry, *entries],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    body = _canonical(index)
    digest = put_manifest(client, repo, tag, body, OCI_INDEX)
    return PushedImage(repo, tag, digest, OCI_INDEX, config_digests[0], created, digests)


def tag_existing(registry: RunningRegistry, repo: str, new_tag: str, digest: str) -> str:
    """Put the manifest `digest` under `new_tag` as well; returns the digest."""
    with registry_client(registry) as client:
        response = client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": ALL_MANIFESTS})
        response.raise_for_status()
        return put_manifest(client, repo, new_tag, response.content, response.headers["Content-Type"])


# --- a proxy that lies about Last-Modified, as JFrog remote repositories do --------------------------


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str
    query: str
    has_authorization: bool
    status: int


class _ProxyHTTPServer(ThreadingHTTPServer):
    owner: LyingProxy


# Hop-by-hop or recomputed by the proxy.
_DROPPED_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "last-modified",
    "date",
    "server",
}


class _ProxyHandler(_QuietHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _ProxyHTTPServer)
        server.owner.forward(self)

    do_HEAD = do_GET


class LyingProxy:
    """Forward GET/HEAD to `upstream_url`; `Last-Modified` becomes `last_modified(path)` (None: no header)."""

    def __init__(self, upstream_url: str, last_modified: Callable[[str], str | None]) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.last_modified = last_modified
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=10, follow_redirects=False)
        self._server = _ProxyHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.owner = self
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.host = f"127.0.0.1:{port}"
        self._thread = _serve_in_thread(self._server)

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        # A list, not a dict: clients such as skopeo send one `Accept` header per media type.
        headers = [
            (k, v)
            for k, v in handler.headers.items()
            if k.lower() not in ("host", "connection", "accept-encoding")
        ]
        headers.append(("Accept-Encoding", "identity"))
        upstream = self._client.request(handler.command, self.upstream_url + handler.path, headers=headers)
        with self._lock:
            self.requests.append(
                ProxiedRequest(
                    handler.command,
                    split.path,
                    split.query,
                    "Authorization" in handler.headers,
                    upstream.status_code,
                )
            )
        handler.send_response(upstream.status_code)
        for name, value in upstream.headers.multi_items():
            if name.lower() not in _DROPPED_HEADERS:
                handler.send_header(name, value)
        stamp = self.last_modified(split.path)
        if stamp is not None:
            handler.send_header("Last-Modified", stamp)
        length = (
            upstream.headers.get("Content-Length", "0")
            if handler.command == "HEAD"
            else len(upstream.content)
        )
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(upstream.content)

    def stop(self) -> None:
        _stop_server(self._server, self._thread)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def lying_last_modified_proxy(upstream_url: str, last_modified: Callable[[str], str | None]) -> LyingProxy:
    """A started `LyingProxy`; use it in a `with` block or call `stop()`."""
    return LyingProxy(upstream_url, last_modified)


# --- skopeo -----------------------------------------------------------------------------------------


def skopeo_inspect_config(
    registry: RunningRegistry | LyingProxy,
    reference: str,
    *,
    creds: str | None = None,
    arch: str = "amd64",
    os_name: str = "linux",
) -> dict[str, Any]:
    """`skopeo inspect --config` of `<host>/<reference>` (for an index: the `os_name/arch` platform)."""
    argv = [
        "skopeo",
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        arch,
        "--override-os",
        os_name,
    ]
    if creds is not None:
        argv += ["--creds", creds]
    result = subprocess.run(
        [*argv, f"docker://{registry.host}/{reference}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"skopeo inspect failed: {result.stderr.strip()}")
    config: dict[str, Any] = json.loads(result.stdout)
    return config
