"""The write half of `RegistryClient`: mounting or starting a blob upload, sending the blob (one
streamed PUT, or PATCHed chunks), storing a manifest.

`RegistryClient` inherits these methods; every request they make goes through its `_send` (auth,
redirects, retries, counts, the per-host limit), so registry requests still leave from one place.
Writes ask the token server for `pull,push` (`oci.auth.scope_of` goes by method), a mount also for
`pull` on the repository it mounts from. The order of writes is the caller's (`oci.copy`): blobs,
then the manifests naming them, the tag last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import httpx

from cccatalog.errors import RegistryError
from cccatalog.oci.answers import expect, location, raise_for, rechunk, with_digest
from cccatalog.oci.cache import sha256_digest
from cccatalog.oci.reference import Repository


class RegistryPush:
    # Every write goes through the one `_send` of the RegistryClient this is mixed into.
    _send: Callable[..., httpx.Response]

    def mount_or_start_upload(
        self, repo: Repository, digest: str, *, mount_from: Repository | None
    ) -> str | None:
        """Mount `digest` from `mount_from` (same registry) when given, else start an upload: None when
        the blob was mounted, else the upload's URL (its `Location`, made absolute)."""
        url = f"{repo.base_url}/v2/{repo.path}/blobs/uploads/"
        if mount_from is not None and mount_from.host == repo.host and mount_from.path != repo.path:
            url += "?" + urlencode({"mount": digest, "from": mount_from.path})
        resp = self._send(repo, "POST", url, kind="upload", headers={"Content-Length": "0"})
        if resp.status_code == 201 and "mount=" in url:
            return None
        if resp.status_code != 202:
            raise_for(resp, repo, f"starting the upload of {digest}")
            raise RegistryError(
                f"{repo.name}: starting the upload of {digest}: unexpected HTTP {resp.status_code}"
            )
        return location(resp, repo)

    def upload_blob(
        self,
        repo: Repository,
        upload: str,
        digest: str,
        size: int,
        chunks: Iterator[bytes],
        *,
        chunk_size: int | None = None,
    ) -> None:
        """Send a blob to an upload started by `mount_or_start_upload`: one streamed PUT (monolithic)
        or, with `chunk_size`, PATCHes of that size and a closing PUT. The registry checks `digest`
        too; an upload cut short is never committed."""
        what = f"uploading blob {digest}"
        if chunk_size is None:
            resp = self._send(
                repo,
                "PUT",
                with_digest(upload, digest),
                kind="upload",
                content=chunks,
                retry=False,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            expect(resp, repo, what, 201)
            return
        offset = 0
        for piece in rechunk(chunks, chunk_size):
            end = offset + len(piece) - 1
            resp = self._send(
                repo,
                "PATCH",
                upload,
                kind="upload",
                content=piece,
                retry=False,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"},
            )
            expect(resp, repo, what, 202)
            upload = location(resp, repo)
            offset = end + 1
        resp = self._send(
            repo, "PUT", with_digest(upload, digest), kind="upload", headers={"Content-Length": "0"}
        )
        expect(resp, repo, what, 201)

    def put_manifest(self, repo: Repository, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under `reference` (its digest, or a tag); returns its digest, checked
        against what the registry says it stored."""
        digest = sha256_digest(body)
        url = f"{repo.base_url}/v2/{repo.path}/manifests/{reference}"
        resp = self._send(
            repo, "PUT", url, kind="manifest-put", content=body, headers={"Content-Type": media_type}
        )
        expect(resp, repo, f"pushing manifest {reference}", 201)
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise RegistryError(f"{repo.name}: the registry stored {reference} as {stored}, not {digest}")
        return digest
