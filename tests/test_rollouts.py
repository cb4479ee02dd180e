"""Rollouts in the store and the controller, on records written as servers would write them.

These tests drive the controller tick by tick; tests/test_delivery.py runs the
same through real servers and the official openai client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from modelyard.delivery import (
    Controller,
    abort_rollout,
    check_policy,
    compare_versions,
    parse_guard,
    pause_rollout,
    promote_rollout,
    resume_rollout,
    start_rollout,
)
from modelyard.errors import ConfigError, Conflict, PermissionDenied
from modelyard.store import NewInferenceRecord, RolloutPolicy, Store
from worlds import fake_world

BAKE = 0.3


def _world(store: Store, versions: int = 3) -> dict[int, int]:
    made = fake_world(store, versions=versions, endpoint=None, template=None)
    store.set_alias("bot", "champion", 1)
    store.create_endpoint("support", model_ref="bot@champion", tenant="acme")
    return {v.version: v.id for v in made}


def _traffic(
    store: Store, version_id: int, n: int, *, errors: int = 0, latency_ms: float = 20.0
) -> list[str]:
    ids = [f"cmpl-{uuid.uuid4().hex}" for _ in range(n)]
    store.add_inference_records(
        NewInferenceRecord(
            id=rid,
            endpoint_name="support",
            route="chat.completions",
            latency_ms=latency_ms,
            status="error" if i < errors else "ok",
            http_status=503 if i < errors else 200,
            version_id=version_id,
            tenant_id=store.get_tenant("acme").id,
        )
        for i, rid in enumerate(ids)
    )
    return ids


def _plan(store: Store) -> dict[int, int]:
    return {r.version: r.weight for r in store.get_endpoint("support").routes if r.weight}


def _drive(
    store: Store,
    ctl: Controller,
    ids: dict[int, int],
    *,
    canary: int,
    canary_errors: int = 0,
    canary_latency: float = 20.0,
    rounds: int = 12,
) -> list[dict[int, int]]:
    """Tick, send one round of traffic (10 baseline, 10 canary requests), repeat."""
    plans = []
    for _ in range(rounds):
        ctl.tick()
        plans.append(_plan(store))
        if not store.latest_rollout("support").active:
            break
        _traffic(store, ids[1], 10)
        _traffic(store, ids[canary], 10, errors=canary_errors, latency_ms=canary_latency)
        time.sleep(BAKE / 2)
    return plans


@pytest.fixture
def world(store: Store) -> Iterator[tuple[Store, dict[int, int]]]:
    yield store, _world(store)


def test_canary_passes_every_step_and_moves_the_alias(world: tuple[Store, dict[int, int]]) -> None:
    store, ids = world
    r = start_rollout(
        store, "support", "bot:2", steps="10,50,100", bake_s=BAKE, min_requests=10,
        guards=["error_rate <= 0.05", "p95_latency_ms <= 1.5 * baseline"],
        promote_alias="champion",
    )  # fmt: skip
    assert (r.status, r.phase, r.strategy) == ("running", "preparing", "canary")
    plans = _drive(store, Controller(store), ids, canary=2)
    done = store.latest_rollout("support")
    assert done.status == "succeeded"
    # every step's plan, in order, then all traffic on the new version
    assert [p for i, p in enumerate(plans) if i == 0 or p != plans[i - 1]] == [
        {1: 90, 2: 10},
        {1: 50, 2: 50},
        {2: 100},
    ]
    assert [e.kind for e in done.events] == ["started", "step", "step", "step", "succeeded"]
    step2 = done.events[2].detail["previous"]
    assert {g["guard"]: g["status"] for g in step2["guards"]} == {
        "error_rate <= 0.05": "pass",
        "p95_latency_ms <= 1.5 * baseline": "pass",
    }
    assert done.outcome["alias"]["moved"] is True
    assert store.resolve_model_ref("bot@champion").version == 2
    actions = [e.action for e in store.list_audit_events(limit=None)]
    assert actions.count("rollout.step") == 3 and "rollout.succeeded" in actions
    assert store.verify_audit_chain().ok


def test_a_failing_canary_is_rolled_back_within_one_step(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="10,50,100", bake_s=60, min_requests=50,
                  guards=["error_rate <= 0.02"], promote_alias="champion")  # fmt: skip
    ctl = Controller(store)
    ctl.tick()  # prepared (no live servers): the first step starts
    assert _plan(store) == {1: 90, 2: 10}
    _traffic(store, ids[1], 30)
    _traffic(store, ids[2], 12, errors=4)  # 33% errors: significant long before 50 requests
    [after] = ctl.tick()
    assert after.status == "rolled_back" and after.step_index == 0
    assert _plan(store) == {1: 100}
    breach = after.outcome["breach"]
    assert breach["kind"] == "guard" and "error_rate <= 0.02" in breach["message"]
    [guard] = breach["guards"]
    assert guard["status"] == "breach" and guard["p_value"] < 0.05 and guard["n"] == 12
    assert store.resolve_model_ref("bot@champion").version == 1  # the alias stays
    events = store.list_audit_events(action="rollout.rolled_back")
    assert [e.subject for e in events] == ["support"]


def test_a_handful_of_errors_is_noise_not_a_breach(world: tuple[Store, dict[int, int]]) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="50,100", bake_s=60, min_requests=20,
                  guards=["error_rate <= 0.02"])  # fmt: skip
    ctl = Controller(store)
    ctl.tick()
    _traffic(store, ids[2], 3, errors=1)  # 1 in 3 is 33%, but p = 0.06 for a 2% rate
    assert ctl.tick() == []
    r = store.latest_rollout("support")
    assert r.status == "running" and _plan(store) == {1: 50, 2: 50}


def test_a_slow_canary_breaches_a_latency_guard_against_the_baseline(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="10,100", bake_s=BAKE, min_requests=10,
                  guards=["p95_latency_ms <= 1.2 * baseline"])  # fmt: skip
    _drive(store, Controller(store), ids, canary=2, canary_latency=80.0)
    r = store.latest_rollout("support")
    assert r.status == "rolled_back" and "p95_latency_ms" in (r.reason or "")
    assert _plan(store) == {1: 100}


def test_feedback_guard_compares_with_the_baseline(world: tuple[Store, dict[int, int]]) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=10,
                  guards=["feedback_score >= baseline - 0.2"])  # fmt: skip
    good = _traffic(store, ids[1], 10)
    for rid in good:
        store.add_feedback(rid, tenant="acme", score=1.0)
    ctl = Controller(store)
    ctl.tick()
    assert _plan(store) == {2: 100}  # blue-green: switched at once
    for rid in _traffic(store, ids[2], 10):
        store.add_feedback(rid, tenant="acme", score=-1.0)
    [after] = ctl.tick()
    assert after.status == "rolled_back" and "feedback_score" in (after.reason or "")
    assert _plan(store) == {1: 100}


def test_two_controllers_never_both_act(world: tuple[Store, dict[int, int]]) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="10,50,100", bake_s=0.05, min_requests=5)
    a, b = Controller(store, holder="a"), Controller(store, holder="b")
    for _ in range(12):
        a.tick()
        b.tick()
        _traffic(store, ids[2], 5)
        _traffic(store, ids[1], 5)
        time.sleep(0.06)
    r = store.latest_rollout("support")
    assert r.status == "succeeded"
    assert [e.kind for e in r.events] == ["started", "step", "step", "step", "succeeded"]
    assert store.lease_holder("controller") is not None
    assert store.lease_holder("controller")[0] == "a"  # type: ignore[index]


def test_a_controller_that_lost_its_lease_is_fenced_out(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, _ = world
    r = start_rollout(store, "support", "bot:2", steps="10,100", bake_s=60, min_requests=5)
    old = Controller(store, holder="old", lease_ttl_s=0.1)
    assert store.acquire_lease("controller", "old", 0.1)
    time.sleep(0.15)  # it stalls; its lease runs out and another takes over
    assert store.acquire_lease("controller", "new", 10)
    assert not store.acquire_lease("controller", "old", 10)
    from modelyard.store import Transition

    stale = store.transition_rollout(
        r.id, ("running", "preparing", 0),
        Transition("step", {}, phase="baking", plan={2: 100}), lease=old.lease,
    )  # fmt: skip
    assert stale is None and _plan(store) == {1: 100}
    assert old.tick() == []


def test_alias_moves_reach_endpoints_through_a_rollout_never_at_once(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, ids = world
    store.set_alias("bot", "champion", 2)
    assert _plan(store) == {1: 100}  # no policy: a rollout with the defaults owns the change
    r = store.latest_rollout("support")
    assert (r.target, r.status, r.steps, r.reason) == (
        2, "running", RolloutPolicy().steps, "bot@champion moved to 2",
    )  # fmt: skip
    store.set_rollout_policy(
        "support", {"steps": [20, 100], "bake_s": 0.0, "min_requests": 1, "guards": []}
    )
    store.set_alias("bot", "champion", 3)  # the rollout to 2 ends; one to 3 starts from 1
    assert store.get_rollout(r.id).status == "aborted"
    assert _plan(store) == {1: 100}
    r = store.latest_rollout("support")
    assert (r.target, r.status, r.reason) == (3, "running", "bot@champion moved to 3")
    ctl = Controller(store)
    ctl.tick()
    assert _plan(store) == {1: 80, 3: 20}
    _traffic(store, ids[3], 2)
    ctl.tick()
    assert _plan(store) == {3: 100}
    _traffic(store, ids[3], 2)  # the last step needs its own requests too
    ctl.tick()
    assert store.latest_rollout("support").status == "succeeded"
    # one step to 100 is how a policy says "at once" (after the servers loaded it)
    store.set_rollout_policy(
        "support", {"steps": [100], "bake_s": 0.0, "min_requests": 0, "guards": []}
    )
    store.set_alias("bot", "champion", 1)
    assert _plan(store) == {3: 100}
    ctl.tick()
    assert _plan(store) == {1: 100}
    ctl.tick()
    assert store.latest_rollout("support").status == "succeeded"


def test_one_set_of_rollout_defaults_for_start_policies_and_alias_moves(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, _ = world
    default = RolloutPolicy()
    assert check_policy("10,50,100", 300.0, 100, ["error_rate <= 0.02"]) == default
    # a stored policy that leaves keys out takes the same defaults as `rollout start`
    ep = store.set_rollout_policy("support", {"bake_s": 0.0})
    assert ep.rollout_policy == RolloutPolicy(bake_s=0.0)
    store.set_alias("bot", "champion", 2)
    moved = store.latest_rollout("support")
    assert (moved.steps, moved.min_requests, moved.guards) == (
        default.steps, default.min_requests, default.guards,
    )  # fmt: skip
    abort_rollout(store, "support")
    started = start_rollout(store, "support", "bot:3")
    assert (started.steps, started.bake_s, started.min_requests, started.guards) == (
        default.steps, default.bake_s, default.min_requests, default.guards,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown rollout policy key.*bake_seconds"):
        store.set_rollout_policy("support", {"bake_seconds": 5})


def test_operators_pause_resume_promote_and_abort(world: tuple[Store, dict[int, int]]) -> None:
    store, ids = world
    start_rollout(store, "support", "bot:2", steps="10,50,100", bake_s=0, min_requests=1)
    ctl = Controller(store)
    ctl.tick()
    with pytest.raises(Conflict, match="rollout in progress"):
        store.set_traffic("support", {1: 50, 2: 50})
    with pytest.raises(Conflict, match="in progress already"):
        start_rollout(store, "support", "bot:3")
    assert pause_rollout(store, "support").status == "paused"
    _traffic(store, ids[2], 5)
    assert ctl.tick() == []  # a paused rollout is left alone
    assert _plan(store) == {1: 90, 2: 10}
    assert resume_rollout(store, "support").status == "running"
    r = promote_rollout(store, "support")
    assert r.status == "succeeded" and _plan(store) == {2: 100}
    assert r.outcome["skipped_steps"] == [50, 100]
    start_rollout(store, "support", "bot:3", steps="50,100", bake_s=60, min_requests=1)
    ctl.tick()
    assert _plan(store) == {2: 50, 3: 50}
    r = abort_rollout(store, "support", "wrong dataset")
    assert (r.status, r.reason) == ("aborted", "wrong dataset") and _plan(store) == {2: 100}
    actions = {e.action for e in store.list_audit_events(limit=None)}
    assert {"rollout.paused", "rollout.resumed", "rollout.promoted", "rollout.aborted"} <= actions


def test_promoting_a_protected_alias_needs_the_starters_role(store: Store) -> None:
    _world(store)
    viewer = store.as_actor("dev-dana")
    with pytest.raises(PermissionDenied, match="champion"):
        start_rollout(viewer, "support", "bot:2", promote_alias="champion")
    assert store.list_rollouts(endpoint="support") == []
    denied = store.list_audit_events(action="permission.denied")
    assert denied and denied[-1].actor == "dev-dana"


def test_bad_rollout_input_is_refused_with_the_reason(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, _ = world
    for kwargs, message in (
        ({"steps": "10,5,100"}, "must increase"),
        ({"steps": "10,50"}, "the last one 100"),
        ({"steps": "ten"}, "invalid steps"),
        ({"guards": ["error_rte <= 0.1"]}, "did you mean 'error_rate'"),
        ({"guards": ["latency is low"]}, "write METRIC OP THRESHOLD"),
    ):
        with pytest.raises(ConfigError, match=message):
            start_rollout(store, "support", "bot:2", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a version of 'bot'"):
        start_rollout(store, "support", "other:1")
    with pytest.raises(Conflict, match="already sends all its traffic"):
        start_rollout(store, "support", "bot:1")
    assert store.list_rollouts(endpoint="support") == []


def test_guard_grammar() -> None:
    g = parse_guard("p95_latency_ms <= 1.2 * baseline + 5")
    assert (g.metric, g.op, g.relative, g.threshold(100.0)) == ("p95_latency_ms", "<=", True, 125.0)
    g = parse_guard("feedback_score >= baseline - 0.05")
    assert g.threshold(0.5) == pytest.approx(0.45)
    assert parse_guard("error_rate<=0.02").threshold(None) == 0.02


def test_compare_reports_intervals_and_significance(
    world: tuple[Store, dict[int, int]],
) -> None:
    store, ids = world
    store.set_traffic("support", {1: 50, 2: 50})
    _traffic(store, ids[1], 200, errors=2, latency_ms=20.0)
    _traffic(store, ids[2], 120, errors=30, latency_ms=20.0)
    report = compare_versions(store, "support", since=store.get_endpoint("support").created_at)
    assert report.control == "bot:1"
    v1, v2 = report.versions
    assert (v1.requests, v1.errors, v2.requests, v2.errors) == (200, 2, 120, 30)
    assert v2.error_rate_ci is not None and v2.error_rate_ci[0] < 0.25 < v2.error_rate_ci[1]
    [c] = report.comparisons
    assert c.version == "bot:2" and c.error_rate_p is not None and c.error_rate_p < 0.001
    assert c.verdict.startswith("significant: error rate higher")


def test_a_rollback_fires_an_alert_to_the_webhook_and_a_success_resolves_it(
    world: tuple[Store, dict[int, int]],
) -> None:
    import json
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        home = Path(os.environ["MODELYARD_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "alerts.yml").write_text(
            f"notify:\n  webhook:\n    url: http://127.0.0.1:{server.server_port}/hook\nrules: []\n"
        )
        store, ids = world
        start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=5)
        ctl = Controller(store)
        ctl.tick()
        _traffic(store, ids[2], 10, errors=6)
        [after] = ctl.tick()
        assert after.status == "rolled_back"
        [alert] = store.list_alert_states(state="firing")
        assert alert.rule == "rollout_rolled_back"
        assert dict(alert.labels) == {"endpoint": "support", "version": "bot:2"}
        assert ctl.alerts.flush(10)  # the webhook is called off the controller's thread
        [payload] = received
        assert payload["status"] == "firing"
        assert "error_rate" in payload["alert"]["summary"]  # type: ignore[index]
        start_rollout(store, "support", "bot:3", steps="100", bake_s=0, min_requests=2)
        ctl.tick()
        _traffic(store, ids[3], 3)
        ctl.tick()
        assert store.latest_rollout("support").status == "succeeded"
        assert store.list_alert_states(state="firing") == []
        assert [a.state for a in store.list_alert_states()] == ["resolved"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
