"""Journey 1 (a gated deployment pipeline): a latency guard against the baseline judges
the canary against the baseline's latencies of the same moment, not the past hour's.

Seen on a shared machine: a canary of a byte-identical adapter was rolled back twice by
``p95_latency_ms <= 1.2 * baseline`` because the machine was busier during the step than
in the hour before the rollout, when the baseline's latencies were measured; in the step
itself both versions had the same p95."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from modelyard.delivery import Controller, start_rollout, step_view
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world


def _world(store: Store) -> dict[int, int]:
    made = fake_world(store, versions=2, endpoint=None, template=None)
    store.set_alias("bot", "champion", 1)
    store.create_endpoint("support", model_ref="bot@champion", tenant="acme")
    return {v.version: v.id for v in made}


def _traffic(store: Store, version_id: int, n: int, latency_ms: float, ago_s: float = 0) -> None:
    when = datetime.now(UTC) - timedelta(seconds=ago_s) if ago_s else None
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name="support", route="chat.completions",
            latency_ms=latency_ms, status="ok", http_status=200, version_id=version_id,
            tenant_id=store.get_tenant("acme").id, created_at=when,
        )
        for _ in range(n)
    )  # fmt: skip


GUARD = "p95_latency_ms <= 1.2 * baseline"


def _start(store: Store) -> Controller:
    start_rollout(store, "support", "bot:2", steps="10,50,100", bake_s=0, min_requests=10,
                  guards=[GUARD])  # fmt: skip
    ctl = Controller(store)
    ctl.tick()  # prepared (no live servers): the first step starts
    return ctl


def test_a_machine_busier_during_the_step_does_not_roll_an_equal_canary_back(
    store: Store,
) -> None:
    ids = _world(store)
    _traffic(store, ids[1], 200, latency_ms=10.0, ago_s=1800)  # a quiet half hour ago
    ctl = _start(store)
    _traffic(store, ids[1], 90, latency_ms=200.0)  # now everything is slower, alike
    _traffic(store, ids[2], 10, latency_ms=200.0)
    view = step_view(store, store.latest_rollout("support"))
    [guard] = view.guards
    assert (guard.status, guard.baseline, view.latency_window) == ("pass", 200.0, "step")
    ctl.tick()
    r = store.latest_rollout("support")
    assert r.status == "running" and r.step_index == 1  # on to 50 %, not rolled back


def test_a_canary_slower_than_the_baseline_of_the_same_moment_is_rolled_back(
    store: Store,
) -> None:
    ids = _world(store)
    _traffic(store, ids[1], 200, latency_ms=300.0, ago_s=1800)  # slow then: no excuse now
    ctl = _start(store)
    _traffic(store, ids[1], 90, latency_ms=20.0)
    _traffic(store, ids[2], 10, latency_ms=200.0)
    ctl.tick()
    r = store.latest_rollout("support")
    assert r.status == "rolled_back" and GUARD in (r.reason or "")
    assert r.outcome["breach"]["window"]["baseline_latency"] == "step"


def test_too_few_baseline_requests_in_the_step_fall_back_to_the_hour_before(
    store: Store,
) -> None:
    ids = _world(store)
    _traffic(store, ids[1], 200, latency_ms=10.0, ago_s=1800)
    _start(store)
    _traffic(store, ids[1], 5, latency_ms=200.0)  # under 30: too few to be the baseline
    _traffic(store, ids[2], 10, latency_ms=20.0)
    view = step_view(store, store.latest_rollout("support"))
    [guard] = view.guards
    assert view.latency_window == "lookback" and guard.status == "breach"


def test_the_last_step_compares_with_the_baseline_of_the_steps_before(store: Store) -> None:
    """At 100 % the baseline serves no more: its latencies beside the canary in the
    earlier steps are still of a busier machine than the hour before's."""
    ids = _world(store)
    _traffic(store, ids[1], 200, latency_ms=10.0, ago_s=1800)  # a quiet half hour ago
    start_rollout(store, "support", "bot:2", steps="50,100", bake_s=0, min_requests=10,
                  guards=[GUARD])  # fmt: skip
    ctl = Controller(store)
    ctl.tick()  # prepared: the step at 50 % starts
    _traffic(store, ids[1], 40, latency_ms=200.0)  # busier now, both versions alike
    _traffic(store, ids[2], 40, latency_ms=200.0)
    ctl.tick()
    r = store.latest_rollout("support")
    assert (r.status, r.step_index) == ("running", 1)  # on to 100 %
    _traffic(store, ids[2], 20, latency_ms=210.0)
    view = step_view(store, r)
    [guard] = view.guards
    assert (guard.status, guard.baseline, view.latency_window) == ("pass", 200.0, "steps")
    ctl.tick()
    assert store.latest_rollout("support").status == "succeeded"


def test_the_last_step_of_a_slower_canary_is_still_rolled_back(store: Store) -> None:
    ids = _world(store)
    _traffic(store, ids[1], 200, latency_ms=10.0, ago_s=1800)
    start_rollout(store, "support", "bot:2", steps="50,100", bake_s=0, min_requests=10,
                  guards=[GUARD])  # fmt: skip
    ctl = Controller(store)
    ctl.tick()
    _traffic(store, ids[1], 40, latency_ms=200.0)
    _traffic(store, ids[2], 40, latency_ms=220.0)
    ctl.tick()
    _traffic(store, ids[2], 20, latency_ms=400.0)  # at 100 %: twice as slow as beside it
    ctl.tick()
    r = store.latest_rollout("support")
    assert r.status == "rolled_back" and GUARD in (r.reason or "")
    assert r.outcome["breach"]["window"]["baseline_latency"] == "steps"
