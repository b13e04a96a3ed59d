"""Handing the client's socket to git for a pack: upload-pack writes the answer to the client itself.

A relay between git's pipe and the socket, however cheap its copy (`relay`), is one more stage on the
CPUs that pack-objects, upload-pack and often the client share. Measured with a 230 MB clone on two
CPUs (`benchmarks/serving`), a relayed clone ran 0.81x raw upload-pack where `git daemon`, whose
upload-pack writes to its socket, ran 0.97x. So a request that ends its negotiation (`done`: the
answer is the pack, and the client asks nothing more of the connection) is answered as git daemon
answers: serve writes the status line and its own headers, corks the socket, and starts
`git http-backend` with the socket as its stdout. The backend's CGI head (Expires, Pragma,
Cache-Control, Content-Type) completes the header section and the pack follows, from git to the
kernel with nothing between.

What that costs, and how it stays safe:

- The body ends with the connection (`Connection: close`; no Content-Length, no chunks). An answer git
  did not finish (it failed, was killed, the client stopped reading) ends with a reset once what was
  written has left, never with a clean close, so no HTTP client takes a cut-off answer for a whole one.
- The backend's head is checked before, not after: only a request that routing accepted, with git's
  own Content-Type and an encoding git reads, is handed over, which rules out every `Status:` that
  http-backend can answer with (403, 404, 415).
- A client that stops reading is seen in the socket's counters (TCP_INFO): nothing acknowledged for
  the idle timeout while bytes wait, and the backend is killed, as the relay's send timeout would.
- The bytes sent are the socket's (acknowledged plus queued), so the access log and metrics count them.
- Only where the pack cache does not answer (it is off, or declined the request): the cache spools an
  answer so that a slow reader holds no slot, and a hand-off holds its slot until git is done.
- Only for the git command line (`git/<version>`; curl reads a body to the close). libgit2 fails on a
  body without a length or chunks, so every other client gets the relay.
- Linux TCP only (TCP_CORK, TCP_INFO, SIOCOUTQ); elsewhere the relay answers.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_CORK = getattr(socket, "TCP_CORK", None)
_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ: bytes not yet acknowledged by the peer
_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in struct tcp_info, Linux >= 4.1
_INFO_SIZE = 256
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# git's own User-Agent (`git/2.39.5`, `git/2.43.0.windows.1`): the command line, whose curl reads a
# body to the connection's close. libgit2 (`git/2.0 (libgit2 1.7.1)`) fails on such a body, and
# other clients are not known to read one: they get the relay.
_GIT_CLI_AGENT = re.compile(r"git/[0-9][0-9A-Za-z._-]{0,64}")
_TICK_SECONDS = 0.25
_DRAIN_SECONDS = 10.0  # at most this long for what a failed git wrote to leave before the reset


def supported(sock: socket.socket) -> bool:
    """Whether `sock` can be handed to git: a TCP socket on a kernel that has the counters."""
    if not sys.platform.startswith("linux") or _TCP_INFO is None or _TCP_CORK is None or _OUTQ is None:
        return False
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        return len(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)) >= _BYTES_ACKED + 8
    except OSError:
        return False


def reads_to_close(user_agent: str) -> bool:
    """Whether the client is the git command line, which reads a body that ends with the connection."""
    return _GIT_CLI_AGENT.fullmatch(user_agent) is not None


def queued(sock: socket.socket) -> int:
    """Bytes written to `sock` that the peer has not acknowledged yet."""
    assert _OUTQ is not None
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)))[0])


def acknowledged(sock: socket.socket) -> int:
    """Bytes written to `sock` that the peer has acknowledged."""
    assert _TCP_INFO is not None
    raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    return int(struct.unpack_from("Q", raw, _BYTES_ACKED)[0])


def written(sock: socket.socket) -> int:
    """Every byte written to `sock` so far, by any process: acknowledged plus still queued."""
    return acknowledged(sock) + queued(sock)


def cork(sock: socket.socket, on: bool) -> None:
    """Corked, the kernel sends only full segments: upload-pack writes each sideband header (5 bytes)
    on its own, which TCP_NODELAY would otherwise send as a packet of its own. Uncorking sends the rest."""
    assert _TCP_CORK is not None
    sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)


def watch(
    sock: socket.socket,
    proc: subprocess.Popen[bytes],
    *,
    idle_timeout: float,
    gone: Callable[[socket.socket], bool],
) -> str | None:
    """Wait until the backend `proc` exits; None then, or why it must be killed first: the client
    left, or acknowledged nothing for `idle_timeout` while bytes waited for it.

    The exit is seen the moment it happens (a pidfd), not at the next tick: the answer's last
    segment waits for it (the socket is corked), and a shallow fetch's whole answer takes ~40 ms.
    """
    with _exit_events(proc) as exited:
        last_acked, since = -1, time.monotonic()
        while not exited(_TICK_SECONDS):
            if gone(sock):
                return "client disconnected"
            waiting, acked = queued(sock), acknowledged(sock)
            now = time.monotonic()
            if acked != last_acked or not waiting:
                last_acked, since = acked, now
            elif now - since >= idle_timeout:
                return f"the client read nothing for {idle_timeout:.0f}s"
    return None


@contextmanager
def _exit_events(proc: subprocess.Popen[bytes]) -> Iterator[Callable[[float], bool]]:
    """A function that waits up to so many seconds for `proc` to exit, and says whether it has."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll the process instead
        pidfd = None
    if pidfd is None:

        def polled(seconds: float) -> bool:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=seconds)
            return proc.returncode is not None

        yield polled
        return
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        yield lambda seconds: bool(poller.poll(seconds * 1000))
    finally:
        os.close(pidfd)


def end_broken(sock: socket.socket, *, drain: bool, gone: Callable[[socket.socket], bool]) -> None:
    """Make the end of this answer a reset: what git wrote leaves first (`drain`, bounded, and not for
    a client that has gone), then the close that follows sends RST instead of FIN (see
    `CatalogServer.shutdown_request`)."""
    cork(sock, False)
    deadline = time.monotonic() + _DRAIN_SECONDS
    while drain and queued(sock) and time.monotonic() < deadline and not gone(sock):
        time.sleep(0.01)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


def resets(sock: socket.socket) -> bool:
    """Whether `end_broken` marked `sock`: its close must not be preceded by a FIN."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == _RESET
    except OSError:
        return False
