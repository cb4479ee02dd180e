"""`modelyard keys revoke` of a key already revoked says so, with when, and changes nothing
(no second `api_key.revoked` event); the admin API's answer says it too (`already_revoked`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clihelp import modelyard
from modelyard.access import create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store


def test_revoking_a_revoked_key_says_when_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    made = modelyard("keys", "create", "--tenant", "acme", "--json", home=home)
    key_id = json.loads(made.out)["id"]

    first = modelyard("keys", "revoke", key_id, home=home)
    assert first.code == 0, first.err
    assert f"revoked key {key_id} of tenant acme" in first.out

    again = modelyard("keys", "revoke", key_id, home=home)
    assert again.code == 0, again.err
    assert f"revoked key {key_id}" not in again.out
    assert f"key {key_id} of tenant acme was already revoked on " in again.out
    assert "UTC; nothing changed" in again.out

    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        events = store.list_audit_events(action="api_key.revoked", subject=key_id)
        assert len(events) == 1
        revoked_at = store.get_api_key(key_id).revoked_at  # type: ignore[union-attr]
    assert f"{revoked_at:%Y-%m-%d %H:%M} UTC" in again.out


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """The admin API's base URL, an admin's token and a key of tenant acme."""
    policy = AccessPolicy(bootstrap_admin="ops")
    audit_key = "keys-revoke-again-audit-key-keys-revoke-again"
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
            yield server.base_url + ADMIN_PREFIX, token, key.id


def test_the_admin_api_says_already_revoked(admin: tuple[str, str, str]) -> None:
    url, token, key_id = admin
    auth = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{url}/keys/{key_id}/revoke", headers=auth, timeout=30)
    assert first.status_code == 200, first.text
    assert first.json()["already_revoked"] is False and first.json()["state"] == "revoked"
    again = httpx.post(f"{url}/keys/{key_id}/revoke", headers=auth, timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["already_revoked"] is True
    assert again.json()["revoked_at"] == first.json()["revoked_at"]


def test_the_cli_through_a_server_says_already_revoked(
    admin: tuple[str, str, str], tmp_path: Path
) -> None:
    url, token, key_id = admin
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"MODELYARD_URL": url.removesuffix(ADMIN_PREFIX), "MODELYARD_TOKEN": token}
    first = modelyard("keys", "revoke", key_id, home=empty, env=env)
    assert first.code == 0 and f"revoked key {key_id} of tenant acme" in first.out, first.err
    again = modelyard("keys", "revoke", key_id, home=empty, env=env)
    assert again.code == 0, again.err
    assert f"key {key_id} of tenant acme was already revoked on " in again.out
