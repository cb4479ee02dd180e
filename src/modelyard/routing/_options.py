"""A router's settings, checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from modelyard.errors import ConfigError

PolicyName = Literal["adapter", "round-robin"]
POLICIES: tuple[str, ...] = get_args(PolicyName)


@dataclass(frozen=True)
class RouteOptions:
    """How ``modelyard route`` picks replicas and how long it waits for them.

    ``policy``: ``adapter`` (to the replica that holds the endpoint's adapter) or
    ``round-robin`` (no routing, the baseline). Replicas are the servers whose
    heartbeat is at most ``stale_after_s`` old, re-read with the endpoints' plans
    every ``refresh_s``. ``max_imbalance``: requests in flight beyond the least
    loaded replica's at which the adapter's replica gives way to it. A request is
    tried on at most ``max_attempts`` replicas, only while nothing came back.
    """

    policy: PolicyName = "adapter"
    refresh_s: float = 1.0
    stale_after_s: float = 10.0
    max_imbalance: int = 8
    max_body_bytes: int = 1_048_576
    max_file_bytes: int = 200 * 1024 * 1024
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 300.0
    max_connections: int = 1000
    max_attempts: int = 3
    metrics_token: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"unknown routing policy {self.policy!r}: use {' or '.join(POLICIES)}",
                field="policy",
            )
        for name in ("refresh_s", "stale_after_s", "connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be above 0",
                                  field=name)  # fmt: skip
        for name in ("max_imbalance", "max_body_bytes", "max_file_bytes", "max_connections",
                     "max_attempts"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1",
                                  field=name)  # fmt: skip
