"""The controller's tick reads every active rollout together: the servers, the rollouts'
versions and their step windows' records with the statements of one rollout, so a tick
over 5 rollouts reads what a tick over 1 reads (journey 5: a shared base with an endpoint
per tenant, several rollouts in progress at once). It read the server list, the target
and baseline versions and the records of each rollout with queries of its own: about 22
statements a rollout. Each rollout's decision is still its own: a failing canary among
healthy ones is rolled back alone. On SQLite and PostgreSQL (``store``)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from conftest import selects, statements
from modelyard.delivery import Controller
from modelyard.store import NewInferenceRecord, Store, utcnow
from worlds import fake_world


def _endpoint(store: Store, i: int) -> dict[int, int]:
    """Tenant ``t{i}`` with model ``m{i}`` (3 versions) and endpoint ``e{i}`` serving 1 and
    3 (90/10), and an hour of the baseline's traffic; the versions' ids by number."""
    made = fake_world(store, tenant=f"t{i}", model=f"m{i}", endpoint=f"e{i}", versions=3)
    ids = {v.version: v.id for v in made}
    store.set_traffic(f"e{i}", {1: 90, 3: 10})
    _traffic(store, i, ids[1], 150, minutes_ago=30)
    _traffic(store, i, ids[3], 50, minutes_ago=30)
    return ids


def _traffic(
    store: Store, i: int, version_id: int, n: int, *, errors: int = 0, minutes_ago: float = 0
) -> None:
    at = utcnow() - timedelta(minutes=minutes_ago)
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name=f"e{i}", route="chat.completions",
            latency_ms=20.0 + k % 7, status="error" if k < errors else "ok",
            http_status=503 if k < errors else 200, version_id=version_id,
            tenant_id=store.get_tenant(f"t{i}").id, created_at=at,
        )
        for k in range(n)
    )  # fmt: skip


def _start(store: Store, ctl: Controller, names: list[int]) -> None:
    """Rollouts to version 2 on these endpoints, prepared on the live server and baking."""
    started = []
    for i in names:
        started.append(store.create_rollout(
            f"e{i}", target=2, steps=(10, 50, 100), bake_s=0.0, min_requests=40,
            guards=("error_rate <= 0.05",),
        ))  # fmt: skip
    prepared = {r.id: {"ok": True} for r in store.list_rollouts(active=True)}
    store.heartbeat_server(
        "s1", address="127.0.0.1:1", hostname="h", pid=1, engine="echo",
        modelyard_version="0", started_at=utcnow(), ready=True, draining=False,
        state={"loaded": [], "prepared": prepared},
    )  # fmt: skip
    ctl.tick()
    for r in started:
        assert store.get_rollout(r.id).phase == "baking"


def _tick_reads(store: Store, ctl: Controller) -> int:
    """The SELECTs of a tick in which no rollout moves (too few canary requests yet)."""
    before = {r.id: r.updated_at for r in store.list_rollouts(active=True)}
    with statements(store) as sent:
        assert ctl.tick() == []
    assert {r.id: r.updated_at for r in store.list_rollouts(active=True)} == before
    return len(selects(sent))


def test_a_tick_over_5_rollouts_reads_what_a_tick_over_1_reads(store: Store) -> None:
    ids = {i: _endpoint(store, i) for i in range(5)}
    ctl = Controller(store, holder="one")
    try:
        _start(store, ctl, [0])
        one = _tick_reads(store, ctl)
        _start(store, ctl, [1, 2, 3, 4])
        five = _tick_reads(store, ctl)
        assert five == one, (one, five)

        # each rollout is judged on its own endpoint's canary: e4's fails, the others pass
        for i in range(5):
            _traffic(store, i, ids[i][2], 60, errors=30 if i == 4 else 0)
        changed = {r.endpoint: r for r in ctl.tick()}
        assert sorted(changed) == [f"e{i}" for i in range(5)]
        assert changed["e4"].status == "rolled_back"
        assert changed["e4"].outcome["breach"]["kind"] == "guard"
        assert {r.version: r.weight for r in store.get_endpoint("e4").routes if r.weight} == {
            1: 90, 3: 10,
        }  # fmt: skip
        for i in range(4):
            r = changed[f"e{i}"]
            assert (r.status, r.phase, r.step_index) == ("running", "baking", 1), r
            plan = {x.version: x.weight for x in store.get_endpoint(f"e{i}").routes if x.weight}
            assert plan[2] == 50 and sum(plan.values()) == 100
    finally:
        ctl.close()
