"""Which client addresses share a console login-failure count (``console._limits``): the
addresses of one IPv6 /64 do, but IPv4 clients that reach the server through a NAT64 or
SIIT translator (``64:ff9b::a.b.c.d``) or Teredo each keep their own, as any IPv4 client
does: else five failed logins from anyone on IPv4 would lock every IPv4 user out."""

from __future__ import annotations

import pytest

from modelyard.console._limits import LoginLimiter
from modelyard.errors import RateLimited


def _fail(limiter: LoginLimiter, address: str, times: int) -> None:
    for _ in range(times):
        limiter.check(address)
        limiter.failed(address)


def test_a_64_shares_its_count() -> None:
    limiter = LoginLimiter(max_failures=3, window_s=300)
    _fail(limiter, "2001:db8:7:1::1", 3)
    with pytest.raises(RateLimited, match="from 2001:db8:7:1::/64"):
        limiter.check("2001:db8:7:1:ffff::2")
    limiter.check("2001:db8:7:2::1")  # another /64


@pytest.mark.parametrize(
    ("guesser", "neighbour", "counted"),
    [
        ("64:ff9b::198.51.100.7", "64:ff9b::203.0.113.9", "198.51.100.7"),  # NAT64 / SIIT
        # Teredo: server 65.54.227.120, client 192.0.2.45 / 192.0.2.46 (RFC 4380's layout)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd1",
         "192.0.2.45"),
    ],
)  # fmt: skip
def test_ipv4_clients_behind_a_translator_keep_their_own_count(
    guesser: str, neighbour: str, counted: str
) -> None:
    limiter = LoginLimiter(max_failures=3, window_s=300)
    _fail(limiter, guesser, 3)
    with pytest.raises(RateLimited, match=f"from {counted}:"):
        limiter.check(guesser)
    limiter.check(neighbour)  # another IPv4 client: not limited by the guesser
