"""Token usage for chargeback (``budgets usage``, ``GET /admin/v1/usage``): the users'
requests and tokens by day, tenant, key or version, with their cost at today's prices,
read from the usage kept per day. On SQLite and PostgreSQL (``store_url``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from clihelp import modelyard
from modelyard.access import create_actor_token, create_api_key
from modelyard.admin import create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.errors import ConfigError
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

DAY1 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 4, 23, 59, 59, 999999, tzinfo=UTC)  # the day's last instant


@pytest.fixture
def ops(store_url: str) -> Iterator[Store]:
    """``acme`` with ``bot`` 1 and 2 on base ``tiny`` (1 per 1,000 prompt tokens, 2 per
    1,000 completion tokens), ``globex`` with ``free-bot`` 1 on an unpriced base."""
    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=2)
        fake_world(s, tenant="globex", model="free-bot", endpoint=None, versions=1,
                   base_model="free")  # fmt: skip
        s.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
        yield s


def _fill(store: Store) -> str:
    """Records of both tenants over two days; returns acme's key."""
    key = create_api_key(store, "acme")[0].id
    acme, globex = store.get_tenant("acme").id, store.get_tenant("globex").id
    v1, v2 = (store.get_model_version("bot", n).id for n in (1, 2))
    free = store.get_model_version("free-bot", 1).id

    def rec(i: int, at: datetime, tenant: int, version: int, **extra: Any) -> NewInferenceRecord:
        fields: dict[str, Any] = {
            "id": f"r{i}", "endpoint_name": "support", "route": "completions",
            "latency_ms": 1.0, "status": "ok", "http_status": 200, "tenant_id": tenant,
            "version_id": version, "prompt_tokens": 1000, "completion_tokens": 500,
            "created_at": at,
        }  # fmt: skip
        return NewInferenceRecord(**(fields | extra))

    store.add_inference_records([
        rec(1, DAY1, acme, v1, api_key_id=key), rec(2, DAY1, acme, v2, api_key_id=key),
        rec(3, DAY2, acme, v1), rec(4, DAY2, acme, v1, shadow=True),
        rec(5, DAY2, acme, v2, status="error", http_status=500, completion_tokens=0),
        rec(6, DAY1, globex, free), rec(7, DAY1 - timedelta(days=3), acme, v1),
    ])  # fmt: skip
    store.add_monitored_records([], started=[rec(8, DAY2, acme, v1)], server_id="s")
    return key


def test_usage_sums_by_what_is_asked(ops: Store) -> None:
    key = _fill(ops)
    since = DAY1
    [total] = ops.usage(since=since, by=())
    assert total == {"requests": 5, "prompt_tokens": 5000, "completion_tokens": 2000,
                     "cost": pytest.approx(3 * 2.0 + 1.0), "unpriced_tokens": 1500}  # fmt: skip
    by_day = ops.usage(since=since, tenant="acme", by=["day"])
    assert [(r["day"], r["requests"], r["cost"]) for r in by_day] == [
        ("2026-11-03", 2, pytest.approx(4.0)), ("2026-11-04", 2, pytest.approx(3.0)),
    ]  # fmt: skip
    rows = ops.usage(since=since, tenant="acme", by=["key", "version"])
    assert [(r["key"], r["version"], r["requests"]) for r in rows] == [
        (None, "bot:1", 1),
        (None, "bot:2", 1),
        (key, "bot:1", 1),
        (key, "bot:2", 1),
    ]
    until = ops.usage(since=since, until=DAY2, by=["tenant"])
    assert [(r["tenant"], r["requests"]) for r in until] == [("acme", 2), ("globex", 1)]
    with pytest.raises(ConfigError, match="cannot sum usage by 'model': by any of day"):
        ops.usage(since=since, by=["model"])


def test_usage_through_the_admin_api(ops: Store) -> None:
    _fill(ops)
    client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {create_actor_token(ops, 'ops')[1]}"
    r = client.get("/usage", params={"since": "2026-11-01", "by": "tenant,version"})
    assert r.status_code == 200, r.text
    assert [(x["tenant"], x["version"], x["requests"], x["unpriced_tokens"]) for x in r.json()] == [
        ("acme", "bot:1", 2, 0), ("acme", "bot:2", 2, 0), ("globex", "free-bot:1", 1, 1500),
    ]  # fmt: skip
    r = client.get("/usage", params={"since": "2026-11-01", "by": "day,colour"})
    assert r.status_code == 400 and "cannot sum usage by 'colour'" in r.text, r.text
    r = client.get("/usage", params={"since": "2026-11-01", "tenant": "nobody"})
    assert r.status_code == 404, r.text


def test_budgets_usage_in_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"MODELYARD_STORE_URL": url, "MODELYARD_AUDIT_KEY": "5e" * 32}
    monkeypatch.setenv("MODELYARD_AUDIT_KEY", env["MODELYARD_AUDIT_KEY"])
    assert modelyard("init", home=home, env=env).code == 0
    with Store.open(url) as store:
        fake_world(store, tenant="acme", model="bot", endpoint=None, versions=2)
        fake_world(store, tenant="globex", model="free-bot", endpoint=None, versions=1,
                   base_model="free")  # fmt: skip
        store.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
        _fill(store)
    r = modelyard("budgets", "usage", "--since", "2026-11-01", "--by", "day", "--json",
                  home=home, env=env)  # fmt: skip
    assert r.code == 0, r.err
    assert [(x["day"], x["requests"]) for x in json.loads(r.out)] == [
        ("2026-11-03", 3),
        ("2026-11-04", 2),
    ]
    r = modelyard("budgets", "usage", "--since", "2026-11-01", "--until", "2026-11-04",
                  "--by", "tenant", home=home, env=env)  # fmt: skip
    assert r.code == 0, r.err
    assert "usage from 2026-11-01" in r.out and "+1,500 unpriced tokens" in r.out, r.out
    assert "usage from 2026-11-01 until 2026-11-04" in r.out, r.out  # the 4th not counted
    assert "total" in r.out and "3,000" in r.out, r.out  # 3 requests' prompt tokens
    r = modelyard("budgets", "usage", "--by", "weekday", home=home, env=env)
    assert r.code == 2 and "cannot sum usage by 'weekday'" in r.err and "Traceback" not in r.err
