"""HTTP/1.1 message framing for `serve`, read strictly (RFC 9112): the request line, the header section,
which body a request declares, and the chunked decoding of that body.

Anything a front proxy could read differently from us is refused rather than guessed at, because a
disagreement about where one request ends is how a second request gets smuggled through:

- the request line is exactly `method SP target SP HTTP/1.x` (no HTTP/0.9 line without a version, no
  HTTP/2 text, no bytes outside visible ASCII in the target);
- header lines are `token ":" value`: whitespace before the colon, obs-fold continuation lines, a bare
  CR or a NUL anywhere are refused; at most `MAX_FIELDS` lines and `MAX_HEAD_BYTES` in all (431);
- a body is framed by exactly one `Content-Length` of ASCII digits, or exactly one
  `Transfer-Encoding: chunked` on HTTP/1.1, never both. Every other transfer coding or list of codings
  is a 400, not a 501: the body's end cannot be found, so the connection is closed either way;
- chunk sizes are 1 to 16 hex digits; extensions are skipped, trailers discarded, and everything that
  is not chunk data (size lines, extensions, CRLFs, trailers) counts against `MAX_CHUNK_FRAMING`.

Every refusal is a `FramingError` carrying its status; the caller answers it and closes the connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO, Protocol
from urllib.parse import urlsplit

MAX_FIELDS = 100  # http.server's own limit on header lines
MAX_HEAD_BYTES = 64 * 1024  # all header lines together (nginx's default is 32 KiB)
MAX_CHUNK_LINE = 1024  # a chunk-size line, extensions included
MAX_CHUNK_FRAMING = 1024 * 1024  # all of a body's non-data bytes: ~170,000 one-byte chunks
MAX_TRAILER_FIELDS = 32
MAX_TRAILER_BYTES = 8 * 1024
READ_SIZE = 64 * 1024

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?\n")
# field-value: anything but NUL, CR and LF (RFC 9110 §5.5); obs-text is kept as ISO-8859-1. OWS is
# stripped afterwards: a lazy value before `[ \t]*` backtracks quadratically over a run of spaces.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([^\x00\r\n]*)\r?\n")
_CONTENT_LENGTH = re.compile(rb"[ \t]?([0-9]{1,18})\r?\n")
_CHUNKED = re.compile(rb"[ \t]?chunked\r?\n", re.IGNORECASE)
# chunk-ext is `*( BWS ";" BWS name [ BWS "=" BWS value ] )`: skipped, so only its bytes are checked
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class FramingError(Exception):
    """A request that cannot be read safely: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BodyReader(Protocol):
    """The buffered socket reader http.server gives each connection."""

    def read(self, size: int = ..., /) -> bytes: ...
    def read1(self, size: int = ..., /) -> bytes: ...
    def readline(self, size: int | None = ..., /) -> bytes: ...


class Meter(Protocol):
    """Counts the bytes of a body as they arrive (the reaper judges the rate from it)."""

    received: int


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    target: str
    minor: int  # HTTP/1.<minor>


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: str  # OWS trimmed, ISO-8859-1 (as http.server's message class holds it)
    raw: bytes  # everything after the colon, line ending included


@dataclass(frozen=True, slots=True)
class Framing:
    """How a request's body is delimited: chunked, or `length` bytes (0: no body)."""

    chunked: bool = False
    length: int = 0

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length > 0


NO_BODY = Framing()


def parse_request_line(raw: bytes) -> RequestLine:
    match = _REQUEST_LINE.fullmatch(raw)
    if match is None:
        raise FramingError(400, "malformed request line: expected 'METHOD /target HTTP/1.1'")
    method, target, major, minor = match.groups()
    if major != b"1":
        raise FramingError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    return RequestLine(method.decode("ascii"), target.decode("ascii"), int(minor))


def read_fields(rfile: BodyReader) -> list[Field]:
    """The header section, up to and including the empty line that ends it."""
    fields: list[Field] = []
    total = 0
    while True:
        line = rfile.readline(MAX_HEAD_BYTES + 1)
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise FramingError(431, f"request header section over {MAX_HEAD_BYTES // 1024} KiB")
        if line in (b"\r\n", b"\n"):
            return fields
        if not line.endswith(b"\n"):
            raise FramingError(400, "the header section ended early")
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise FramingError(400, "malformed header line (whitespace before ':', obs-fold, CR or NUL)")
        if len(fields) == MAX_FIELDS:
            raise FramingError(431, f"more than {MAX_FIELDS} header lines")
        name = match.group(1)
        value = match.group(2).strip(b" \t").decode("iso-8859-1")
        fields.append(Field(name.decode("ascii"), value, line[len(name) + 1 :]))


def body_framing(fields: list[Field], *, minor: int) -> Framing:
    """The body a request declares, or a FramingError when the declaration is ambiguous.

    Content-Length and Transfer-Encoding are matched on the raw bytes after the colon: one optional
    space, then the value, nothing else (no client sends more, and a proxy may trim differently).
    """
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for field in fields:
        lowered = field.name.lower()
        if lowered == "content-length":
            lengths.append(field.raw)
        elif lowered == "transfer-encoding":
            codings.append(field.raw)
    if not lengths and not codings:
        return NO_BODY
    if lengths and codings:
        raise FramingError(400, "both Content-Length and Transfer-Encoding: the body's length is ambiguous")
    if codings:
        if minor == 0:
            raise FramingError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) != 1 or _CHUNKED.fullmatch(codings[0]) is None:
            raise FramingError(400, "only 'Transfer-Encoding: chunked' is accepted, once")
        return Framing(chunked=True)
    if len(lengths) != 1:
        raise FramingError(400, "more than one Content-Length")
    match = _CONTENT_LENGTH.fullmatch(lengths[0])
    if match is None:
        raise FramingError(400, "Content-Length must be ASCII digits")
    return Framing(length=int(match.group(1)))


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target in origin form (`/p?q`) or absolute form (`http://h/p?q`)."""
    if _ABSOLUTE_FORM.match(target):
        try:
            parts = urlsplit(target)
        except ValueError:
            raise FramingError(400, "malformed absolute request target") from None
        return parts.path or "/", parts.query
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def read_length(rfile: BodyReader, length: int, spool: IO[bytes], meter: Meter) -> None:
    """`length` bytes into `spool`, each read returning whatever has arrived (so `meter` moves)."""
    remaining = length
    while remaining:
        data = rfile.read1(min(remaining, READ_SIZE))
        if not data:
            raise FramingError(400, "request body ended early")
        spool.write(data)
        meter.received += len(data)
        remaining -= len(data)


def read_chunked(rfile: BodyReader, spool: IO[bytes], cap: int, meter: Meter) -> None:
    """Decode a chunked body into `spool`: at most `cap` data bytes, framing bounded, trailers dropped."""
    total = framing = 0
    while True:
        line = rfile.readline(MAX_CHUNK_LINE + 1)
        framing += len(line)
        meter.received += len(line)
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            if not line.endswith(b"\n") and len(line) <= MAX_CHUNK_LINE:
                raise FramingError(400, "request body ended early")
            raise FramingError(400, "malformed chunk size line: expected 1 to 16 hex digits and CRLF")
        size = int(match.group(1), 16)
        if size == 0:
            break
        total += size
        if total > cap:
            raise FramingError(413, f"request body over the {cap // (1024 * 1024)} MiB limit")
        if framing > MAX_CHUNK_FRAMING:
            raise FramingError(413, f"chunked framing over {MAX_CHUNK_FRAMING // 1024} KiB: chunks too small")
        read_length(rfile, size, spool, meter)
        if rfile.read(2) != b"\r\n":
            raise FramingError(400, "chunk data not followed by CRLF")
        framing += 2
        meter.received += 2
    _skip_trailers(rfile, meter)


def _skip_trailers(rfile: BodyReader, meter: Meter) -> None:
    count = size = 0
    while True:
        line = rfile.readline(MAX_TRAILER_BYTES + 1)
        meter.received += len(line)
        if line == b"\r\n":
            return
        size += len(line)
        count += 1
        if size > MAX_TRAILER_BYTES or count > MAX_TRAILER_FIELDS:
            raise FramingError(400, "trailer section too large")
        if not line.endswith(b"\r\n"):
            raise FramingError(400, "request body ended early")
        if _FIELD_LINE.fullmatch(line) is None:
            raise FramingError(400, "malformed trailer line")
