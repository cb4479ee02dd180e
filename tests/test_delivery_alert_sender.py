"""Rollback alerts reach a real webhook receiver on 127.0.0.1 without holding up the
controller: a receiver slower than the controller's lease must not cost it the lease, nor
delay another rollout's transition."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelyard.delivery import Controller, start_rollout
from modelyard.store import AlertState, NewInferenceRecord, Store, utcnow
from worlds import fake_world

LEASE_S = 6.0
"""The controllers' lease in the slow-receiver tests. Not shorter: a loaded CI machine once
stalled a tick past a 3 s lease, with no alert in it."""
TRY_S = 7.0
"""One webhook try's timeout there: an alert of two tries takes more than twice the lease."""


class Receiver:
    """A webhook receiver that waits ``delay_s`` before it answers 204 (only for alerts in
    state ``slow_state``, when set)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.slow_state: str | None = None
        self.received: list[dict[str, Any]] = []
        self.arrived: list[dict[str, Any]] = []  # as each request comes in, before the wait
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.arrived.append(body)
                if receiver.slow_state in (None, body["status"]):
                    time.sleep(receiver.delay_s)
                receiver.received.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rules(self, *, timeout_s: float = 5.0, retries: int = 0, rules: str = "[]") -> None:
        """Write ``<home>/alerts.yml`` naming this receiver as the webhook."""
        home = Path(os.environ["MODELYARD_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "alerts.yml").write_text(
            f"notify:\n  webhook:\n    url: {self.url}\n    timeout_s: {timeout_s}\n"
            f"    retries: {retries}\n    backoff_s: 0\nrules: {rules}\n"
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(5)


def _world(store: Store) -> int:
    fake_world(store, versions=2, endpoint=None, template=None)
    for name in ("support", "helpdesk"):
        store.create_endpoint(name, model_ref="bot:1", tenant="acme")
    return store.get_model_version("bot", 2).id


def _records(store: Store, endpoint: str, version_id: int, n: int, *, errors: int) -> None:
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name=endpoint, route="chat.completions",
            latency_ms=20.0, status="error" if i < errors else "ok",
            http_status=503 if i < errors else 200, version_id=version_id,
            tenant_id=store.get_tenant("acme").id,
        )
        for i in range(n)
    )  # fmt: skip


def _wait(
    check: Callable[[], bool], within_s: float, every: Callable[[], None] = lambda: None
) -> float:
    """Seconds until ``check()`` held (``every`` runs at each look); fails after ``within_s``."""
    started = time.monotonic()
    while not check():
        every()
        assert time.monotonic() - started < within_s, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_receiver_slower_than_the_lease_neither_costs_the_lease_nor_delays_a_rollout(
    store: Store, receiver: Receiver
) -> None:
    receiver.delay_s = TRY_S + 2  # two tries time out: the alert takes 2 * TRY_S
    receiver.rules(timeout_s=TRY_S, retries=1)
    vid = _world(store)
    for name in ("support", "helpdesk"):
        start_rollout(store, name, "bot:2", steps="100", bake_s=0, min_requests=5)
    lease = LEASE_S
    leader = Controller(store, holder="leader", lease_ttl_s=lease)
    standby = Controller(store, holder="standby", lease_ttl_s=lease)
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop, 0.05)) for c in (leader, standby)]
    holders: set[str] = set()

    def look() -> None:
        held = store.lease_holder("controller")
        if held is not None:
            holders.add(held[0])

    def webhook_answered() -> bool:
        return any(n.target == receiver.url for n in store.list_alert_notifications())

    threads[0].start()
    try:
        _wait(lambda: store.lease_holder("controller") is not None, 60)
        threads[1].start()  # a second server's controller, waiting for the lease to lapse
        _wait(lambda: all(store.latest_rollout(e).phase == "baking"
                          for e in ("support", "helpdesk")), 10)  # fmt: skip
        _records(store, "support", vid, 10, errors=6)
        _wait(lambda: store.latest_rollout("support").status == "rolled_back", 10, look)
        _records(store, "helpdesk", vid, 10, errors=0)  # while the alert is being sent
        took = _wait(lambda: store.latest_rollout("helpdesk").status == "succeeded", 10, look)
        _wait(webhook_answered, 2 * TRY_S + 10, look)  # all the while the alert was being sent
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(15)
    assert holders == {"leader"}, f"the lease moved while the alert was sent: {holders}"
    assert took < TRY_S, f"the next rollout waited {took:.1f} s for the {2 * TRY_S} s alert"
    [alert] = store.list_alert_states(state="firing")
    assert dict(alert.labels) == {"endpoint": "support", "version": "bot:2"}
    [note] = [n for n in store.list_alert_notifications() if n.target == receiver.url]
    assert (note.ok, note.attempts, note.error) == (False, 2, "ReadTimeout: timed out")


def test_alerts_reach_the_receiver_in_order_and_stopping_the_controller_sends_what_waits(
    store: Store, receiver: Receiver
) -> None:
    receiver.delay_s = 0.3
    receiver.rules()
    vid = _world(store)
    for name in ("support", "helpdesk"):
        start_rollout(store, name, "bot:2", steps="100", bake_s=0, min_requests=5)
    ctl = Controller(store)
    ctl.tick()  # both bake
    for name in ("support", "helpdesk"):
        _records(store, name, vid, 10, errors=6)
    stop = threading.Event()
    runner = threading.Thread(target=ctl.run, args=(stop, 0.05))
    runner.start()
    try:
        _wait(lambda: all(store.latest_rollout(e).status == "rolled_back"
                          for e in ("support", "helpdesk")), 30)  # fmt: skip
    finally:
        stop.set()  # at once: the alerts are still on their way
        runner.join(15)
    assert not runner.is_alive()
    rolled = sorted(("support", "helpdesk"), key=lambda e: store.latest_rollout(e).events[-1].time)
    assert [p["alert"]["labels"]["endpoint"] for p in receiver.received] == rolled
    notes = [n for n in store.list_alert_notifications() if n.target == receiver.url]
    assert [(n.ok, n.attempts) for n in notes] == [(True, 1), (True, 1)]
    assert store.lease_holder("controller") is None  # given back once the alerts were sent


class _Blocked:
    """A webhook send that waits for ``release``; records what it was asked to send."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[str] = []

    def post(self, store: Store, name: str) -> Any:
        from modelyard.delivery._sender import Post

        now = utcnow()
        labels = {"endpoint": name}
        alert = AlertState(f"id-{name}", "rollout_rolled_back", labels, "critical", "firing",
                           None, name, now, now, None, now)  # fmt: skip
        store.save_alert_state(alert)

        def send() -> Any:
            self.sent.append(name)
            self.release.wait(30)
            return type("D", (), {"ok": True, "attempts": 1, "error": None})()

        return Post(f"id-{name}", "rollout_rolled_back", "firing", "http://hook.test/", now, send)


def test_a_full_alert_queue_drops_the_oldest_waiting_alert_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from modelyard.delivery._sender import AlertSender

    hook = _Blocked()
    sender = AlertSender(store, max_queued=2)
    sender.submit(hook.post(store, "a"))
    _wait(lambda: hook.sent == ["a"], 5)  # "a" is being sent; the receiver hangs
    for name in ("b", "c", "d"):
        sender.submit(hook.post(store, name))
    assert sender.dropped == 1 and sender.pending() == 3  # "a" in flight, "c" and "d" waiting
    assert "alert rollout_rolled_back (id-b) not sent" in caplog.text
    assert "2 alerts were waiting for the webhook" in caplog.text
    [note] = store.list_alert_notifications(alert_id="id-b")
    assert not note.ok and note.attempts == 0 and "the oldest was dropped" in (note.error or "")
    hook.release.set()
    assert sender.flush(5)
    assert hook.sent == ["a", "c", "d"]
    assert [n.ok for n in store.list_alert_notifications() if n.alert_id != "id-b"] == [True] * 3


def test_closing_waits_a_bounded_time_for_a_hung_receiver(store: Store) -> None:
    from modelyard.delivery._sender import AlertSender

    hook = _Blocked()
    sender = AlertSender(store)
    try:
        sender.submit(hook.post(store, "a"))
        sender.submit(hook.post(store, "b"))
        started = time.monotonic()
        assert sender.close(0.3) is False
        assert time.monotonic() - started < 2
        [note] = store.list_alert_notifications(alert_id="id-b")
        assert not note.ok and "the controller stopped" in (note.error or "")
    finally:
        hook.release.set()
    _wait(lambda: sender.pending() == 0, 5)
    assert hook.sent == ["a"]  # "b" was given up, not sent after the close


def test_controller_once_sends_the_rollback_alert_before_it_exits(
    home: Path, receiver: Receiver
) -> None:
    from clihelp import modelyard

    home.mkdir(parents=True)
    receiver.delay_s, receiver.slow_state = 1.0, "firing"
    receiver.rules()
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        vid = _world(store)
        start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=5)
        assert modelyard("controller", "--once", home=home).code == 0  # baking
        _records(store, "support", vid, 10, errors=6)
        result = modelyard("controller", "--once", home=home)
        assert result.code == 0, result.err
        assert "rolled_back" in result.out or "rolled back" in result.out
        # the command waited for the webhook: its delivery is in the store once it exited
        notes = [n for n in store.list_alert_notifications()
                 if n.target == receiver.url and n.state == "firing"]  # fmt: skip
        assert [(n.ok, n.attempts) for n in notes] == [(True, 1)]
    fired = [p for p in receiver.received if p["status"] == "firing"]
    assert [p["alert"]["labels"]["endpoint"] for p in fired] == ["support"]


def test_a_monitoring_alert_to_a_slow_receiver_neither_costs_the_lease_nor_delays_a_rollout(
    store: Store, receiver: Receiver
) -> None:
    """The leader runs the monitoring tick (alert rules, their webhook) every 15 s: a
    receiver slower than the lease must not hold up the rollouts either."""
    from modelyard.monitoring import tick as monitoring_tick

    receiver.delay_s = TRY_S + 2  # two tries time out: the alert takes 2 * TRY_S
    rule = '[{name: errors, metric: error_rate, window: 1h, comparison: ">", threshold: 0.1}]'
    receiver.rules(timeout_s=TRY_S, retries=1, rules=rule)
    vid = _world(store)
    start_rollout(store, "helpdesk", "bot:2", steps="100", bake_s=0, min_requests=5)
    lease = LEASE_S
    controllers = [Controller(store, holder=h, lease_ttl_s=lease, extra_ticks=[monitoring_tick],
                              extra_every_s=0.5) for h in ("leader", "standby")]  # fmt: skip
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop, 0.05)) for c in controllers]
    holders: set[str] = set()

    def look() -> None:
        held = store.lease_holder("controller")
        if held is not None:
            holders.add(held[0])

    def webhook_answered() -> bool:
        return any(n.target == receiver.url for n in store.list_alert_notifications())

    threads[0].start()
    try:
        _wait(lambda: store.lease_holder("controller") is not None, 60)
        threads[1].start()
        _wait(lambda: store.latest_rollout("helpdesk").phase == "baking", 10)
        _records(store, "support", store.get_model_version("bot", 1).id, 10, errors=5)
        _wait(lambda: bool(receiver.arrived), 30, look)  # the alert fired; its POST hangs
        for c in controllers:
            c.extra_every_s = 3600.0  # no evaluation after this one (it would send it again)
        _records(store, "helpdesk", vid, 10, errors=0)
        took = _wait(lambda: store.latest_rollout("helpdesk").status == "succeeded", 10, look)
        _wait(webhook_answered, 2 * TRY_S + 10, look)
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(15)
    assert holders == {"leader"}, f"the lease moved while the alert was sent: {holders}"
    assert took < TRY_S, f"the rollout waited {took:.1f} s for the {2 * TRY_S} s alert"
    [alert] = store.list_alert_states(state="firing")
    assert alert.rule == "errors" and alert.labels["endpoint"] == "support"
