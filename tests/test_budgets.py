"""Money budgets: a tenant or key that spent its day's budget gets OpenAI's 429
insufficient_quota (which the official client does not retry) until the day ends, other
tenants and keys go on, a restarted server remembers what was spent, two replicas on one
Redis share the totals, the 80 % alert reaches the webhook, and the CLI governs budgets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.monitoring import AlertRules, tick
from modelyard.serving import BackgroundServer, EchoEngine, ServerLimits, create_app
from modelyard.store import Store
from redisserver import RedisServer, redis_server
from waiting import until
from worlds import two_tenant_world

PROMPT = "a b c d"  # the echo engine answers it word for word: 4 + 4 tokens, 0.8 at 0.1 each


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as s:
        two_tenant_world(s, versions=1, template="text")
        s.set_token_price("tiny", input_per_1k=100.0, output_per_1k=100.0)
        yield s


def _server(store: Store, limits: ServerLimits | None = None) -> BackgroundServer:
    app = create_app(store, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    return BackgroundServer(app)


def _complete(url: str, key: str, model: str = "acme-support") -> httpx.Response:
    return httpx.post(
        url + "/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _spent(urls: list[str], tenant: str) -> float:
    """The spend the servers' /metrics show for ``tenant`` (summed over replicas)."""
    total = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("modelyard_spend_total{") and f'tenant="{tenant}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_spent(urls: list[str], tenant: str, amount: float) -> None:
    until(
        f"{tenant}'s metrics to show {amount} spent",
        lambda: _spent(urls, tenant) >= amount - 1e-9,
        timeout_s=10,
    )


def _records(store: Store, count: int) -> None:
    until(
        f"{count} records",
        lambda: len(store.list_inference_records(limit=1000)) >= count,
        timeout_s=10,
    )


def _wait_recorded_spend(store: Store, amount: float) -> None:
    """Until acme's records of today (written asynchronously) hold ``amount`` spent."""
    until(
        f"the records to show {amount} spent",
        lambda: store.spent("acme", datetime.now(UTC).replace(hour=0, minute=0)) >= amount - 1e-9,
        timeout_s=10,
    )


def test_a_spent_daily_budget_refuses_the_tenant_until_the_day_ends(store: Store) -> None:
    store.set_budget("acme", "day", 2.0)
    _, acme = create_api_key(store, "acme")
    _, globex = create_api_key(store, "globex")
    with _server(store) as server:
        assert [_complete(server.base_url, acme).status_code for _ in range(3)] == [200] * 3
        _wait_spent([server.base_url], "acme", 2.4)
        with (
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=acme, max_retries=2) as client,
            pytest.raises(openai.RateLimitError) as refused,
        ):
            client.completions.create(model="acme-support", prompt=PROMPT, max_tokens=4)
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "insufficient_quota"
        assert error["type"] == "insufficient_quota"
        assert "spent 2.4 of its daily budget of 2" in error["message"]
        headers = refused.value.response.headers
        assert headers["x-should-retry"] == "false"
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0).timestamp() + 86_400
        assert abs(int(headers["retry-after"]) - (midnight - time.time())) < 60
        metrics = httpx.get(server.base_url + "/metrics").text
        refusals = [line for line in metrics.splitlines() if 'reason="insufficient_quota"' in line]
        assert refusals and refusals[0].endswith(" 1.0")  # the client did not retry it
        assert _complete(server.base_url, globex, "globex-support").status_code == 200
    _records(store, 4)
    # a restarted server knows what was spent today: from the records, not from memory
    with _server(store) as again:
        r = _complete(again.base_url, acme)
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert store.spent("acme", datetime.now(UTC).replace(hour=0, minute=0)) == pytest.approx(2.4)


def test_a_keys_budget_stops_that_key_only(store: Store) -> None:
    capped, capped_secret = create_api_key(store, "acme")
    _, other = create_api_key(store, "acme")
    store.set_budget("acme", "month", 0.5, key_id=capped.id)
    with _server(store) as server:
        assert _complete(server.base_url, capped_secret).status_code == 200
        _wait_spent([server.base_url], "acme", 0.8)
        r = _complete(server.base_url, capped_secret)
        assert r.status_code == 429
        assert (
            f"API key {capped.id} has spent 0.8 of its monthly budget"
            in (r.json()["error"]["message"])
        )
        assert _complete(server.base_url, other).status_code == 200


def test_two_replicas_on_one_redis_share_what_was_spent(store: Store, tmp_path: Path) -> None:
    store.set_budget("acme", "day", 2.0)
    _, acme = create_api_key(store, "acme")
    with redis_server(tmp_path) as redis_srv:
        limits = ServerLimits(redis_url=redis_srv.url)
        with _server(store, limits) as one, _server(store, limits) as two:
            urls = [one.base_url, two.base_url]
            for i in range(3):
                assert _complete(urls[i % 2], acme).status_code == 200
                _wait_spent(urls, "acme", 0.8 * (i + 1))
            assert {_complete(url, acme).status_code for url in urls} == {429}
            totals = _totals(redis_srv)
        assert list(totals.values()) == [pytest.approx(2.4)]


def _totals(redis_srv: RedisServer) -> dict[str, float]:
    client = redis_srv.client()
    try:
        names = sorted(client.scan_iter("modelyard:spend:*"))
        return {n.decode(): float(client.get(n) or 0) for n in names}
    finally:
        client.close()


def test_the_80_percent_alert_of_a_budget_reaches_the_webhook(store: Store, tmp_path: Path) -> None:
    store.set_budget("acme", "day", 3.0)
    _, acme = create_api_key(store, "acme")
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    rules = AlertRules.parse({
        "notify": {"webhook": {"url": f"http://127.0.0.1:{hook.server_port}/hook"}},
        "rules": [{"name": "budget-80", "metric": "budget_used", "comparison": ">=",
                   "threshold": 0.8, "severity": "warning"}],
    })  # fmt: skip
    try:
        with _server(store) as server:
            assert _complete(server.base_url, acme).status_code == 200
            _records(store, 1)
            assert tick(store, rules=rules, home=tmp_path).transitions == ()  # 27 %
            for _ in range(2):
                assert _complete(server.base_url, acme).status_code == 200
            _records(store, 3)
        fired = tick(store, rules=rules, home=tmp_path)  # 2.4 of 3: 80 %
        assert [t.alert.state for t in fired.transitions] == ["firing"]
        assert [r["status"] for r in received] == ["firing"]
        alert = received[0]["alert"]
        assert alert["labels"] == {"tenant": "acme", "key": "*", "period": "day",
                                   "severity": "warning"}  # fmt: skip
        assert alert["value"] == pytest.approx(0.8)
    finally:
        hook.shutdown()
        hook.server_close()
    with pytest.raises(Exception, match="per budget, not per endpoint"):
        AlertRules.parse({"rules": [{"name": "x", "metric": "budget_used", "threshold": 1,
                                     "endpoint": "acme-support"}]})  # fmt: skip


def test_budgets_through_the_cli_are_governed_and_audited(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    r = modelyard("budgets", "set", "acme", "--amount", "25", "--period", "month", home=home)
    assert r.code == 0 and "acme: 25 per month (0 spent so far, 0 %)" in r.out, r.err
    r = modelyard("budgets", "list", "--json", home=home)
    assert r.code == 0
    [row] = json.loads(r.out)
    subject = (row["tenant"], row["key_id"], row["period"], row["amount"])
    assert subject == ("acme", None, "month", 25.0)
    r = modelyard("budgets", "set", "acme", "--amount", "-1", home=home)
    assert r.code == 2 and "a budget is a number above 0" in r.err and "Traceback" not in r.err
    r = modelyard("budgets", "set", "acme", "--amount", "5", "--period", "week", home=home)
    assert r.code == 2 and "unknown budget period 'week'" in r.err
    r = modelyard("budgets", "set", "acme", "--amount", "5", "--key", "nope", home=home)
    assert r.code == 1 and "tenant 'acme' has no API key 'nope'" in r.err
    # money is an approver's decision, not the spender's
    r = modelyard("--actor", "dev", "budgets", "set", "acme", "--amount", "99", home=home)
    assert r.code != 0 and "needs role approver" in r.err, r.err
    assert modelyard("budgets", "remove", "acme", "--period", "month", home=home).code == 0
    assert "no budgets" in modelyard("budgets", "list", home=home).out
    # the role before the row: "nothing removed" (exit 0) told dev only that there was none
    r = modelyard("--actor", "dev", "budgets", "remove", "acme", "--period", "day", home=home)
    assert r.code == 1 and "needs role approver" in r.err, (r.out, r.err)
    r = modelyard("audit", "log", "--json", home=home)
    actions = [e["action"] for e in json.loads(r.out)]
    assert actions.count("budget.set") == 1 and actions.count("budget.removed") == 1


def test_a_budget_removed_and_set_again_counts_what_was_spent_meanwhile(store: Store) -> None:
    """While a tenant has no budget, its spend is not added to the server's running total;
    a budget set again the same day must not start from that stale total (it did: the
    tenant spent 4.0 and still passed a budget of 3)."""
    store.set_budget("acme", "day", 2.0)
    _, acme = create_api_key(store, "acme")
    app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
    app.state.plane.budgets.refresh_s = 0  # budgets re-read at once, not within 10 s
    with BackgroundServer(app) as server:
        assert [_complete(server.base_url, acme).status_code for _ in range(3)] == [200] * 3
        _wait_spent([server.base_url], "acme", 2.4)
        assert _complete(server.base_url, acme).status_code == 429
        store.remove_budget("acme", "day")
        assert [_complete(server.base_url, acme).status_code for _ in range(2)] == [200] * 2
        _wait_spent([server.base_url], "acme", 4.0)
        _wait_recorded_spend(store, 4.0)
        store.set_budget("acme", "day", 3.0)
        r = _complete(server.base_url, acme)
    assert r.status_code == 429, r.text
    assert "has spent 4 of its daily budget of 3" in r.json()["error"]["message"]


def test_rotating_a_key_keeps_its_budget_and_what_it_spent(store: Store) -> None:
    """A key's budget is the new key's too, and the new key's spend counts the old one's:
    a routine rotation lifted the cap (the new key had no budget at all)."""
    from modelyard.access import rotate_api_key

    old, secret = create_api_key(store, "acme")
    store.set_budget("acme", "day", 2.0, key_id=old.id)
    app = create_app(store, EchoEngine(), refresh_seconds=60, heartbeat_s=None)
    app.state.plane.budgets.refresh_s = 0  # budgets re-read at once, not within 10 s
    with BackgroundServer(app) as server:
        assert [_complete(server.base_url, secret).status_code for _ in range(3)] == [200] * 3
        _wait_recorded_spend(store, 2.4)
        new, new_secret = rotate_api_key(store, old.id)
        r = _complete(server.base_url, new_secret)
    assert r.status_code == 429, r.text
    assert "has spent 2.4 of its daily budget of 2" in r.json()["error"]["message"]
    (budget,) = [b for b in store.list_budgets("acme") if b.key_id == new.id]
    assert (budget.period, budget.amount) == ("day", 2.0)
    (created,) = [e for e in store.list_audit_events(action="api_key.created")
                  if e.subject == new.id]  # fmt: skip
    assert created.payload["budgets"] == {"day": 2.0}
    assert created.payload["rotated_from"] == old.id


def test_what_was_spent_while_redis_was_unreachable_reaches_the_shared_total(
    store: Store, tmp_path: Path
) -> None:
    """Failing open, a replica counts spend alone while Redis cannot be reached; when Redis
    answers again (its data kept: a pause, a network partition) that spend must reach the
    shared total, or the tenant gets it for free (it did: 1.6 of 3.2 was forgotten)."""
    store.set_budget("acme", "day", 2.0)
    _, acme = create_api_key(store, "acme")
    with (
        redis_server(tmp_path) as redis_srv,
        _server(store, ServerLimits(redis_url=redis_srv.url)) as server,
    ):
        assert _complete(server.base_url, acme).status_code == 200
        _wait_spent([server.base_url], "acme", 0.8)
        _wait_recorded_spend(store, 0.8)
        pauser = redis_srv.client()
        pauser.execute_command("CLIENT", "PAUSE", 2500, "ALL")  # unreachable for 2.5 s
        paused_at = time.monotonic()
        assert [_complete(server.base_url, acme).status_code for _ in range(2)] == [200] * 2
        _wait_spent([server.base_url], "acme", 2.4)
        assert time.monotonic() - paused_at < 2.5, "the pause ended too soon for the test"
        assert _complete(server.base_url, acme).status_code == 429  # counted here meanwhile
        time.sleep(max(0.0, paused_at + 2.5 - time.monotonic()) + 1.2)  # Redis is back
        # the first request after the outage may still pass (a request's cost is known
        # only when it ends); its charge brings the outage's spend to the shared total
        first = _complete(server.base_url, acme).status_code
        assert first in (200, 429)
        if first == 200:
            _wait_spent([server.base_url], "acme", 3.2)
        r = _complete(server.base_url, acme)
        assert r.status_code == 429, r.text
        totals = _totals(redis_srv)
    assert list(totals.values()) == [pytest.approx(3.2 if first == 200 else 2.4)]


def test_failing_closed_a_budget_that_cannot_be_checked_says_so(
    store: Store, tmp_path: Path
) -> None:
    """A key without rate limits of a tenant with a budget, Redis down, failing closed: the
    503 names the budget (it said "the rate limits cannot be checked" of a key that has
    none)."""
    store.set_budget("acme", "day", 2.0)
    _, acme = create_api_key(store, "acme")
    with (
        redis_server(tmp_path) as redis_srv,
        _server(store, ServerLimits(redis_url=redis_srv.url, on_redis_down="closed")) as server,
    ):
        assert _complete(server.base_url, acme).status_code == 200
        redis_srv.stop()
        r = _complete(server.base_url, acme)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["code"] == "limits_unavailable"
    assert error["message"].startswith(
        "the daily budget of tenant 'acme' cannot be checked: the spend shared by the "
        "replicas (Redis) cannot be reached"
    )
