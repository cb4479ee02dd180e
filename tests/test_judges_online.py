"""Online judging: the monitoring tick has a judge score a sampled share of an endpoint's
live records, off the request path, once each; an alert rule on ``judge.NAME`` fires on
what it scored."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from modelyard.access import create_api_key
from modelyard.cli import main
from modelyard.data import render_prompt
from modelyard.monitoring import apply_storage_policy, sampled
from modelyard.serving import BackgroundServer, create_app
from modelyard.store import NewInferenceRecord, Store
from test_judges import LastLineEngine
from worlds import fake_world


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def world(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, str]]:
    """Endpoint ``support`` (bot:1, tenant acme) with records to judge; endpoint ``judge-ep``
    served by ``LastLineEngine`` on a real server, judge ``quality`` (relevance) on it."""
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, endpoint="judge-ep")
    store.create_endpoint("support", model_ref="bot:1", tenant="acme")
    store.create_tenant("vault", storage_policy="hash")
    monkeypatch.setenv("JUDGE_KEY", create_api_key(store, "acme")[1])
    app = create_app(store, LastLineEngine(), refresh_seconds=0.1)
    with BackgroundServer(app) as server:
        store.put_judge(
            "quality", rubric="relevance", base_url=server.base_url + "/v1", model="judge-ep",
            api_key_env="JUDGE_KEY",
        )  # fmt: skip
        yield store, server.base_url + "/v1"
    store.close()


def _records(store: Store, tenant: str, n: int, answer: str, start: int = 0) -> list[str]:
    version = store.get_model_version("bot", 1)
    policy = store.get_tenant(tenant).storage_policy  # applied as the server applies it
    now = datetime.now(UTC)
    made = [
        NewInferenceRecord(
            id=f"{tenant}-{i:03d}",
            endpoint_name="support",
            route="chat.completions",
            latency_ms=1.0,
            status="ok",
            http_status=200,
            tenant_id=store.get_tenant(tenant).id,
            version_id=version.id,
            prompt=apply_storage_policy(
                render_prompt({"instruction": f"Ticket {i}: my laptop will not start."}), policy
            ),
            response=apply_storage_policy(answer, policy),
            created_at=now - timedelta(minutes=10),
        )
        for i in range(start, start + n)
    ]
    store.add_inference_records(made)
    return [r.id for r in made]


def _judge_calls(store: Store) -> int:
    return len(store.list_inference_records(endpoint="judge-ep", limit=10_000))


def test_a_sampled_share_is_judged_once_and_an_alert_fires_on_its_mean(
    world: tuple[Store, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = world
    bad = _records(store, "acme", 40, "Please restart it.\nScore: 1")
    hashed = _records(store, "vault", 10, "Score: 5")  # kept as hashes: nothing to judge
    assert store.get_tenant("vault").storage_policy == "hash"
    expected = [i for i in bad if sampled(i, 0.5)]
    assert 10 < len(expected) < 30  # the hash picks about half, the same every time
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump({
        "judging": [{"judge": "quality", "endpoint": "support", "sample": 0.5,
                     "max_per_tick": 10}],
        "rules": [{"name": "answers-off-topic", "metric": "judge.quality", "endpoint": "support",
                   "window": "1h", "comparison": "<", "threshold": 3.0}],
    }))  # fmt: skip

    code, out, err = run(capsys, f"modelyard monitor tick --rules {rules} --json")
    assert code == 0, err
    first = json.loads(out)
    (judged,) = first["judged"]
    assert (judged["judged"], judged["scored"], judged["backlog"]) == (10, 10, len(expected) - 10)
    assert first["transitions"][0]["to"] == "firing"  # the mean of 10 scores is 1.0 < 3
    code, out, _ = run(capsys, f"modelyard monitor tick --rules {rules}")
    assert f"judge quality on support: judged {min(10, len(expected) - 10)} record(s)" in out
    for _ in range(3):
        run(capsys, f"modelyard monitor tick --rules {rules}")
    code, out, _ = run(capsys, f"modelyard monitor tick --rules {rules} --json")
    assert json.loads(out)["judged"][0]["judged"] == 0  # nothing new: nothing judged again
    assert _judge_calls(store) == len(expected)  # one call per sampled record, ever
    scores, failed = store.judgement_states("quality", [*bad, *hashed])
    assert sorted(scores) == sorted(expected) and not failed
    assert set(scores.values()) == {1.0}
    now = datetime.now(UTC)
    assert store.judge_mean("quality", "support", now - timedelta(hours=1), now) == (
        1.0, len(expected),
    )  # fmt: skip

    code, out, _ = run(capsys, "modelyard judges scores quality --endpoint support --json")
    assert json.loads(out) == [
        {"version": "bot:1", "scores": len(expected), "mean": 1.0, "min": 1.0, "max": 1.0}
    ]

    # Better answers arrive and are judged; the alert resolves on the new mean.
    good = _records(store, "acme", 80, "Hold the power button for ten seconds.\nScore: 5", 40)
    picked = [i for i in good if sampled(i, 0.5)]
    for _ in range(1 + len(picked) // 10):
        code, out, _ = run(capsys, f"modelyard monitor tick --rules {rules} --json")
    mean, n = store.judge_mean("quality", "support", now - timedelta(hours=1), now)
    assert n == len(expected) + len(picked) and mean is not None and mean >= 3.0
    code, out, _ = run(capsys, "modelyard monitor alerts --json")
    (alert,) = [a for a in json.loads(out) if a["rule"] == "answers-off-topic"]
    assert alert["state"] == "resolved"


def test_a_judge_live_traffic_cannot_feed_is_reported_not_raised(
    world: tuple[Store, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, url = world
    store.put_judge("grader", rubric="correctness", base_url=url, model="judge-ep")
    _records(store, "acme", 4, "Score: 2")
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump({"rules": [
        {"name": "typo", "metric": "judge.qualty", "endpoint": "support", "threshold": 3,
         "comparison": "<"},
    ], "judging": [
        {"judge": "grader", "endpoint": "support", "sample": 1.0},
        {"judge": "nobody", "endpoint": "support"},
        {"judge": "quality", "endpoint": "suport"},
        {"judge": "quality", "endpoint": "support", "sample": 1.0},
    ]}))  # fmt: skip
    code, out, err = run(capsys, f"modelyard monitor tick --rules {rules}")
    assert code == 0, err
    assert (
        "judging grader@support skipped: judging grader@support: judge 'grader' "
        "(correctness rubric) needs a reference for every answer" in out
    )
    assert "judging nobody@support skipped: no judge named 'nobody'" in out
    assert "judging quality@suport skipped: " in out and "'suport'" in out
    assert "judge quality on support: judged 4 record(s), 4 scored" in out
    assert "judging rule typo skipped: it names judge 'qualty', which does not exist" in out

    rules.write_text(yaml.safe_dump({"judging": [{"judge": "quality", "endpoint": "support",
                                                  "sample": 0}]}))  # fmt: skip
    code, _, err = run(capsys, f"modelyard monitor tick --rules {rules}")
    assert code == 2 and "judging.0.sample" in err
