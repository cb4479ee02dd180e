"""Review of progressive delivery: bad input to rollouts, servers, the controller and the
router is a one-line error naming the field (exit 2), never a traceback."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.store import Store
from worlds import fake_world


@pytest.fixture
def store(home: Path) -> Store:
    home.mkdir(parents=True)
    s = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(s, versions=3, template=None)
    return s


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("option", "field"),
    [("--min-requests 99999999999999999999999", "min requests"), ("--bake 800000d", "bake")],
)
def test_rollout_start_refuses_a_policy_out_of_range(
    store: Store, capsys: pytest.CaptureFixture[str], option: str, field: str
) -> None:
    code, _, err = run(capsys, f"rollout start support --to bot:2 --steps 100 {option}")
    assert code == 2, err
    assert err.startswith("error: ") and field in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert store.list_rollouts(endpoint="support") == []


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("servers list --stale-after inf", "--stale-after"),
        ("servers list --all --stale-after 1e12", "--stale-after"),
        ("controller --once --lease-ttl inf", "--lease-ttl"),
        ("controller --once --lease-ttl 1e12", "--lease-ttl"),
        ("controller --once --interval inf", "--interval"),
    ],
)
def test_fleet_options_out_of_range_are_usage_errors(
    store: Store, capsys: pytest.CaptureFixture[str], line: str, option: str
) -> None:
    code, _, err = run(capsys, line)
    assert code == 2, err
    assert option in err and "Traceback" not in err and "OverflowError" not in err


@pytest.mark.parametrize("option", ["--stale-after-s inf", "--refresh-s inf"])
def test_route_options_out_of_range_are_usage_errors(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    import modelyard.routing

    started: list[object] = []
    monkeypatch.setattr(modelyard.routing, "run_router", lambda *a, **k: started.append(a))
    code, _, err = run(capsys, f"route --port 0 {option}")
    assert code == 2, err
    assert option.split()[0] in err and not started


def test_one_broken_rollout_does_not_stop_the_controller_nor_status(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.delivery import Controller, step_view

    store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
    store.create_rollout("helpdesk", target=2, steps=(100,), bake_s=0.0, min_requests=0,
                         guards=("error_rate <= 0.02",))  # fmt: skip
    # a bake of millennia, as a store written before bakes were bounded may hold; the
    # newest, so the tick meets it first
    huge = store.create_rollout("support", target=2, steps=(100,), bake_s=800000 * 86400.0,
                                min_requests=0, guards=("error_rate <= 0.02",))  # fmt: skip
    ctl = Controller(store)
    ctl.tick()  # both prepared (no servers to wait for)
    ctl.tick()  # helpdesk ends; support bakes on
    assert store.latest_rollout("helpdesk").status == "succeeded"
    r = store.get_rollout(huge.id)
    assert (r.status, r.phase) == ("running", "baking")
    assert step_view(store, r).elapsed_s >= 0  # rollout status reads it
    code, _, err = run(capsys, "rollout status support")
    assert code == 0, err


def test_a_bug_in_one_rollout_is_logged_and_the_others_move(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.delivery import Controller

    store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
    for name in ("helpdesk", "support"):  # support newest: the tick meets it first
        store.create_rollout(name, target=2, steps=(100,), bake_s=0.0, min_requests=0,
                             guards=("error_rate <= 0.02",))  # fmt: skip
    ctl = Controller(store)
    real = ctl._advance

    def advance(r):  # type: ignore[no-untyped-def]
        if r.endpoint == "support":
            raise KeyError("a bug")
        return real(r)

    monkeypatch.setattr(ctl, "_advance", advance)
    ctl.tick()
    ctl.tick()
    assert store.latest_rollout("helpdesk").status == "succeeded"


def test_controller_once_gives_the_lease_back(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.delivery import LEASE

    run(capsys, "rollout start support --to bot:2 --steps 100 --bake 0s --min-requests 0")
    code, out, err = run(capsys, "controller --once")
    assert code == 0 and "baking" in out, err
    assert store.lease_holder(LEASE) is None  # a serving controller may act at once
    code, out, err = run(capsys, "controller --once")  # and so may the next --once
    assert code == 0 and "succeeded" in out and "holds the lease" not in err, err
    assert store.latest_rollout("support").status == "succeeded"


def _waiting_server(store: Store) -> None:
    """A live server that has not prepared any rollout target yet."""
    from modelyard.store import utcnow

    store.heartbeat_server(
        "srv-1", address="http://127.0.0.1:1", hostname="h", pid=1, engine="echo",
        modelyard_version="0", started_at=utcnow(), ready=True, draining=False,
        state={"prepared": {}},
    )  # fmt: skip


def test_a_resumed_rollout_gets_the_whole_prepare_time_again(store: Store) -> None:
    import time

    from modelyard.delivery import Controller, pause_rollout, resume_rollout, start_rollout

    start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=0)
    pause_rollout(store, "support")
    time.sleep(1.2)  # paused longer than the time to prepare
    resume_rollout(store, "support")
    _waiting_server(store)
    ctl = Controller(store, prepare_timeout_s=1.0)
    assert ctl.tick() == []  # still preparing: the server has its second to load it
    r = store.latest_rollout("support")
    assert (r.status, r.phase) == ("running", "preparing")
    time.sleep(1.2)
    _waiting_server(store)
    (after,) = ctl.tick()  # and then the timeout applies
    assert after.status == "rolled_back" and "within 1 s" in (after.reason or "")


def test_a_failing_extra_task_does_not_stop_the_controller(store: Store) -> None:
    import threading

    from modelyard.delivery import Controller, start_rollout

    calls: list[int] = []

    def broken(_: Store) -> None:  # e.g. a bug in the monitoring tick
        calls.append(1)
        raise RuntimeError("a bug")

    start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=0)
    ctl = Controller(store, extra_ticks=[broken], extra_every_s=0.0)
    stop = threading.Event()
    runner = threading.Thread(target=ctl.run, args=(stop, 0.05))
    runner.start()
    try:
        for _ in range(200):
            if store.latest_rollout("support").status == "succeeded" and len(calls) >= 3:
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        runner.join(10)
    assert store.latest_rollout("support").status == "succeeded"
    assert len(calls) >= 3  # the loop went on after each failure


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("error_rate <= 2", "0.02 for 2%"),
        ("error_rate <= -1", "error_rate is between 0 and 1"),
        ("feedback_score >= 3", "feedback_score is between -1 and 1"),
        ("judge.quality >= 7", "a judge scores from 1 to 5"),
        ("p95_latency_ms <= -5", "p95_latency_ms is never below 0"),
    ],
)
def test_a_guard_the_metric_can_never_reach_is_refused(
    store: Store, capsys: pytest.CaptureFixture[str], guard: str, message: str
) -> None:
    code, _, err = run(capsys, f'rollout start support --to bot:2 --guard "{guard}"')
    assert code == 2, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: guard '{guard}'")
    assert message in line
    assert store.list_rollouts(endpoint="support") == []


def test_guards_at_the_edges_of_their_range_are_taken() -> None:
    from modelyard.delivery import check_guard

    edges = ("error_rate <= 0", "error_rate < 1", "feedback_score >= -1", "judge.quality >= 5",
             "p95_ttft_ms > 0", "p95_latency_ms <= baseline - 5")  # fmt: skip
    for text in edges:
        assert check_guard(text).text == text


def test_a_stored_guard_out_of_range_still_moves(store: Store) -> None:
    """A rollout stored before guards were bounded is judged as written, not stuck."""
    from modelyard.delivery import Controller

    store.create_rollout("support", target=2, steps=(100,), bake_s=0.0, min_requests=0,
                         guards=("error_rate <= 2",))  # fmt: skip
    ctl = Controller(store)
    ctl.tick()
    ctl.tick()
    assert store.latest_rollout("support").status == "succeeded"


def _records(store: Store, version: int, n: int, *, shadow: bool = False) -> None:
    import uuid

    from modelyard.store import NewInferenceRecord

    vid = store.get_model_version("bot", version).id
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name="support", route="completions",
            latency_ms=10.0 + i, status="ok", http_status=200, version_id=vid, shadow=shadow,
        )
        for i in range(n)
    )  # fmt: skip


def test_compare_leaves_out_a_version_that_only_answered_as_a_shadow(store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    from modelyard.delivery import compare_versions

    _records(store, 1, 40)
    _records(store, 2, 40, shadow=True)
    report = compare_versions(store, "support", datetime.now(UTC) - timedelta(hours=1))
    assert [v.version for v in report.versions] == ["bot:1"]
    assert report.comparisons == []  # no "not enough data" row for a version with no traffic


def test_compare_lists_versions_in_number_order(store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    from modelyard.delivery import compare_versions
    from worlds import gate_metrics

    for _ in range(7):  # versions 4 to 10
        store.create_model_version("bot", kind="adapter", artifact_digest="00" * 32,
                                   base_model="tiny", run_id=None, lineage={},
                                   metrics=gate_metrics(True))  # fmt: skip
    for version in (10, 2, 9):
        _records(store, version, 3)
    report = compare_versions(store, "support", datetime.now(UTC) - timedelta(hours=1))
    assert [v.version for v in report.versions] == ["bot:2", "bot:9", "bot:10"]
    assert [c.version for c in report.comparisons] == ["bot:9", "bot:10"]  # control bot:2


def _archived_behind_the_registrys_back(store: Store, version: int) -> None:
    """What a store from before the registry refused it holds: a rollout's version archived
    (archive_model_version refuses that now)."""
    from sqlalchemy import text

    vid = store.get_model_version("bot", version).id
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET status = 'archived' WHERE id = :v"),
                     {"v": vid})  # fmt: skip


def test_archiving_the_target_while_it_prepares_rolls_the_rollout_back(store: Store) -> None:
    """The registry let a version with no traffic yet be archived: the rollout preparing
    it was stuck, its controller failing on it each tick, `rollout wait` timing out. The
    registry refuses it now; a store that holds one rolls the rollout back."""
    from modelyard.delivery import Controller, ended_badly, start_rollout
    from modelyard.errors import Conflict

    start_rollout(store, "support", "bot:2", steps="50,100", bake_s=3600, min_requests=0,
                  promote_alias="champion")  # fmt: skip
    ctl = Controller(store)
    with pytest.raises(Conflict, match=r"bot:2 is the target of the rollout .* cannot be archived"):
        store.archive_model_version("bot", 2)
    _archived_behind_the_registrys_back(store, 2)
    (r,) = ctl.tick()
    assert r.status == "rolled_back" and "bot:2 was archived" in (r.reason or "")
    assert {x.version: x.weight for x in store.get_endpoint("support").routes} == {1: 100}
    assert ended_badly(r) is not None  # rollout wait exits 1, not 3 after its timeout


def test_a_slow_rollback_alert_does_not_delay_another_rollback(store: Store) -> None:
    import time
    import uuid

    from modelyard.delivery import Controller, start_rollout
    from modelyard.store import NewInferenceRecord

    store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
    for name in ("support", "helpdesk"):
        start_rollout(store, name, "bot:2", steps="100", bake_s=3600, min_requests=5)
    seen: list[dict[str, str]] = []

    def slow_webhook(s: Store, r: object, breach: object) -> None:  # a receiver that hangs
        seen.append({e: s.latest_rollout(e).status for e in ("support", "helpdesk")})
        time.sleep(0.5)

    ctl = Controller(store, on_breach=slow_webhook)
    ctl.tick()  # both bake
    vid = store.get_model_version("bot", 2).id
    for name in ("support", "helpdesk"):
        store.add_inference_records(
            NewInferenceRecord(
                id=f"cmpl-{uuid.uuid4().hex}", endpoint_name=name, route="completions",
                latency_ms=5.0, status="error", http_status=503, version_id=vid,
            )
            for _ in range(10)
        )  # fmt: skip
    assert len(ctl.tick()) == 2
    ctl.close()  # custom notifiers run off the controller's thread: wait for the calls due
    # when the first alert went out, both rollouts were rolled back already
    assert seen[0] == {"support": "rolled_back", "helpdesk": "rolled_back"}
    assert len(seen) == 2


def test_compare_with_no_records_shows_no_python_none(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "rollout compare support")
    assert code == 0, err
    assert "None" not in out and "support: control -" in out
    assert "no inference records of support" in err


@pytest.mark.parametrize("ref", ["bot:abc", "", "bot@"])
def test_a_malformed_to_names_the_field(store: Store, ref: str) -> None:
    from modelyard.delivery import start_rollout
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        start_rollout(store, "support", ref)
    assert caught.value.context.get("field") == "to"  # the admin API's 400 names "to"
    assert caught.value.message.startswith("--to: invalid model reference")


def test_the_controller_loop_outlives_a_failing_tick(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from modelyard.delivery import Controller, start_rollout

    start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=0)
    ctl = Controller(store)
    real = store.list_rollouts
    failures = [RuntimeError("a row the code cannot read")]

    def flaky(**kw):  # type: ignore[no-untyped-def]
        if kw.get("active") and failures:
            raise failures.pop()
        return real(**kw)

    monkeypatch.setattr(store, "list_rollouts", flaky)
    stop = threading.Event()
    runner = threading.Thread(target=ctl.run, args=(stop, 0.05))
    runner.start()
    try:
        for _ in range(200):
            if real(endpoint="support")[0].status == "succeeded":
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        runner.join(10)
    assert not failures and real(endpoint="support")[0].status == "succeeded"


def test_abort_says_why_when_the_old_plan_was_archived(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.delivery import Controller, start_rollout
    from modelyard.errors import Conflict

    start_rollout(store, "support", "bot:2", steps="100", bake_s=3600, min_requests=0)
    Controller(store).tick()  # 100% on bot:2: bot:1 has no traffic, but a rollback needs it
    with pytest.raises(Conflict, match="in the plan a rollback restores"):
        store.archive_model_version("bot", 1)
    _archived_behind_the_registrys_back(store, 1)
    code, _, err = run(capsys, "rollout abort support")
    assert code == 1
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "cannot abort the rollout on 'support'" in line and "bot:1, archived" in line
    assert "modelyard rollout promote support" in line
    assert store.latest_rollout("support").active  # nothing changed


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0, 1e12])
def test_the_servers_router_refuses_a_refresh_it_cannot_keep(store: Store, value: float) -> None:
    """serve --refresh-seconds inf killed the router's thread (OverflowError in its wait)
    and the server then never re-read the plans: a rollout's steps never reached it."""
    from modelyard.errors import ConfigError
    from modelyard.serving._router import Router

    with pytest.raises(ConfigError) as caught:
        Router(store, refresh_seconds=value)
    assert caught.value.context.get("field") == "refresh_seconds"
    assert "refresh_seconds is" in caught.value.message


def test_a_version_number_beyond_the_database_is_not_found(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "rollout start support --to bot:99999999999999999999")
    assert code == 1 and "Traceback" not in err and "OverflowError" not in err
    assert err.startswith("error: model 'bot' has no version 99999999999999999999")


def test_a_version_number_beyond_the_database_is_not_found_anywhere(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """set-traffic, its --shadow and a registry lookup with such a number were an
    OverflowError traceback (a 500 through the admin API); the store answers as for any
    version it does not have."""
    huge = "99999999999999999999"
    for line in (f"endpoints set-traffic support {huge}=100",
                 f"endpoints set-traffic support 1=100 --shadow {huge}",
                 f"registry show bot:{huge}"):  # fmt: skip
        code, _, err = run(capsys, line)
        assert code == 1 and "Traceback" not in err, (line, err)
        assert f"model 'bot' has no version {huge}" in err, (line, err)


def test_a_version_of_another_model_points_at_the_models_own_versions(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hint names how to find the endpoint's model's versions, not a made-up one (it
    said 'e.g. --to bot:2', which may be a version whose gates failed)."""
    code, _, err = run(capsys, "rollout start support --to nobot@champion")
    assert code == 2 and "nobot@champion is not a version of 'bot'" in err, err
    assert "--to bot:N or bot@ALIAS (its versions and aliases: modelyard registry list bot)" in err
    assert "bot:2" not in err


def test_a_bare_version_number_is_shown_as_the_model_s_version(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--to 1`` was read as a model named 1: "1 is not a version of 'bot'", where bot:1
    is one. The message says how a version is written, with the one meant."""
    code, _, err = run(capsys, "rollout start support --to 1")
    assert code == 2 and "--to 1 names no model: a version is MODEL:N, here bot:1" in err, err
    assert "is not a version of" not in err


def test_endpoints_show_says_where_the_traffic_of_a_pinned_endpoint_went(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """An endpoint created with bot:1 whose traffic moved (a rollout, set-traffic) says so in
    its first line, which named only bot:1."""
    assert run(capsys, "endpoints set-traffic support 1=20 2=80")[0] == 0
    code, out, _ = run(capsys, "endpoints show support")
    said = " ".join(out.split())  # as one line, however wide the terminal wraps it
    assert code == 0 and said.startswith("support → bot:1 (0 requests recorded; created with")
    assert "created with it, its traffic now: bot:1 20%, bot:2 80%)" in said
