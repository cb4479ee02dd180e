"""Where the admin API may listen: this machine only, unless TLS protects it."""

from __future__ import annotations

import ipaddress

from modelyard.errors import ConfigError


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_enabled(host: str, wanted: bool | None, *, tls: bool, behind_tls_proxy: bool) -> bool:
    """Whether ``serve`` mounts the admin API: by default only where tokens cannot
    cross a network in clear text. Asked for (``wanted``) on another address without
    TLS or a proxy that terminates it: ConfigError (exit 2)."""
    protected = is_loopback(host) or tls or behind_tls_proxy
    if wanted is None:
        return protected
    if wanted and not protected:
        raise ConfigError(
            f"the admin API would take tokens in clear text on {host}: give --tls-cert and "
            "--tls-key, or --behind-tls-proxy if a proxy terminates TLS, or listen on 127.0.0.1"
        )
    return wanted


__all__ = ["admin_enabled", "is_loopback"]
