"""A correction of a request that got no answer (its record refused or error: not
``answered``) is kept for training, but its score, which the API requires and which rates
no answer, counts in no mean feedback score: not in the profiles (``monitor profiles``,
``modelyard_feedback_score``), an alert rule's ``feedback_score``, a rollout guard on
``feedback_score``, ``rollout compare``, nor the admin API's (and the console's) feedback
summary. Before, two thumbs-down corrections beside three thumbs up read as 0.2, not 1.0.
Feedback on a timed-out request still counts (part of a streamed answer may have reached
its user). The API's reply says whether the score counts (``counted``). On SQLite and
PostgreSQL where the reader is SQL (``store_url``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, expect
from prometheus_client import CollectorRegistry

from modelyard.access import create_actor_token, create_api_key
from modelyard.audit import AccessPolicy
from modelyard.cli import main
from modelyard.delivery import Controller, start_rollout
from modelyard.monitoring import AlertRules, MonitoringCollector, evaluate_rules, update_profiles
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from test_console import World, _open, _page, world  # noqa: F401
from worlds import fake_world

# (suffix, status, HTTP status, score, label): three answers rated up (one timed out), two
# requests that got no answer corrected with a thumbs down
FEEDBACK = (
    ("ok-1", "ok", 200, 1.0, None),
    ("ok-2", "ok", 200, 1.0, None),
    ("late", "timeout", 504, 1.0, None),
    ("failed", "error", 500, -1.0, "reset the router"),
    ("refused", "refused", 400, -1.0, "use the form"),
)


def _now() -> datetime:
    """Ten minutes ago, kept inside today (UTC): today's gauges and a 30 m rule see it."""
    now = datetime.now(UTC)
    return max(now - timedelta(minutes=10), now.replace(hour=0, minute=0, second=1))


def _record(store: Store, rid: str, version: int, status: str, http: int, **kw: Any) -> Any:
    return NewInferenceRecord(
        id=rid, endpoint_name="support", route="chat.completions", latency_ms=5.0,
        status=status, http_status=http, error=None if status == "ok" else "no answer",
        tenant_id=store.get_tenant("acme").id,
        version_id=store.get_model_version("bot", version).id, **kw,
    )  # fmt: skip


def _rated(store: Store, versions: tuple[int, ...] = (1, 2)) -> None:
    """``FEEDBACK`` on the records of each of ``versions`` of endpoint ``support``."""
    at = _now()
    store.add_inference_records(
        _record(store, f"v{v}-{name}", v, status, http, created_at=at)
        for v in versions
        for name, status, http, _, _ in FEEDBACK
    )
    for v in versions:
        for name, _, _, score, label in FEEDBACK:
            store.add_feedback(f"v{v}-{name}", tenant="acme", score=score, label=label)
    kept = [f for f in store.list_feedback() if f.label is not None]
    assert len(kept) == 2 * len(versions)  # the corrections are kept, training data


@pytest.fixture
def rated(store: Store) -> Store:
    fake_world(store, versions=2, template=None)
    _rated(store)
    return store


def test_profiles_and_their_gauge_count_no_correction_of_an_unanswered_request(
    rated: Store, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("MODELYARD_STORE_URL", store_url)
    capsys.readouterr()
    assert main(["monitor", "profiles", "--endpoint", "support", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((p["version"], p["feedback_count"], p["feedback_mean"]) for p in rows) == [
        ("bot:1", 3, 1.0),
        ("bot:2", 3, 1.0),
    ]  # was 5 and 0.2 each
    assert [p["requests"] for p in rows] == [5, 5]  # the records themselves still count
    update_profiles(rated)
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(rated))
    for version in ("bot:1", "bot:2"):
        labels = {"endpoint": "support", "version": version}
        assert registry.get_sample_value("modelyard_feedback_score", labels) == 1.0


def test_an_alert_rule_on_feedback_score_reads_no_correction(rated: Store) -> None:
    rules = AlertRules.parse({"rules": [
        {"name": "liked", "metric": "feedback_score", "comparison": "<", "threshold": 0.5,
         "window": "30m", "for": "0s"},
        {"name": "rated", "metric": "feedback_count", "comparison": ">", "threshold": 100,
         "window": "30m"},
    ]})  # fmt: skip
    evaluate_rules(rated, rules, datetime.now(UTC))
    states = {a.rule: a for a in rated.list_alert_states()}
    liked = states["liked"]
    assert liked.value == 1.0 and liked.state not in ("pending", "firing"), liked  # was 0.2
    assert states["rated"].value == 6.0  # was 10


def test_rollout_compare_counts_no_correction(
    rated: Store, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("MODELYARD_STORE_URL", store_url)
    capsys.readouterr()
    assert main(["rollout", "compare", "support", "--json"]) == 0
    by = {v["version"]: v for v in json.loads(capsys.readouterr().out)["versions"]}
    for version in ("bot:1", "bot:2"):
        assert (by[version]["feedback_count"], by[version]["feedback_score"]) == (3, 1.0)


def test_a_feedback_guard_passes_a_target_whose_only_thumbs_down_are_corrections(
    store: Store,
) -> None:
    made = fake_world(store, versions=2, endpoint=None, template=None)
    store.set_alias("bot", "champion", 1)
    store.create_endpoint("support", model_ref="bot@champion", tenant="acme")
    start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=10,
                  guards=["feedback_score >= baseline - 0.05"])  # fmt: skip

    def traffic(version: int, n: int, status: str, http: int) -> list[str]:
        ids = [f"cmpl-{uuid.uuid4().hex}" for _ in range(n)]
        store.add_inference_records(_record(store, rid, version, status, http) for rid in ids)
        return ids

    for rid in traffic(1, 10, "ok", 200):
        store.add_feedback(rid, tenant="acme", score=1.0)
    ctl = Controller(store)
    ctl.tick()
    assert {r.version for r in store.get_endpoint("support").routes if r.weight} == {2}
    for rid in traffic(2, 10, "ok", 200):
        store.add_feedback(rid, tenant="acme", score=1.0)
    # requests the target refused (a client's mistake: no error), each corrected by a person
    for rid in traffic(2, 5, "refused", 400):
        store.add_feedback(rid, tenant="acme", score=-1.0, label="the answer it should have had")
    [after] = ctl.tick()
    assert (after.status, after.reason) == ("succeeded", None), after  # was rolled back
    assert made[1].id in {r.version_id for r in store.get_endpoint("support").routes}


@pytest.fixture
def admin(store_url: str) -> Iterator[Any]:
    """The admin API (a TestClient) over ``rated``'s world on ``store_url``, as ``ops``."""
    from fastapi.testclient import TestClient

    from modelyard.admin import create_admin_app

    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(store_url, actor="ops", audit_key="k" * 40, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        fake_world(ops, versions=2, template=None)
        _rated(ops)
        client = TestClient(create_admin_app(ops), raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {create_actor_token(ops, 'ops')[1]}"
        yield client


def test_the_feedback_summary_counts_no_correction_and_the_list_marks_them(admin: Any) -> None:
    r = admin.get("/feedback/summary", params={"endpoint": "support"})
    assert r.status_code == 200, r.text
    got = [(f["version"], f["count"], f["mean_score"], f["positive"], f["negative"])
           for f in r.json()]  # fmt: skip
    assert got == [("bot:1", 3, 1.0, 3, 0), ("bot:2", 3, 1.0, 3, 0)]  # was 5, 0.2, 3, 2
    listed = admin.get("/feedback", params={"endpoint": "support"}).json()
    counted = {f["record_id"]: f["counted"] for f in listed}
    assert len(counted) == 10
    assert {rid for rid, yes in counted.items() if not yes} == {
        "v1-failed", "v1-refused", "v2-failed", "v2-refused",
    }  # fmt: skip


def test_the_api_says_a_correction_s_score_is_not_counted(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        fake_world(store, versions=1, template=None)
        store.add_inference_records(
            _record(store, name, 1, status, http) for name, status, http, _, _ in FEEDBACK
        )
        key = create_api_key(store, "acme")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server, ExitStack() as stack:
            client = stack.enter_context(
                openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            )
            replies = {}
            for name, _, _, _, label in FEEDBACK:
                body = {"request_id": name, "thumbs": "down"} | ({"label": label} if label else {})
                reply = client.post("/feedback", body=body, cast_to=httpx.Response)
                assert reply.status_code == 200
                replies[name] = reply.json()
    assert {name: r["counted"] for name, r in replies.items()} == {
        "ok-1": True, "ok-2": True, "late": True, "failed": False, "refused": False,
    }  # fmt: skip
    assert replies["failed"]["score"] == -1.0 and replies["failed"]["label"] == "reset the router"
    assert replies["failed"]["object"] == "feedback"


def test_in_the_browser_the_console_counts_no_correction_and_marks_it(
    world: World,  # noqa: F811
    browser: Browser,
) -> None:
    ops = world.store
    version = ops.get_model_version("support", 1).id
    ops.add_inference_records(
        NewInferenceRecord(
            id=name, endpoint_name="acme-support", route="chat.completions", latency_ms=5.0,
            status=status, http_status=http, tenant_id=ops.get_tenant("acme").id,
            version_id=version,
        )
        for name, status, http, _, _ in FEEDBACK
    )  # fmt: skip
    for name, _, _, score, label in FEEDBACK:
        ops.add_feedback(name, tenant="acme", score=score, label=label)
    page, errors = _page(browser, world, "viv")
    _open(page, world, "monitoring")
    row = page.get_by_test_id("feedback").locator("tr", has_text="support:1")
    expect(row).to_contain_text("3 / 0")  # was 3 / 2
    recent = page.get_by_test_id("feedback-recent")
    expect(recent.locator(".pill", has_text="(not counted)")).to_have_count(2)
    assert errors == [], errors
