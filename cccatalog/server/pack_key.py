"""The pack cache's key: what determines an upload-pack answer, and nothing else.

Two requests share an answer only when everything that changes its bytes or its status is equal: the
repository and its ref fingerprint, the `Git-Protocol` header, the `Content-Type` (git answers a wrong
one with 415, whose text quotes it) and the request itself. A request with any other Content-Type than
git's own is never cached at all: its answer is an error, made for it alone.

The request is keyed on what it asks for, not on its incidental bytes (the shape of Gitaly's cache
key): a gzip body is inflated, the one capability that only names the client (`agent=`, whose value
upload-pack records and never checks) is dropped and the others put in order, so a fleet mid-upgrade
(git 2.39 and 2.43 side by side) shares its answers. Nothing else is dropped, since anything else can
change the answer: git 2.39 answers a v2 request carrying `session-id=` with a fatal error unless it
advertised it, and an error must never be the answer of a request that would have had a pack. upload-
pack reads capabilities as a set; the wants, haves and arguments keep their order, as git walks them
in that order. A body that does not parse strictly as pkt-lines, or names two agents, is keyed on its
raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cccatalog.gitmirror.refstate import Fingerprint

UPLOAD_PACK_REQUEST = "application/x-git-upload-pack-request"
_FORMAT = 2
_BATCH = 1024 * 1024
_AGENT = re.compile(rb"agent=[\x21-\x7e]{1,256}\n?")
_HEX = b"0123456789abcdefABCDEF"


def request_key(
    repo: Path,
    fingerprint: Fingerprint,
    *,
    git_protocol: str,
    content_type: str,
    content_encoding: str,
    body: IO[bytes],
    max_inflated: int,
) -> str | None:
    """The cache key (a file name), or None when the request is not for the cache. `body` is read and
    rewound; a gzip body inflating past `max_inflated` bytes is keyed raw."""
    if content_type != UPLOAD_PACK_REQUEST:
        return None
    data = body.read()
    body.seek(0)
    encoding = content_encoding
    if content_encoding.lower() in ("gzip", "x-gzip"):
        inflated = _gunzip(data, max_inflated)
        if inflated is not None:
            data, encoding = inflated, ""
    request = normalise(data, v2="version=2" in git_protocol) if not encoding else None
    digest = hashlib.sha256(request if request is not None else data).hexdigest()
    material = [
        _FORMAT,
        str(repo),
        fingerprint,
        git_protocol,
        content_type,
        encoding,
        request is None,
        digest,
    ]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()


def asks_for_pack(body: IO[bytes], *, content_encoding: str, max_inflated: int) -> bool:
    """Whether the request ends its negotiation (`done`, in v0 and v2 alike): upload-pack then answers
    with the pack, and the client asks nothing more of this connection. `body` is read and rewound;
    a body that does not inflate or parse is not one."""
    data = body.read()
    body.seek(0)
    if content_encoding.lower() in ("gzip", "x-gzip"):
        inflated = _gunzip(data, max_inflated)
        if inflated is None:
            return False
        data = inflated
    elif content_encoding:
        return False
    packets = _split(data)
    return packets is not None and any(not p.special and p.data in (b"done", b"done\n") for p in packets)


def normalise(data: bytes, *, v2: bool) -> bytes | None:
    """The request with client-only capabilities dropped and the others sorted; None when `data` is not
    a sequence of pkt-lines."""
    packets = _split(data)
    if packets is None or sum(p.data.count(b"agent=") for p in packets) > 1:
        return None  # two agents is a request git may read differently: keyed as sent
    if v2:
        head_end = next((i for i, p in enumerate(packets) if p.special), len(packets))
        head = packets[:head_end]
        command = [p for p in head if p.data.startswith(b"command=")]
        caps = [p for p in head if not p.data.startswith(b"command=") and not _AGENT.fullmatch(p.data)]
        packets = command + sorted(caps, key=lambda p: p.data) + packets[head_end:]
    else:
        for i, packet in enumerate(packets):
            if not packet.special and packet.data.startswith(b"want "):
                packets[i] = _Packet(_v0_want(packet.data))
                break
    return b"".join(p.framed() for p in packets)


@dataclass(frozen=True, slots=True)
class _Packet:
    data: bytes  # the payload, or the four bytes of a flush (0000), delim (0001) or end (0002)
    special: bool = False

    def framed(self) -> bytes:
        return self.data if self.special else b"%04x%s" % (len(self.data) + 4, self.data)


def _v0_want(payload: bytes) -> bytes:
    """`want <oid> cap cap...`: the first want carries the capabilities, space separated."""
    words = payload.rstrip(b"\n").split(b" ")
    caps = sorted(w for w in words[2:] if w and not _AGENT.fullmatch(w))
    return b" ".join(words[:2] + caps) + b"\n"


def _split(data: bytes) -> list[_Packet] | None:
    packets: list[_Packet] = []
    pos = 0
    while pos < len(data):
        length = data[pos : pos + 4]
        if len(length) < 4 or length.strip(_HEX):  # strictly four hex digits, as git reads them
            return None
        size = int(length, 16)
        if size < 4:
            packets.append(_Packet(data[pos : pos + 4], special=True))
            pos += 4
            continue
        if pos + size > len(data):
            return None
        packets.append(_Packet(data[pos + 4 : pos + size]))
        pos += size
    return packets


def _gunzip(data: bytes, limit: int) -> bytes | None:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not inflater.eof:
        return None
    return out
