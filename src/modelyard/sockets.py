"""Binding a listening socket early, so a bad ``--host`` or a busy ``--port`` is one clear
error before a server starts (``modelyard serve`` and ``modelyard route`` both bind here).
"""

from __future__ import annotations

import socket

from modelyard.errors import ConfigError


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host`` (a name, an IPv4 or an IPv6 address) and ``port`` (0: a
    free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"cannot listen on {host}: {getattr(exc, 'strerror', None) or exc}",
            hint="Give --host an address of this machine (127.0.0.1, ::1, 0.0.0.0, ::) "
            "or a name that resolves to one.",
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="Pick another --port or stop the process using it.",
        ) from exc
    return sock


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets (``[::1]``)."""
    return f"[{host}]" if ":" in host else host
