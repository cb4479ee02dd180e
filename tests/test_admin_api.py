"""The admin API (/admin/v1): people's tokens, the same roles and audit as the CLI, no 500s.

A real server (``create_app`` with the admin API mounted, as ``modelyard serve``
does) over a SQLite store; requests through httpx. OIDC tokens: tests/test_oidc.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from clihelp import modelyard
from modelyard.access import create_actor_token, create_api_key, parse_token_scopes
from modelyard.admin import ADMIN_PREFIX, admin_enabled, create_admin_app
from modelyard.audit import AccessPolicy, AuditKeySource
from modelyard.delivery import pause_rollout
from modelyard.errors import ConfigError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import gate_metrics

KEY = "admin-api-test-key-admin-api-test"
ACTORS = {"viv": "viewer", "dev": "developer", "dev2": "developer", "dana": "approver",
          "erin": "approver"}  # fmt: skip


@dataclass
class World:
    store: Store  # acting as ops, the admin
    url: str  # the server's, with the admin prefix
    tokens: dict[str, str]
    tenant_key: str

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def denied(self, actor: str) -> list[Any]:
        return self.store.list_audit_events(action="permission.denied", actor=actor, limit=None)


def _seed(ops: Store, url: str, policy: AccessPolicy) -> None:
    ops.add_actor("ops", "admin")
    for name, role in ACTORS.items():
        ops.add_actor(name, role)
    ops.create_tenant("acme")
    ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
    ops.create_registered_model("support", tenant="acme")
    with Store.open(url, actor="dana", audit_key=KEY, policy=policy) as dana:
        dana.create_run("run-1", base_model="tiny", dataset_id=None, config={}, seed=1,
                        environment={})  # fmt: skip
    for digest, run in (("cd", "run-1"), ("ef", None), ("01", None)):
        ops.create_model_version(
            "support", kind="adapter", artifact_digest=digest * 32, base_model="tiny",
            run_id=run, lineage={}, metrics=gate_metrics(True),
        )  # fmt: skip
    ops.create_endpoint("acme-support", model_ref="support:2", tenant="acme")
    ops.create_endpoint("acme-canary", model_ref="support:2", tenant="acme")
    ops.set_alias("support", "staging", 2)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops", segregation_of_duties=True)
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        _seed(ops, url, policy)
        tokens = {name: create_actor_token(ops, name)[1] for name in [*ACTORS, "ops"]}
        tokens["dev-read"] = create_actor_token(ops, "dev", scopes=["read"])[1]
        _, tenant_key = create_api_key(ops, "acme")
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, server.base_url + ADMIN_PREFIX, tokens, tenant_key)


def _error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def test_no_token_a_bad_token_and_a_tenant_key_get_401(world: World) -> None:
    r = world.call(None, "GET", "/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _error(r)["type"] == "authentication_error"
    for bad in ("nonsense", "myp_x_y", world.tokens["viv"][:-1] + "x", "a.b.c"):
        r = httpx.get(world.url + "/models", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
    r = httpx.get(world.url + "/models", headers={"Authorization": f"Bearer {world.tenant_key}"})
    assert r.status_code == 401
    assert "tenant's API key does not open the admin API" in _error(r)["message"]
    # and the tenant key still works where it belongs; the people's token does not
    chat = {"model": "acme-support", "messages": [{"role": "user", "content": "hi"}]}
    base = world.url.removesuffix(ADMIN_PREFIX)
    ok = httpx.post(base + "/v1/chat/completions", json=chat,
                    headers={"Authorization": f"Bearer {world.tenant_key}"})  # fmt: skip
    assert ok.status_code == 200
    person = httpx.post(base + "/v1/chat/completions", json=chat,
                        headers={"Authorization": f"Bearer {world.tokens['ops']}"})  # fmt: skip
    assert person.status_code == 401


READS = [
    "/whoami", "/models", "/models/support", "/models/support/versions",
    "/models/support/versions/1", "/models/support/versions/1/lineage",
    "/models/support/versions/1/card", "/endpoints", "/endpoints/acme-support",
    "/rollouts", "/endpoints/acme-support/rollout", "/audit/events?action=alias.*&limit=5",
    "/audit/verify",
]  # fmt: skip
MUTATIONS: list[tuple[str, str, Any]] = [
    ("PUT", "/models/support/aliases/staging", {"version": 3}),
    ("DELETE", "/models/support/aliases/staging", None),
    ("DELETE", "/models/support/aliases/no-such-alias", None),  # 403 first, not 404
    ("POST", "/models/support/versions/3/archive", None),
    ("PATCH", "/models/support/versions/1/tags", {"set": {"team": "claims"}}),
    ("PUT", "/endpoints/acme-canary/traffic", {"weights": {"2": 50, "3": 50}}),
    ("POST", "/endpoints/acme-canary/rollout", {"to": "support:3", "steps": [50, 100]}),
    ("POST", "/endpoints/acme-support/rollout/pause", None),
    ("POST", "/endpoints/acme-support/rollout/resume", None),
    ("POST", "/endpoints/acme-support/rollout/promote", None),
    ("POST", "/endpoints/acme-support/rollout/abort", {"reason": "no"}),
]


def test_a_viewer_reads_everything_and_every_change_is_403_and_audited(world: World) -> None:
    r = world.call("ops", "POST", "/endpoints/acme-support/rollout",
                   json={"to": "support:3", "steps": [10, 100], "bake_s": 600})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "running" and r.json()["target_ref"] == "support:3"
    for path in READS:
        r = world.call("viv", "GET", path)
        assert r.status_code == 200, (path, r.text)
    assert world.call("viv", "GET", "/whoami").json()["role"] == "viewer"
    version = world.call("viv", "GET", "/models/support/versions/1").json()
    assert version["gates"]["state"] == "passed" and version["created_by"] == "dana"
    assert "support:1" in world.call("viv", "GET", "/models/support/versions/1/card").json()["ref"]
    before = len(world.denied("viv"))
    for method, path, body in MUTATIONS:
        if path.endswith("/resume"):  # resuming a running rollout changes nothing
            pause_rollout(world.store, "acme-support")
        r = world.call("viv", method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert _error(r)["type"] == "permission_error"
    denied = world.denied("viv")
    assert len(denied) - before == len(MUTATIONS)  # each refusal on the chain, as viv
    assert [r.weight for r in world.store.get_endpoint("acme-canary").routes] == [100]
    assert world.store.latest_rollout("acme-support").status == "paused"  # by ops only
    assert world.store.resolve_model_ref("support@staging").version == 2
    assert world.store.verify_audit_chain().ok


def test_tags_through_the_api_follow_the_clis_rules(world: World) -> None:
    """A missing key to remove, a control character or an overlong value: 400 naming it,
    as the CLI refuses them, and nothing is changed or audited."""
    path = "/models/support/versions/1/tags"
    before = len(world.store.list_audit_events(action="model_version.tagged"))
    for body, words in (
        ({"remove": ["tema"]}, "has no tag 'tema' to remove"),
        ({"set": {"team": "a\nb"}}, "newline or another control character"),
        ({"set": {"team": "x" * 5001}}, "over the limit"),
        ({"set": {"a=b": "c"}}, "holds '='"),
    ):
        r = world.call("dev", "PATCH", path, json=body)
        assert r.status_code == 400 and words in _error(r)["message"], (body, r.text)
    assert world.store.resolve_model_ref("support:1").tags == {}
    assert len(world.store.list_audit_events(action="model_version.tagged")) == before


def test_a_developer_changes_things_audited_as_itself(world: World) -> None:
    r = world.call("dev", "PUT", "/endpoints/acme-canary/traffic",
                   json={"weights": {"2": 50, "3": 50}})  # fmt: skip
    assert r.status_code == 200, r.text
    event = world.store.list_audit_events(action="endpoint.traffic_set", limit=1)[0]
    assert event.actor == "dev" and event.subject == "acme-canary"
    r = world.call("dev", "PATCH", "/models/support/versions/1/tags",
                   json={"set": {"team": "claims"}, "remove": []})  # fmt: skip
    assert r.status_code == 200 and r.json()["tags"] == {"team": "claims"}
    # protected alias: a developer is refused, on the chain
    r = world.call("dev", "PUT", "/models/support/aliases/champion", json={"version": 2})
    assert r.status_code == 403 and "needs role approver" in _error(r)["message"]
    assert world.denied("dev")[0].payload["attempted"] == "alias.set"
    # a read-only token of the same developer: 403 on a change, audited with its scope
    r = world.call("dev-read", "PUT", "/endpoints/acme-canary/traffic",
                   json={"weights": {"2": 100}})  # fmt: skip
    assert r.status_code == 403 and "needs scope write" in _error(r)["message"]
    refusal = world.denied("dev")[0]
    assert refusal.payload["required_scope"] == "write" and refusal.payload["via"] == "token"
    assert world.call("dev-read", "GET", "/endpoints/acme-canary").json()["routes"]


def test_the_trainer_cannot_approve_its_own_version(world: World) -> None:
    r = world.call("dana", "PUT", "/models/support/aliases/champion", json={"version": 1})
    assert r.status_code == 403
    assert "segregation of duties" in _error(r)["message"]
    refusal = world.denied("dana")[0]
    assert refusal.subject == "support@champion" and refusal.payload["attempted"] == "alias.set"
    r = world.call("erin", "PUT", "/models/support/aliases/champion", json={"version": 1})
    assert r.status_code == 200 and "champion" in r.json()["aliases"]
    moved = world.store.list_audit_events(action="alias.set", subject="support@champion")[0]
    assert moved.actor == "erin"


def test_a_revoked_or_expired_token_gets_401(world: World) -> None:
    token, secret = create_actor_token(world.store, "dev", expires_in=timedelta(days=1))
    ok = httpx.get(world.url + "/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200 and ok.json()["token_id"] == token.id
    world.store.revoke_actor_token(token.id)
    r = httpx.get(world.url + "/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and "revoked" in _error(r)["message"]
    # a lifetime under a second is refused (it would never expire): one second, then past it
    _, old = create_actor_token(world.store, "dev", expires_in=timedelta(seconds=1))
    time.sleep(1.1)
    r = httpx.get(world.url + "/whoami", headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401 and "expired" in _error(r)["message"]


def test_one_requests_actor_never_leaks_into_another(world: World) -> None:
    """Two actors tag at once on the server's worker threads; each event names its own."""
    errors: list[str] = []

    def tag(actor: str, i: int) -> None:
        r = world.call(actor, "PATCH", "/models/support/versions/2/tags",
                       json={"set": {f"by-{actor}-{i}": actor}})  # fmt: skip
        if r.status_code != 200:
            errors.append(r.text)

    threads = [threading.Thread(target=tag, args=(a, i)) for i in range(8) for a in ("dev", "dev2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    events = world.store.list_audit_events(action="model_version.tagged", limit=None)
    assert len(events) == 16
    for e in events:
        (key,) = e.payload["set"]
        assert key.startswith(f"by-{e.actor}-"), e


def test_the_admin_listens_on_this_machine_only_unless_tls_protects_it() -> None:
    assert admin_enabled("127.0.0.1", None, tls=False, behind_tls_proxy=False)
    assert admin_enabled("::1", None, tls=False, behind_tls_proxy=False)
    assert not admin_enabled("0.0.0.0", None, tls=False, behind_tls_proxy=False)
    assert admin_enabled("0.0.0.0", None, tls=True, behind_tls_proxy=False)
    assert admin_enabled("10.0.0.5", True, tls=False, behind_tls_proxy=True)
    assert not admin_enabled("127.0.0.1", False, tls=False, behind_tls_proxy=False)
    with pytest.raises(ConfigError, match="clear text"):
        admin_enabled("0.0.0.0", True, tls=False, behind_tls_proxy=False)


def test_tokens_cli_and_serve_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"  # no init: the OS user is the bootstrap admin
    made = modelyard("tokens", "create", "--for", "bob", "--scopes", "read", "--name", "ci",
                     "--json", home=home)  # fmt: skip
    assert made.code == 0, made.err
    created = json.loads(made.out)
    assert created["token"].startswith("myp_") and created["scopes"] == ["read"]
    listed = modelyard("tokens", "list", "--all", home=home)
    assert listed.code == 0 and created["id"] in listed.out
    assert created["token"] not in listed.out and "bob" in listed.out  # shown once only
    refused = modelyard("tokens", "create", "--for", "carol", home=home,
                        env={"MODELYARD_ACTOR": "bob"})  # fmt: skip
    assert refused.code == 1 and "needs role admin" in refused.err
    assert modelyard("tokens", "revoke", created["id"], home=home).code == 0
    with Store.open(
        f"sqlite:///{home / 'store.db'}", actor="ops",
        audit_key=AuditKeySource(key_file=home / "audit.key"),
        policy=dataclasses.replace(AccessPolicy(), bootstrap_admin=None),
    ) as store:  # fmt: skip
        assert store.get_actor_token(created["id"]).revoked_at is not None  # type: ignore[union-attr]
        actions = [e.action for e in store.list_audit_events(action="actor_token.*")]
        assert actions == ["actor_token.revoked", "actor_token.created"]
    with pytest.raises(ConfigError, match="invalid token scopes"):
        parse_token_scopes("read,admin")
    clear = modelyard("serve", "--host", "0.0.0.0", "--admin", "--engine", "echo", home=home)
    lines = [line for line in clear.err.splitlines() if line.strip()]
    assert clear.code == 2 and len(lines) == 1 and "--behind-tls-proxy" in lines[0], clear.err


def test_no_input_makes_a_server_error(world: World) -> None:
    """Every operation of the admin OpenAPI: 8 valid inputs each, 8 invalid bodies for
    those with one, as ops (an admin: the requests get past the role checks)."""
    api = schemathesis.openapi.from_url(world.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20
    headers = {"Authorization": f"Bearer {world.tokens['ops']}"}
    for operation in operations:
        with_body = bool(operation.get_request_payload_content_types())
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if with_body else [])
        for mode in modes:

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=8, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
            )  # fmt: skip
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=world.url, headers=headers, checks=[not_a_server_error]
                )

            run()
    assert world.store.verify_audit_chain().ok


def test_the_audit_log_pages_back_to_its_first_event(world: World) -> None:
    """Newest first, ``before`` the last seq of a page: every event once, down to seq 1."""
    newest = world.store.audit_head().seq
    seen: list[int] = []
    path = "/audit/events?limit=4"
    while True:
        r = world.call("viv", "GET", path)
        assert r.status_code == 200, r.text
        page = [e["seq"] for e in r.json()]
        if not page:
            break
        seen += page
        path = f"/audit/events?limit=4&before={page[-1]}"
    assert seen == list(range(newest, 0, -1)) and newest > 8
    r = world.call("viv", "GET", "/audit/events?before=0")
    assert r.status_code == 400 and _error(r)["param"] == "before"
    r = world.call("viv", "GET", f"/audit/events?before={2**86}")  # found by the fuzzer: a 500
    assert r.status_code == 400 and _error(r)["param"] == "before"
