"""Journey 2, the ML engineer onboarding one more tenant: the operator's mistakes get a
clear error. A misspelt tenant given to a listing is "no tenant named ...", as every
other command says, never an empty list that reads as "this tenant has no keys"."""

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


def test_keys_list_of_a_tenant_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    assert modelyard("tenants", "create", "globex", home=home).code == 0
    made = modelyard("keys", "create", "--tenant", "acme", "--json", home=home)
    assert made.code == 0, made.err

    typo = modelyard("keys", "list", "--tenant", "acmee", home=home)
    assert typo.code == 1, typo.out
    assert "no tenant named 'acmee'" in typo.err and "modelyard tenants list" in typo.err
    assert "Traceback" not in typo.err

    empty = modelyard("keys", "list", "--tenant", "globex", "--json", home=home)
    assert empty.code == 0 and json.loads(empty.out) == []  # a tenant with no keys yet
    mine = modelyard("keys", "list", "--tenant", "acme", "--json", home=home)
    assert [k["id"] for k in json.loads(mine.out)] == [json.loads(made.out)["id"]]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The admin API's base URL and an admin's token, over a store with tenant acme."""
    policy = AccessPolicy(bootstrap_admin="ops")
    key = "journey2-operator-audit-key-journey2-operator"
    with Store.open(f"sqlite:///{tmp_path}/s.db", actor="ops", audit_key=key, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        ops.create_tenant("acme")
        create_api_key(ops, "acme")
        token = create_actor_token(ops, "ops")[1]
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield server.base_url + ADMIN_PREFIX, token


@pytest.mark.parametrize("path", ["/keys", "/budgets"])
def test_admin_listing_of_a_tenant_that_does_not_exist_is_a_404(
    admin: tuple[str, str], path: str
) -> None:
    url, token = admin
    auth = {"Authorization": f"Bearer {token}"}
    typo = httpx.get(url + path, params={"tenant": "acmee"}, headers=auth, timeout=30)
    assert typo.status_code == 404, typo.text
    error = typo.json()["error"]
    assert error["code"] == "tenant_not_found" and "'acmee'" in error["message"]
    known = httpx.get(url + path, params={"tenant": "acme"}, headers=auth, timeout=30)
    assert known.status_code == 200, known.text
