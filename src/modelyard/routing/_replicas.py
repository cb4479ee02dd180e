"""The replicas a router may send to: live servers from their heartbeats, and what each holds.

A server's heartbeat (``ServerAgent``, every ``--heartbeat-s``) names its address
and the versions its adapter cache holds, least recently used first. A
heartbeat is up to a few seconds old, so each replica's holdings are predicted
the way its cache behaves: an LRU of the replica's capacity (the most versions
it was ever seen holding) seeded with the last heartbeat's list, then touched by
every answer this router has relayed from it since (the answering version is
in its ``x-modelyard-version`` header). A replica that refused a connection is
left out until a heartbeat newer than the failure shows it alive again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelyard.store import Server, utcnow

MARGIN = timedelta(seconds=1)  # an answer this close before a heartbeat may not show in it yet
SENDS_KEPT = 512  # answers remembered per replica, to re-apply over a newer heartbeat
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(eq=False)
class Replica:
    """One server as this router sees it."""

    id: str
    url: str
    heartbeat_at: datetime
    loaded: tuple[str, ...] = ()
    capacity: int = 1
    inflight: int = 0
    failed_at: datetime | None = None
    resident: OrderedDict[str, None] = field(default_factory=OrderedDict)
    answers: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=SENDS_KEPT))

    @property
    def usable(self) -> bool:
        """Not known to refuse connections since its last heartbeat."""
        return self.failed_at is None or self.heartbeat_at > self.failed_at

    def holds(self, ref: str) -> bool:
        return ref in self.resident

    def answered(self, ref: str, at: datetime | None = None) -> None:
        """The replica answered with ``ref``: its cache now holds it, most recently used."""
        at = at or utcnow()
        self.answers.append((at, ref))
        self._touch(ref)

    def observe(self, server: Server, url: str) -> None:
        """A heartbeat: re-seed the predicted cache if it is newer than the last one."""
        self.url = url
        if server.heartbeat_at <= self.heartbeat_at and self.resident:
            return
        self.heartbeat_at, self.loaded = server.heartbeat_at, server.loaded
        self.capacity = max(self.capacity, len(server.loaded))
        self.resident = OrderedDict.fromkeys(server.loaded)
        since = server.heartbeat_at - MARGIN
        for at, ref in self.answers:
            if at >= since:
                self._touch(ref)
        self._trim()

    def _touch(self, ref: str) -> None:
        self.resident[ref] = None
        self.resident.move_to_end(ref)
        self._trim()

    def _trim(self) -> None:
        while len(self.resident) > self.capacity:
            self.resident.popitem(last=False)


def replica_url(server: Server) -> str | None:
    """Where to reach a server: its advertised ``host:port`` (a URL kept as is); a wildcard
    host (it listens on every interface) is replaced by its hostname. None: no address."""
    address = server.address.strip()
    if not address:
        return None
    if "://" in address:
        return address.rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, "80"
    if host in WILDCARD_HOSTS:
        host = server.hostname
    return f"http://{host}:{port}" if host else None


class Replicas:
    """The live, ready servers of the store, by id; counters survive a refresh."""

    def __init__(self) -> None:
        self._by_id: dict[str, Replica] = {}

    def update(self, servers: Iterable[Server]) -> None:
        """Replace the set with these heartbeats (ready, not draining, with an address)."""
        fresh: dict[str, Replica] = {}
        for server in servers:
            url = replica_url(server)
            if url is None or not server.ready or server.draining or not server.alive:
                continue
            replica = self._by_id.get(server.id)
            if replica is None:
                replica = Replica(server.id, url, server.heartbeat_at)
            replica.observe(server, url)
            fresh[server.id] = replica
        self._by_id = fresh  # a request still holds its replica object; its counter goes on

    def usable(self) -> list[Replica]:
        """The replicas to send to, in a stable order (by id)."""
        return [r for _, r in sorted(self._by_id.items()) if r.usable]

    def all(self) -> list[Replica]:
        return [r for _, r in sorted(self._by_id.items())]

    def failed(self, replica: Replica) -> None:
        """``replica`` refused a connection: leave it out until a newer heartbeat."""
        replica.failed_at = utcnow()
