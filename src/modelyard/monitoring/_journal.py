"""The request journal: a request is recorded when it starts, so that none goes unrecorded.

The data plane hands ``RecordWriter.started`` a ``running`` record of each request
it admits (``started_record``); the writer holds it ``start_delay`` seconds and
writes it only when the request is still running then, so a short request costs
one row as before and a long one (a stream) one insert plus one update. Each row
carries the id of the server running it (``new_server_id``). When a server dies
(kill -9, a crash, the machine), ``close_abandoned`` (run by every server at start
and then every ``sweep_s``) closes the ``running`` rows of servers that are gone as
failed: status ``error``, HTTP 500, ``ABANDONED``.

A server is gone when its heartbeat is stale, or when it ran on this machine and
its process no longer exists (so a restart closes the rows of the server it
replaces at once).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime

from modelyard.errors import AuditError, AuditKeyMissing, ModelyardError
from modelyard.store import NewInferenceRecord, Store

log = logging.getLogger(__name__)

ABANDONED = "server stopped before the request finished"
RUNNING = "running"


def new_server_id() -> str:
    """A server's id: ``<hostname>-<pid>-<random>`` (also its heartbeat's id)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def started_record(
    record_id: str,
    *,
    endpoint: str,
    route: str,
    tenant_id: int | None,
    api_key_id: str | None,
    version_id: int | None,
    prompt: str | None,
    source: str = "api",
    job_id: str | None = None,
) -> NewInferenceRecord:
    """The ``running`` record of a request just admitted (``prompt`` after the policy;
    ``source`` and ``job_id``: where it comes from, as its end record says)."""
    return NewInferenceRecord(
        id=record_id,
        endpoint_name=endpoint,
        route=route,
        latency_ms=0.0,
        status=RUNNING,
        http_status=0,
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        version_id=version_id,
        prompt=prompt,
        source=source,
        job_id=job_id,
    )


def _process_here(server_id: str) -> bool | None:
    """Whether the process of ``server_id`` runs, when it ran on this machine; None when
    it ran elsewhere."""
    host = server_id.rpartition("-")[0]  # <hostname>-<pid>-<random>
    host, _, pid = host.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def gone_servers(
    store: Store,
    me: str | None = None,
    *,
    stale_after_s: float = 15.0,
    started_before: datetime | None = None,
) -> list[str]:
    """The servers holding ``running`` records (not ``me``) that are gone: their heartbeat
    is stale, or they ran on this machine and their process has ended.

    With ``started_before`` (an age bound: ``modelyard doctor --stale``), only records
    started before it count, and a server with no heartbeat row at all (one started
    without heartbeats, on another machine) is gone too unless its process runs here.
    """
    candidates = [
        sid for sid in store.running_record_servers(started_before=started_before) if sid != me
    ]
    if not candidates:
        return []
    known = {s.id: s for s in store.list_servers(stale_after_s=stale_after_s)}
    gone = []
    for sid in candidates:
        here = _process_here(sid)
        if sid in known:
            dead = not known[sid].alive or here is False
        else:
            dead = here is False or (started_before is not None and here is None)
        if dead:
            gone.append(sid)
    return gone


def close_abandoned(store: Store, me: str | None = None, *, stale_after_s: float = 15.0) -> int:
    """Close the ``running`` records of servers that are gone (not ``me``); returns how many.

    The closed records are sealed (``store.close_running_records(seal=True)``); when the
    audit chain refuses, they are closed unsealed, as the record writer writes then.
    A store error is logged, never raised: the next sweep tries again.
    """
    try:
        gone = gone_servers(store, me, stale_after_s=stale_after_s)
        try:
            closed = store.close_running_records(gone, ABANDONED, seal=True) if gone else 0
        except (AuditError, AuditKeyMissing) as exc:
            log.error("closing the requests of stopped servers unsealed: %s", exc.one_line())
            closed = store.close_running_records(gone, ABANDONED)
    except ModelyardError as exc:
        log.warning("could not close the requests of stopped servers: %s", exc.one_line())
        return 0
    if closed:
        log.warning("closed %d requests of %d stopped servers as failed", closed, len(gone))
    return closed


__all__ = ["ABANDONED", "close_abandoned", "gone_servers", "new_server_id", "started_record"]
