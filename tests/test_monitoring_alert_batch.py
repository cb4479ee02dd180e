"""Alert evaluation at scale: every alert's state saved in one transaction, and the
webhook deliveries that failed read together and sent again at each evaluation until one
gets through. On SQLite and PostgreSQL (``store_url``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from modelyard.audit import AccessPolicy
from modelyard.monitoring import AlertRules, evaluate_rules
from modelyard.store import Store


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 while ``failing``."""

    def __init__(self) -> None:
        self.failing = True
        self.status = 500  # what a failing receiver answers
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(json.loads(body))
                self.send_response(receiver.status if receiver.failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_failed_deliveries_are_sent_again_until_one_gets_through(
    store_url: str, receiver: Receiver
) -> None:
    rules = AlertRules.parse({
        "notify": {"webhook": {"url": receiver.url, "retries": 0}},
        "rules": [{"name": "any-budget", "metric": "budget_used", "comparison": ">=",
                   "threshold": 0}],  # nothing spent: 0 >= 0 holds, each budget fires
    })  # fmt: skip
    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        for name in ("acme", "beta", "gamma"):
            s.create_tenant(name)
            s.set_budget(name, "day", 10.0)

        def evaluate() -> list[str]:
            before = len(receiver.received)
            evaluate_rules(s, rules, datetime.now(UTC))
            return sorted(r["alert"]["labels"]["tenant"] for r in receiver.received[before:])

        # fired: the first delivery is refused (500, a receiver down); the others of the
        # evaluation are not tried (a down receiver would cost each its tries and backoff)
        assert evaluate() == ["acme"]
        assert [a.state for a in s.list_alert_states()] == ["firing"] * 3
        notes = {n.alert_id: n for n in s.list_alert_notifications() if n.target != "log"}
        assert sorted(n.attempts for n in notes.values()) == [0, 0, 1]
        assert all(not n.ok for n in notes.values())
        skipped = [n for n in notes.values() if n.attempts == 0]
        assert all("failed earlier in this evaluation (HTTP 500)" in (n.error or "")
                   for n in skipped)  # fmt: skip
        assert evaluate() == ["acme"]  # still down: one try again, the others wait
        receiver.failing = False
        assert evaluate() == ["acme", "beta", "gamma"]  # sent again, and they got through
        assert evaluate() == []  # delivered: not sent again
        last = s.last_deliveries([a.id for a in s.list_alert_states()], receiver.url)
        assert len(last) == 3 and all(n.ok and n.state == "firing" for n in last.values())
        s.set_budget("beta", "day", 20.0)  # the same alert: its labels did not change
        s.remove_budget("gamma", "day")  # its alert has no budget: resolved
        receiver.failing = True
        assert evaluate() == ["gamma"]  # the resolve, refused
        receiver.failing = False
        assert evaluate() == ["gamma"]  # the resolve sent again (for a day), delivered
        assert evaluate() == []
        states = {a.labels["tenant"]: a.state for a in s.list_alert_states()}
        assert states == {"acme": "firing", "beta": "firing", "gamma": "resolved"}


def test_a_receiver_that_refuses_one_alert_does_not_hold_back_the_others(
    store_url: str, receiver: Receiver
) -> None:
    """A 4xx is about that payload, not a receiver that is down: the rest are tried."""
    rules = AlertRules.parse({
        "notify": {"webhook": {"url": receiver.url, "retries": 2, "backoff_s": 0}},
        "rules": [{"name": "any-budget", "metric": "budget_used", "comparison": ">=",
                   "threshold": 0}],
    })  # fmt: skip
    receiver.status = 422
    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        for name in ("acme", "beta"):
            s.create_tenant(name)
            s.set_budget(name, "day", 10.0)
        evaluate_rules(s, rules, datetime.now(UTC))
    assert len(receiver.received) == 2  # each once: a 4xx is not retried, nor the end


def test_alerts_saved_but_not_notified_when_the_process_stopped_are_notified_next(
    store_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The states are saved before anyone is told: a process stopped in between (killed,
    its host gone) left firing alerts no webhook ever heard of, and nothing sent them."""
    import modelyard.monitoring._notify as notify_module

    rules = AlertRules.parse({
        "notify": {"webhook": {"url": receiver.url, "retries": 0}},
        "rules": [{"name": "any-budget", "metric": "budget_used", "comparison": ">=",
                   "threshold": 0}],
    })  # fmt: skip
    receiver.failing = False
    real = notify_module.post_webhook
    calls = [0]

    def dies_after_one(config: Any, payload: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise SystemExit("the process was stopped")
        return real(config, payload)

    with Store.open(store_url, actor="ops", policy=AccessPolicy(bootstrap_admin="ops")) as s:
        s.add_actor("ops", "admin")
        for name in ("acme", "beta", "gamma"):
            s.create_tenant(name)
            s.set_budget(name, "day", 10.0)
        monkeypatch.setattr(notify_module, "post_webhook", dies_after_one)
        with pytest.raises(SystemExit):
            evaluate_rules(s, rules, datetime.now(UTC))
        monkeypatch.setattr(notify_module, "post_webhook", real)
        assert [a.state for a in s.list_alert_states()] == ["firing"] * 3  # saved
        assert len(receiver.received) == 1  # told of one
        evaluate_rules(s, rules, datetime.now(UTC))  # the next evaluation, a new process
        told = sorted(r["alert"]["labels"]["tenant"] for r in receiver.received)
        assert told == ["acme", "beta", "gamma"]  # each once
        evaluate_rules(s, rules, datetime.now(UTC))
        assert len(receiver.received) == 3
