"""The listening socket, bound before anything else `serve` does: a port in use or a bad `--host` then
fails at once, with nothing written (no state file, no locks)."""

from __future__ import annotations

import socket

from cccatalog.errors import UsageError


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket for `host:port`; IPv6 addresses work too.

    Raises UsageError naming the address when it cannot be had.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise UsageError(f"cannot listen on {shown}: {reason} (check --host)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {shown}: {exc.strerror or exc} (check --host and --port)"
        ) from None
    return sock
