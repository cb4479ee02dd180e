"""The fleet: servers' heartbeats and the leases that pick one controller."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelyard.errors import Conflict
from modelyard.store._core import StoreCore
from modelyard.store._rows import lock_name
from modelyard.store._schema import LeaseRow, ServerRow, utcnow
from modelyard.store.entities import Server


class FleetStore(StoreCore):
    """Server heartbeats and leases (not audited: liveness, not changes)."""

    # -- servers ---------------------------------------------------------------------------

    def heartbeat_server(
        self,
        server_id: str,
        *,
        address: str,
        hostname: str,
        pid: int,
        engine: str,
        modelyard_version: str,
        started_at: datetime,
        ready: bool,
        draining: bool,
        state: Mapping[str, Any],
    ) -> None:
        """Record (or refresh) a replica's heartbeat; data plane, so not audited."""
        with self._write(f"record the heartbeat of server {server_id!r}") as s:
            lock_name(s, "server", server_id)
            row = s.get(ServerRow, server_id, populate_existing=True)
            if row is None:
                row = ServerRow(id=server_id, started_at=started_at)
                s.add(row)
            row.address, row.hostname, row.pid, row.engine = address, hostname, pid, engine
            row.modelyard_version = modelyard_version
            row.heartbeat_at = utcnow()
            row.ready, row.draining, row.state = ready, draining, dict(state)

    def remove_server(self, server_id: str) -> None:
        with self._write(f"remove server {server_id!r}") as s:
            row = s.get(ServerRow, server_id)
            if row is not None:
                s.delete(row)

    def list_servers(
        self, *, stale_after_s: float = 15.0, alive: bool | None = None
    ) -> list[Server]:
        """Servers by last heartbeat, newest first; alive: a heartbeat within ``stale_after_s``."""
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        with self._session("list servers") as s:
            rows = list(s.scalars(select(ServerRow).order_by(ServerRow.heartbeat_at.desc())))
        servers = [to_server(r, r.heartbeat_at >= cutoff) for r in rows]
        return [x for x in servers if alive is None or x.alive == alive]

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with contextlib.suppress(Conflict), self._write(f"take the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is None:
                s.add(LeaseRow(name=name, holder=holder, acquired_at=now, expires_at=expires))
                s.flush()
                return True
            taken = s.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == name,
                    (LeaseRow.holder == holder) | (LeaseRow.expires_at < now),
                )
                .values(
                    holder=holder,
                    expires_at=expires,
                    acquired_at=row.acquired_at if row.holder == holder else now,
                )
            )
            return bool(getattr(taken, "rowcount", 0))
        return False  # another holder inserted the row first

    def release_lease(self, name: str, holder: str) -> None:
        with self._write(f"release the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is not None and row.holder == holder:
                s.delete(row)

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """(holder, expires_at) of a lease that has not expired, else None."""
        with self._session(f"read the lease {name!r}") as s:
            row = s.get(LeaseRow, name)
            if row is None or row.expires_at < utcnow():
                return None
            return row.holder, row.expires_at


# -- helpers ---------------------------------------------------------------------------------


def holds_lease(s: Session, name: str, holder: str) -> bool:
    """Whether ``holder`` holds the lease; the row stays share-locked until commit, so the
    lease cannot change hands while the caller's fenced change is being made."""
    row = s.get(LeaseRow, name, with_for_update={"read": True}, populate_existing=True)
    return row is not None and row.holder == holder and row.expires_at >= utcnow()


def to_server(r: ServerRow, alive: bool) -> Server:
    state = r.state
    return Server(
        r.id, r.address, r.hostname, r.pid, r.engine, r.modelyard_version, r.started_at,
        r.heartbeat_at, r.ready, r.draining, tuple(state.get("loaded", ())),
        dict(state.get("failures", {})), dict(state.get("prepared", {})), alive=alive,
    )  # fmt: skip
