"""The delivery commands as users meet them: the documented session, exit codes, JSON, errors."""

from __future__ import annotations

import html
import json
import re
import shlex
import uuid
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def store(home: Path) -> Store:
    home.mkdir(parents=True)
    s = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(s, versions=3, template=None)
    return s


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_documented_session_prints_and_exits_as_shown(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    block = re.search(r"## A session\n.*?```console\n(.*?)```", (DOCS / "delivery.md").read_text(),
                      re.S)  # fmt: skip
    assert block is not None
    last = None
    expected_err: list[str] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ modelyard "):
            last = run(capsys, line[2:])
        elif line == "$ echo $?":
            continue
        elif line.startswith("error: "):
            assert last is not None and last[2].strip() == line, last
            expected_err.append(line)
        elif line.strip().isdigit():
            assert last is not None and last[0] == int(line), last
    assert expected_err  # the session shows an error line and it was checked
    r = store.latest_rollout("support")
    assert (r.status, r.reason) == ("aborted", "wrong data")
    assert {x.version: x.weight for x in store.get_endpoint("support").routes} == {1: 100}


def test_status_shows_the_timeline_and_live_guards(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    start = (
        "modelyard rollout start support --to bot:2 --steps 20,100 --bake 0s "
        '--min-requests 50 --guard "error_rate <= 0.05" --json'
    )
    code, out, _ = run(capsys, start)
    assert code == 0 and json.loads(out)["phase"] == "preparing"
    assert run(capsys, "modelyard controller --once")[0] == 0
    v2 = store.get_model_version("bot", 2).id
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name="support", route="completions",
            latency_ms=12.0, status="ok", http_status=200, version_id=v2,
        )
        for _ in range(7)
    )  # fmt: skip
    code, out, _ = run(capsys, "modelyard rollout status support")
    assert code == 0
    assert "support → bot:2: running (baking, step 1/2 (20%))" in out
    assert "error_rate <= 0.05" in out and "pending" in out  # 7 of 50 requests so far
    code, out, _ = run(capsys, "modelyard rollout status support --json")
    current = json.loads(out)["current"]
    assert current["requests"] == 7 and current["guards"][0]["status"] == "pending"
    code, out, _ = run(capsys, "modelyard endpoints show support --json")
    shown = json.loads(out)
    assert shown["requests_by_version"]["bot:2"]["live"] == 7 and shown["rollout"]
    code, _, err = run(capsys, "modelyard endpoints set-traffic support 1=50 2=50")
    assert code == 1 and "rollout in progress" in err
    assert run(capsys, "modelyard rollout promote support")[0] == 0
    code, out, _ = run(capsys, "modelyard rollout wait support --timeout 1s --json")
    assert code == 0 and json.loads(out)["status"] == "succeeded"


def test_wait_times_out_with_exit_3(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "modelyard rollout start support --to bot:2 --bake 1h")
    code, _, err = run(capsys, "modelyard rollout wait support --timeout 1s --poll 0.2")
    assert code == 3 and "timed out after 1s" in err


def test_shadow_policy_and_servers_commands(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "modelyard endpoints set-traffic support --shadow 3 "
                               "--shadow-fraction 0.25")  # fmt: skip
    assert code == 0 and "shadow: bot:3 (25% of requests)" in out
    assert store.get_endpoint("support").shadow_fraction == 0.25
    code, _, err = run(capsys, "modelyard endpoints set-traffic support --shadow 3 "
                               "--shadow-fraction 1.5")  # fmt: skip
    assert code == 2 and "shadow fraction 1.5 is out of range" in err
    assert run(capsys, "modelyard endpoints set-traffic support --no-shadow")[0] == 0
    assert store.get_endpoint("support").shadow_version is None
    code, _, err = run(capsys, "modelyard endpoints policy support --steps 10,100")
    assert code == 2 and "follows bot:1, not an alias" in err
    code, _, err = run(capsys, 'modelyard rollout start support --to bot:2 --guard "p95 < 3"')
    assert code == 2 and "unknown metric 'p95'" in err and "Traceback" not in err
    code, out, _ = run(capsys, "modelyard servers list --json")
    assert code == 0 and json.loads(out) == []


def test_compare_prints_versions_and_a_verdict(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {n: store.get_model_version("bot", n).id for n in (1, 2)}
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name="support", route="completions",
            latency_ms=10.0 + (i % 7), status="ok", http_status=200, version_id=ids[1 + i % 2],
        )
        for i in range(120)
    )  # fmt: skip
    code, out, _ = run(capsys, "modelyard rollout compare support")
    assert code == 0 and "control bot:" in out
    assert "no significant difference" in out
    code, out, _ = run(capsys, "modelyard rollout compare support --json --since 1h")
    report = json.loads(out)
    assert [v["requests"] for v in report["versions"]] == [60, 60]


def test_bake_reads_the_shared_duration_grammar(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "modelyard rollout start support --to bot:2 --bake 5x")
    assert code == 2 and "invalid duration '5x' for --bake" in err and "e.g. 30s" in err
    assert "Traceback" not in err
    code, out, _ = run(capsys, "modelyard rollout start support --to bot:2 --bake 1.5h --json")
    assert code == 0, out
    assert json.loads(out)["bake_s"] == 5400.0
    code, _, err = run(capsys, "modelyard rollout compare support --since yesterday")
    assert code == 2 and "invalid --since 'yesterday'" in err
    code, out, _ = run(capsys, "modelyard rollout compare support --since 1.5h --json")
    assert code == 0 and json.loads(out)["endpoint"] == "support"


def test_wait_reports_each_step_and_ends_with_a_sentence(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    from modelyard.delivery import Controller

    start = "modelyard rollout start support --to bot:2 --steps 50,100 --bake 0s --min-requests 0"
    assert run(capsys, start)[0] == 0
    stop = threading.Event()

    def drive() -> None:  # the controller of a server, one tick every 0.3 s
        ctl = Controller(Store.open(store.url))
        while not stop.wait(0.3):
            ctl.tick()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        code, out, err = run(capsys, "modelyard rollout wait support --timeout 60s --poll 0.05")
    finally:
        stop.set()
        driver.join()
    assert code == 0, err
    assert "step 1/2: 50% to bot:2" in err and "step 2/2: 100% to bot:2" in err
    assert out.strip() == "The rollout of support to bot:2 succeeded: all traffic goes to it."
    code, out, _ = run(capsys, "modelyard rollout status support")
    assert code == 0 and "50% to bot:2" in out
    assert "{" not in out and "None" not in out and "succeeded, all traffic on bot:2" in out


def test_wait_after_a_rollback_says_it_in_words(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """One sentence, on stderr, says it was rolled back, why, and where traffic is now."""
    from modelyard.store import Transition

    start = "modelyard rollout start support --to bot:2 --steps 50,100 --bake 0s --min-requests 0"
    assert run(capsys, start)[0] == 0
    r = store.latest_rollout("support")
    breach = "p95_latency_ms <= 1: p95_latency_ms=2985 (threshold 1, n=3) → breach"
    detail = {"breach": {"guards": [{"guard": "p95_latency_ms <= 1", "baseline": None}],
                         "message": breach}}  # fmt: skip
    change = Transition("rolled_back", detail, status="rolled_back", plan={1: 100},
                        audit="rollout.rolled_back", reason=breach)  # fmt: skip
    assert store.transition_rollout(r.id, (r.status, r.phase, r.step_index), change) is not None
    code, out, err = run(capsys, "modelyard rollout wait support --timeout 5s")
    assert code == 1
    out, err = " ".join(out.split()), " ".join(err.split())  # unwrapped
    assert out == ""  # the sentence is the error line: the reason is said once
    said = f"error: the rollout of support to bot:2 ended rolled back ({breach}): traffic is "
    assert said + "back to 100% to bot:1" in err and err.count(breach) == 1
    assert "rolled_back" not in out + err
    # the report's "Versions and rollouts" table names the guard, in words, not as a repr
    page_path = store_home(store) / "report.html"
    code, _, err = run(capsys, f"modelyard monitor report --endpoint support --out {page_path}")
    assert code == 0, err
    page = page_path.read_text(encoding="utf-8")
    assert html.escape(f"breach: {breach}") in page
    assert "None" not in page and "{&#x27;" not in page


def store_home(store: Store) -> Path:
    return Path(store.url.removeprefix("sqlite:///")).parent


def test_compare_keeps_feedback_intervals_inside_the_score_range(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {n: store.get_model_version("bot", n).id for n in (1, 2)}
    tenant = store.get_tenant("acme").id
    records = [f"cmpl-{uuid.uuid4().hex}" for _ in range(10)]
    store.add_inference_records(
        NewInferenceRecord(
            id=rid, endpoint_name="support", route="completions", latency_ms=10.0, status="ok",
            http_status=200, version_id=ids[1 + i % 2], tenant_id=tenant,
        )
        for i, rid in enumerate(records)
    )  # fmt: skip
    # bot:1 all thumbs up (a t interval would be [1, 1]); bot:2 mostly up with one down
    # (a t interval would reach above 1)
    for i, rid in enumerate(records):
        store.add_feedback(rid, tenant="acme", score=-1.0 if i == 1 else 1.0)
    code, out, _ = run(capsys, "modelyard rollout compare support --json")
    assert code == 0
    by = {v["version"]: v for v in json.loads(out)["versions"]}
    for v in by.values():
        low, high = v["feedback_ci"]
        assert -1.0 <= low <= v["feedback_score"] <= high <= 1.0, v
    assert by["bot:1"]["feedback_ci"][0] < 1.0  # five thumbs up do not prove a perfect score
