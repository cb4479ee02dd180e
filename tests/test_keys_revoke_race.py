"""Two `keys revoke` of one key at the same time: exactly one says it revoked the key (and
writes the one `api_key.revoked` event), the other says it was already revoked, on SQLite and
on PostgreSQL, through the CLI's plane on the store and through the admin API.

Each revocation waits, just before its write transaction, until the other has reached the
same point: both have read the key (not revoked yet) before either changes it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from modelyard.access import create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli._plane import LocalPlane
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store

T = TypeVar("T")


def _meet_before_writing(store: Store, barrier: threading.Barrier) -> None:
    """``store``'s write transactions start once ``barrier``'s parties all got there."""
    write = store._write

    @contextlib.contextmanager
    def met(what: str) -> Iterator[Any]:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        with write(what) as s:
            yield s

    store._write = met  # type: ignore[method-assign]


def _both(first: Callable[[], T], second: Callable[[], T]) -> list[T]:
    with ThreadPoolExecutor(2) as pool:
        return [f.result(timeout=60) for f in [pool.submit(first), pool.submit(second)]]


def test_two_revocations_at_once_one_revokes_the_other_says_already(store_url: str) -> None:
    with Store.open(store_url) as setup:
        setup.create_tenant("acme")
        key_id = create_api_key(setup, "acme")[0].id
    barrier = threading.Barrier(2)
    with Store.open(store_url) as a, Store.open(store_url) as b:
        for handle in (a, b):
            _meet_before_writing(handle, barrier)
        answers = _both(
            lambda: LocalPlane(a).revoke_api_key(key_id),
            lambda: LocalPlane(b).revoke_api_key(key_id),
        )
    assert sorted(already for _, already in answers) == [False, True]
    assert answers[0][0].revoked_at == answers[1][0].revoked_at is not None
    with Store.open(store_url) as check:
        events = check.list_audit_events(action="api_key.revoked", subject=key_id)
        assert len(events) == 1
        assert check.get_api_key(key_id).revoked_at == answers[0][0].revoked_at  # type: ignore[union-attr]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[str, str, str, Store]]:
    """The admin API's base URL, an admin's token, a key of tenant acme, and the store."""
    policy = AccessPolicy(bootstrap_admin="ops")
    audit_key = "keys-revoke-race-audit-key-keys-revoke-race"
    with Store.open(
        f"sqlite:///{tmp_path}/s.db", actor="ops", audit_key=audit_key, policy=policy
    ) as ops:
        ops.add_actor("ops", "admin")
        ops.create_tenant("acme")
        key = create_api_key(ops, "acme")[0]
        token = create_actor_token(ops, "ops")[1]
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield server.base_url + ADMIN_PREFIX, token, key.id, ops


def test_two_revocations_at_once_through_the_admin_api(
    admin: tuple[str, str, str, Store],
) -> None:
    url, token, key_id, store = admin
    _meet_before_writing(store, threading.Barrier(2))

    def revoke() -> httpx.Response:
        return httpx.post(
            f"{url}/keys/{key_id}/revoke", headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )  # fmt: skip

    answers = _both(revoke, revoke)
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert sorted(r.json()["already_revoked"] for r in answers) == [False, True]
    assert {r.json()["state"] for r in answers} == {"revoked"}
    assert answers[0].json()["revoked_at"] == answers[1].json()["revoked_at"]
    events = store.list_audit_events(action="api_key.revoked", subject=key_id)
    assert len(events) == 1
