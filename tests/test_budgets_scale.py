"""Budgets at scale: many budgets' statuses in a fixed few queries (``budget_statuses``),
the same statuses ``budget_status`` gives one at a time, and a page of ``GET /tenants``
(or ``GET /budgets``, ``budgets list``) costing as many queries for 50 tenants as for 5.
On SQLite and PostgreSQL (``store_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

import modelyard.store._budgets as budgets_module
from conftest import selects, statements
from modelyard.access import create_actor_token, create_api_key, rotate_api_key
from modelyard.admin import create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.cli._plane import LocalPlane
from modelyard.monitoring import AlertRules, evaluate_rules
from modelyard.store import Budget, NewInferenceRecord, Store
from modelyard.store._budgets import period_end, period_start
from worlds import fake_world

NOW = datetime.now(UTC)
TODAY = period_start("day", NOW) + (NOW - period_start("day", NOW)) / 2
# Earlier this month, not today (on the 1st of a month there is no such time: then today).
MONTH = max(period_start("month", NOW), period_start("day", NOW) - timedelta(days=1))
LAST_MONTH = period_start("month", NOW) - timedelta(days=3)
FIRST = period_start("day", NOW) <= MONTH  # the 1st of a month: MONTH is today


@pytest.fixture
def ops(store_url: str) -> Iterator[Store]:
    """A store as the admin ``ops``, with base model ``tiny`` priced (0.5 per 1,000 prompt
    tokens, 2 per 1,000 completion tokens: the sums are exact in binary) and ``free``
    unpriced, each with a version (``versions``)."""
    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        fake_world(s, tenant="acme", model="bot", endpoint=None, versions=1)
        fake_world(s, tenant="free-co", model="free-bot", endpoint=None, versions=1,
                   base_model="free")  # fmt: skip
        s.set_token_price("tiny", input_per_1k=0.5, output_per_1k=2.0)
        yield s


def _version(store: Store, model: str) -> int:
    return store.get_model_version(model, 1).id


def _records(store: Store, tenant: str, *spends: tuple[datetime, str | None, int]) -> None:
    """Records of ``tenant`` at (created_at, api key, units): a unit is 1,000 prompt and
    500 completion tokens of ``bot`` (1.5); units 0: one of ``free-bot`` (no price)."""
    tid = store.get_tenant(tenant).id
    bot, free = _version(store, "bot"), _version(store, "free-bot")
    store.add_inference_records(
        NewInferenceRecord(
            id=f"{tenant}-{i}", endpoint_name="support", route="completions", latency_ms=1.0,
            status="ok", http_status=200, tenant_id=tid, api_key_id=key,
            version_id=bot if units else free, prompt_tokens=1000 * max(units, 1),
            completion_tokens=500 * max(units, 1), created_at=at,
        )
        for i, (at, key, units) in enumerate(spends)
    )  # fmt: skip


def _old_status(store: Store, budget: Budget, now: datetime) -> dict[str, Any]:
    """``budget_status`` before ``budget_statuses``, verbatim: a ``spent`` query each."""
    spent = store.spent(budget.tenant, period_start(budget.period, now), key_id=budget.key_id)
    return {
        "tenant": budget.tenant,
        "key_id": budget.key_id,
        "period": budget.period,
        "amount": budget.amount,
        "spent": spent,
        "used_percent": 100 * spent / budget.amount,
        "renews_at": period_end(budget.period, now).isoformat(),
        "updated_at": budget.updated_at.isoformat(),
        "updated_by": budget.updated_by,
    }


def _mixed(store: Store) -> dict[tuple[str, str | None, str], float]:
    """Budgets of every kind, with their expected spend: tenant-wide and per key, day and
    month, past their limit, with no spend, a rotated key (its spend counts the old
    key's), shadows, unpriced versions and last month's records not counted."""
    store.create_tenant("globex")
    store.create_tenant("initech")
    k1 = create_api_key(store, "acme")[0].id
    k3 = create_api_key(store, "acme")[0].id
    g1 = create_api_key(store, "globex")[0].id
    store.set_budget("acme", "day", 2.0)  # 3.0 + 1.5 spent: past it
    store.set_budget("acme", "month", 100.0)
    store.set_budget("acme", "day", 1.0, key_id=k1)  # copied to k2 by the rotation
    store.set_budget("acme", "month", 4.0, key_id=k3)  # no spend
    k2 = rotate_api_key(store, k1, timedelta(hours=1))[0].id
    store.set_budget("globex", "day", 5.0)  # no records at all
    store.set_budget("globex", "month", 3.0, key_id=g1)
    store.set_budget("initech", "month", 1.5)  # exactly spent: 100 %
    store.set_budget("free-co", "day", 1.0)  # unpriced spend only
    _records(store, "acme", (TODAY, k1, 1), (TODAY, k2, 1), (TODAY, None, 1), (MONTH, k2, 2),
             (LAST_MONTH, k2, 4), (TODAY, k3, 0))  # fmt: skip
    shadow = NewInferenceRecord(
        id="acme-shadow", endpoint_name="support", route="completions", latency_ms=1.0,
        status="ok", http_status=200, tenant_id=store.get_tenant("acme").id, api_key_id=k2,
        version_id=_version(store, "bot"), prompt_tokens=8000, completion_tokens=8000,
        created_at=TODAY, shadow=True,
    )  # fmt: skip
    store.add_inference_records([shadow])
    _records(store, "globex", (MONTH, g1, 1), (TODAY, None, 2))
    _records(store, "initech", (MONTH, None, 1))
    _records(store, "free-co", (TODAY, None, 0))
    return {
        ("acme", None, "day"): 4.5 + (3.0 if FIRST else 0.0),
        ("acme", None, "month"): 7.5,
        ("acme", k1, "day"): 1.5,
        ("acme", k2, "day"): 3.0 + (3.0 if FIRST else 0.0),
        ("acme", k3, "month"): 0.0,
        ("globex", None, "day"): 3.0 + (1.5 if FIRST else 0.0),
        ("globex", g1, "month"): 1.5,
        ("initech", None, "month"): 1.5,
        ("free-co", None, "day"): 0.0,
    }


def test_many_statuses_are_each_budgets_status_field_by_field(ops: Store) -> None:
    expected = _mixed(ops)
    budgets = ops.list_budgets()
    assert {(b.tenant, b.key_id, b.period) for b in budgets} == set(expected)
    many = ops.budget_statuses(budgets, NOW)
    assert many == [ops.budget_status(b, NOW) for b in budgets]
    assert many == [_old_status(ops, b, NOW) for b in budgets]
    for status in many:
        spent = expected[(status["tenant"], status["key_id"], status["period"])]
        assert status["spent"] == spent, status
        assert status["used_percent"] == 100 * spent / status["amount"]
    by_subject = {(s["tenant"], s["key_id"], s["period"]): s for s in many}
    assert by_subject[("acme", None, "day")]["used_percent"] > 100
    assert by_subject[("initech", None, "month")]["used_percent"] == 100
    # in the order given, duplicates and all; none given, none read
    again = [budgets[3], budgets[0], budgets[3]]
    assert ops.budget_statuses(again, NOW) == [many[3], many[0], many[3]]
    with statements(ops) as sent:
        assert ops.budget_statuses([], NOW) == []
    assert sent == []


def test_statuses_of_more_tenants_than_one_query_names_are_the_same(
    ops: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``NAMED_TENANTS`` tenants the spend is read for every tenant of the window (no
    list of names too long for one statement): the statuses do not change."""
    _mixed(ops)
    budgets = ops.list_budgets()
    named = ops.budget_statuses(budgets, NOW)
    monkeypatch.setattr(budgets_module, "NAMED_TENANTS", 2)
    assert ops.budget_statuses(budgets, NOW) == named
    assert ops.budget_statuses([b for b in budgets if b.tenant == "globex"], NOW) == [
        s for s in named if s["tenant"] == "globex"
    ]


def _tenants(store: Store, first: int, count: int) -> None:
    """Tenants t<first>.. with two keys, a day budget and a month budget on one key each,
    and spend of both."""
    for i in range(first, first + count):
        name = f"t{i:03d}"
        store.create_tenant(name)
        keys = [create_api_key(store, name)[0].id for _ in range(2)]
        store.set_budget(name, "day", 10.0)
        store.set_budget(name, "month", 20.0, key_id=keys[1])
        _records(store, name, (TODAY, keys[0], 1), (MONTH, keys[1], 1))


def test_a_page_of_tenants_costs_the_same_queries_for_5_or_50(ops: Store) -> None:
    token = create_actor_token(ops, "ops")[1]
    client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {token}"
    plane = LocalPlane(ops)
    costs: dict[str, list[int]] = {"tenants": [], "budgets": [], "cli": []}
    answers: dict[str, Any] = {}
    for first, count in ((100, 5), (105, 45)):  # 5 tenants, then 50
        _tenants(ops, first, count)
        for what, path in (("tenants", "/tenants?after=t0"), ("budgets", "/budgets")):
            with statements(ops) as sent:
                r = client.get(path)
            assert r.status_code == 200, r.text
            answers[what] = r.json()
            costs[what].append(len(selects(sent)))
        with statements(ops) as sent:
            answers["cli"] = plane.list_budget_rows()
        costs["cli"].append(len(selects(sent)))
    assert costs["tenants"][0] == costs["tenants"][1] <= 7, costs
    assert costs["budgets"][0] == costs["budgets"][1] <= 4, costs
    assert costs["cli"][0] == costs["cli"][1] <= 3, costs
    # and what they answer is each budget's status
    assert len(answers["tenants"]) == 50
    for tenant in answers["tenants"]:
        mine = ops.list_budgets(tenant["name"])
        assert tenant["budgets"] == [
            _old_status(ops, b, NOW) | _renewal(s)
            for b, s in zip(mine, tenant["budgets"], strict=True)
        ]
        assert [b["spent"] for b in tenant["budgets"]] == [3.0 if FIRST else 1.5, 1.5]
        assert tenant["keys"] == {"active": 2, "total": 2}
    assert len(answers["budgets"]) == len(answers["cli"]) == 100
    assert answers["cli"] == [
        _old_status(ops, b, NOW) | _renewal(s)
        for b, s in zip(ops.list_budgets(), answers["cli"], strict=True)
    ]


def _renewal(status: dict[str, Any]) -> dict[str, Any]:
    """The status's ``renews_at`` (its request's now, not the test's, though the same
    unless the test ran across midnight)."""
    return {"renews_at": status["renews_at"]}


def test_a_tenants_budgets_show_in_its_page_and_its_own_page(ops: Store) -> None:
    """The tenant's budgets listing (``GET /budgets?tenant=``, ``GET /tenants/{t}``) and
    the set command's answer show the statuses too."""
    expected = _mixed(ops)
    token = create_actor_token(ops, "ops")[1]
    client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {token}"
    listed = client.get("/budgets", params={"tenant": "acme"}).json()
    shown = client.get("/tenants/acme").json()["budgets"]
    assert listed == shown
    assert {(s["key_id"], s["period"]): s["spent"] for s in listed} == {
        (k, p): v for (t, k, p), v in expected.items() if t == "acme"
    }
    assert len(listed) == 5


def test_a_budget_alert_rule_costs_the_same_queries_for_5_or_50_tenants(ops: Store) -> None:
    """``budget_used`` read each budget's spend with a query of its own at every tick, and
    each alert's state was saved in a transaction of its own."""
    rules = AlertRules.parse({"rules": [{"name": "budget-10", "metric": "budget_used",
                                         "comparison": ">=", "threshold": 0.1}]})  # fmt: skip
    costs, fired = [], []
    for first, count in ((100, 5), (105, 45)):  # 5 tenants, then 50
        _tenants(ops, first, count)
        with statements(ops) as sent:
            transitions = evaluate_rules(ops, rules, datetime.now(UTC))
        costs.append(len(selects(sent)))
        fired += [t.alert for t in transitions if t.alert.state == "firing"]
    assert costs[0] == costs[1], costs
    # each tenant's day budget (10) has 1.5 (3.0 on the 1st) spent: 15 % fires; its key's
    # month budget (20) has 1.5: 7.5 % does not
    assert {a.labels["period"] for a in fired} == {"day"} and len(fired) == 50
    day = next(a for a in fired if a.labels["tenant"] == "t120" and a.labels["period"] == "day")
    assert day.value == pytest.approx((3.0 if FIRST else 1.5) / 10)


def test_a_page_of_tenants_reads_only_its_tenants_keys_and_budgets(
    ops: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of 5 of 50 tenants read all 50 tenants' keys and budgets to show 5."""
    _tenants(ops, 100, 50)
    read: dict[str, list[int]] = {"keys": [], "budgets": []}
    for name, method in (("keys", "list_api_keys"), ("budgets", "list_budgets")):
        original = getattr(Store, method)

        def spy(self: Store, *args: Any, _o: Any = original, _n: str = name, **kw: Any) -> Any:
            found = _o(self, *args, **kw)
            read[_n].append(len(found))
            return found

        monkeypatch.setattr(Store, method, spy)
    token = create_actor_token(ops, "ops")[1]
    client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
    r = client.get("/tenants?after=t110&limit=5", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert [t["name"] for t in r.json()] == [f"t{i}" for i in range(111, 116)]
    assert all(t["keys"]["total"] == 2 and len(t["budgets"]) == 2 for t in r.json())
    assert read == {"keys": [10], "budgets": [10]}
