"""Moving a backend's pipe to a client socket without copying it through Python.

A full clone is hundreds of megabytes that Python has no reason to look at. On Linux `splice(2)`
moves pipe pages to the socket inside the kernel; the HTTP/1.1 chunked framing is written around each
batch, sized from what the pipe holds (`FIONREAD`). Each chunk's closing CRLF leaves with the next
chunk's header, in one `send`, so every chunk costs two system calls plus the splices, and no data
byte waits for a later one. Where `splice` is missing the caller falls back to read + write.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import sys
import termios
import time

HAVE_SPLICE = hasattr(os, "splice")
_MAX_BATCH = 1024 * 1024  # what one chunk may carry: the pipe's size
_FOUR_ZERO_BYTES = bytes(4)
_BULK_AFTER = 1024 * 1024  # bytes of one answer after which it is treated as a stream
_COALESCE_BELOW = 256 * 1024
_COALESCE_SECONDS = 0.001


class SocketStalled(TimeoutError):
    """The client did not take data for longer than the socket's timeout."""


def buffered(fd: int) -> int:
    """Bytes waiting in the pipe `fd` now."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, _FOUR_ZERO_BYTES), sys.byteorder)


def pending(fd: int, *, bulk: bool = False) -> int:
    """Bytes waiting in the pipe `fd`, after blocking until there are some or the writer is gone (0).

    In `bulk` mode (a pack is streaming) a small amount is given a moment to grow: every wake-up is a
    context switch for the backend and for us, and those, not the bytes, are what a pack costs here.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    events = poller.poll()[0][1]
    count = buffered(fd)
    if bulk and count < _COALESCE_BELOW and not events & select.POLLHUP:
        time.sleep(_COALESCE_SECONDS)
        count = buffered(fd)
    return count


def splice_all(pipe: int, sock: socket.socket, count: int) -> None:
    """Move exactly `count` bytes, already in `pipe`, to `sock`, waiting at most its timeout per stall."""
    out = sock.fileno()
    timeout = sock.gettimeout()
    while count:
        try:
            moved = os.splice(pipe, out, count)
        except BlockingIOError:
            if not select.select([], [out], [], timeout)[1]:
                raise SocketStalled(f"client took no data for {timeout}s") from None
            continue
        if moved == 0:
            raise ConnectionResetError("client socket closed")
        count -= moved


def stream_pipe(pipe: int, sock: socket.socket, *, chunked: bool) -> tuple[int, bool]:
    """Splice `pipe` to `sock` until EOF, in HTTP chunks when `chunked`.

    Returns (payload bytes, whether a chunk's closing CRLF is still owed: the caller adds it before the
    last chunk). Raises OSError when the client goes away or stalls.
    """
    sent, owed = 0, False
    while count := min(pending(pipe, bulk=sent >= _BULK_AFTER), _MAX_BATCH):
        if chunked:
            sock.sendall(b"%s%x\r\n" % (b"\r\n" if owed else b"", count), socket.MSG_MORE)
            owed = True
        splice_all(pipe, sock, count)
        sent += count
    return sent, owed
