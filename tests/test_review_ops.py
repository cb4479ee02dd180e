"""Watching and proving, attacked as a demanding SRE and auditor would: bad windows and
dates for drift and the report, report paths that cannot be written, the report's
timeline on a busy chain, and the admin API's answers to malformed bodies, loosely typed
values and query parameters it does not read.

Every defect here was found by hand first (a traceback, a silently ignored parameter, a
wrong field in an error); each test failed before its fix.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from clihelp import modelyard
from modelyard.access import PeopleAuthenticator, create_actor_token
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy, csv_value, write_events
from modelyard.console import CONSOLE_PREFIX, ConsoleSessions, create_console_app
from modelyard.errors import ConfigError, ModelVersionNotFound
from modelyard.monitoring import AlertRules, evaluate_rules, text_features, write_report
from modelyard.registry import version_card
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world, home_store

# -- the CLI: drift and the report ----------------------------------------------------------


@pytest.fixture
def ops_home(tmp_path: Path) -> Path:
    """A home with model ``bot`` (2 versions), endpoint ``support`` and an hour of records
    with features, as the record writer stores them."""
    home = tmp_path / "home"
    home.mkdir()
    with home_store(home) as store:
        versions = fake_world(store)
        tenant = store.get_tenant("acme")
        now = datetime.now(UTC)
        rng = random.Random(7)
        items = []
        for i in range(60):
            prompt = "hello " * rng.randint(1, 20)
            record = NewInferenceRecord(
                id=f"r{i}", endpoint_name="support", route="chat.completions",
                latency_ms=rng.uniform(5, 50), status="ok", http_status=200,
                tenant_id=tenant.id, version_id=versions[0].id, prompt_tokens=10,
                completion_tokens=3, created_at=now - timedelta(minutes=rng.uniform(1, 50)),
                prompt=prompt, response="auto",
            )  # fmt: skip
            items.append((record, text_features(prompt, "auto")))
        store.add_monitored_records(items)
    return home


def _one_line_error(result: Any, *needles: str) -> str:
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    assert result.err.startswith("error: "), result.err
    for needle in needles:
        assert needle in result.err, result.err
    return str(result.err)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--window", "999999d"], ["window", "before 1970", "shorter"]),
        (["--reference", "previous:999999d"], ["reference previous:999999d", "before 1970"]),
        (["--reference", "previous:24h", "--end", "2099-01-01"], ["in the future", "2099-01-01"]),
        (
            ["--reference", "baseline:2026-12-02T00:00/2026-12-01T00:00"],
            ["start must be before its end"],
        ),
    ],
    ids=["window-too-long", "reference-too-long", "end-in-future", "baseline-reversed"],
)
def test_drift_windows_that_cannot_hold_records_are_one_line_and_exit_2(
    ops_home: Path, args: list[str], needles: list[str]
) -> None:
    before = _drift_runs(ops_home)
    result = modelyard("monitor", "drift", "--endpoint", "support", *args, home=ops_home)
    _one_line_error(result, *needles)
    assert _drift_runs(ops_home) == before  # nothing stored


def _drift_runs(home: Path) -> int:
    with home_store(home) as store:
        return len(store.list_drift_results(endpoint="support", limit=10_000))


def test_the_report_refuses_a_directory_a_file_as_parent_a_missing_one_and_a_future_start(
    ops_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    result = modelyard("monitor", "report", "--endpoint", "support", "--out", str(folder),
                       home=ops_home)  # fmt: skip
    _one_line_error(result, "is a directory", str(folder / "report.html"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    result = modelyard("monitor", "report", "--endpoint", "support",
                       "--out", str(a_file / "r.html"), home=ops_home)  # fmt: skip
    _one_line_error(result, "is not a directory", "--out")
    assert a_file.read_text() == "keep me"
    missing = tmp_path / "no-such-dir" / "r.html"  # refused as every other --out refuses it
    result = modelyard("monitor", "report", "--endpoint", "support", "--out", str(missing),
                       home=ops_home)  # fmt: skip
    _one_line_error(result, "does not exist", "--out")
    assert not missing.parent.exists()
    out = tmp_path / "r.html"
    result = modelyard("monitor", "report", "--endpoint", "support", "--out", str(out),
                       "--since", "2099-01-01", home=ops_home)  # fmt: skip
    _one_line_error(result, "in the future", "7d")
    assert not out.exists()
    result = modelyard("monitor", "report", "--endpoint", "support", "--out", str(out),
                       home=ops_home)  # fmt: skip
    assert result.code == 0, result.err
    assert "<svg" in out.read_text()


def test_the_report_timeline_shows_the_newest_events_of_its_model_only(tmp_path: Path) -> None:
    """On a busy chain the timeline kept the *oldest* 500 events of the period (the newest
    alias move was missing), and a model whose name merely starts the same (``bot-old``)
    had its events shown as this model's."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store)
        store.create_registered_model("bot-old", tenant="acme")
        store.create_model_version(
            "bot-old", kind="adapter", artifact_digest="11" * 32, base_model="tiny",
            run_id=None, lineage={}, metrics={},
        )  # fmt: skip
        store.set_alias("bot-old", "legacy", 1)
        store.create_registered_model("busy", tenant="acme")
        store.create_model_version(
            "busy", kind="adapter", artifact_digest="22" * 32, base_model="tiny",
            run_id=None, lineage={}, metrics={},
        )  # fmt: skip
        for i in range(510):  # another model's events fill the period
            store.set_version_tags("busy:1", {"n": str(i)})
        store.set_alias("bot", "staging", 2)  # the newest event about this model
        out = write_report(store, "support", tmp_path / "report.html",
                           since=datetime.now(UTC) - timedelta(days=1))  # fmt: skip
    page = out.read_text()
    timeline = page.split("<h2>Versions and rollouts</h2>", 1)[1]
    assert "bot@staging" in timeline
    assert "bot-old" not in timeline
    assert "busy" not in timeline


# -- the admin API ---------------------------------------------------------------------------

KEY = "review-ops-test-key-review-ops-test"


@dataclass
class Api:
    store: Store
    url: str  # the admin API's
    tokens: dict[str, str]
    base: str  # the server's

    def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url, actor="ops", audit_key=KEY,
                    policy=AccessPolicy(bootstrap_admin="ops")) as ops:  # fmt: skip
        ops.add_actor("ops", "admin")
        ops.add_actor("dev", "developer")
        ops.add_actor("viv", "viewer")
        fake_world(ops, endpoint="acme-support")
        tokens = {name: create_actor_token(ops, name)[1] for name in ("dev", "viv", "ops")}
        people = PeopleAuthenticator(ops)
        sessions = ConsoleSessions(people, secure=False)
        mounts = {ADMIN_PREFIX: create_admin_app(ops, people, sessions),
                  CONSOLE_PREFIX: create_console_app(ops, sessions)}  # fmt: skip
        app = create_app(ops, EchoEngine(), heartbeat_s=None, mounts=mounts)
        with BackgroundServer(app) as server:
            yield Api(ops, server.base_url + ADMIN_PREFIX, tokens, server.base_url)


def _error(r: httpx.Response, param: str, *needles: str) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    for needle in needles:
        assert needle in error["message"], error
    return str(error["message"])


def test_a_body_that_is_not_json_or_not_an_object_is_a_400_that_says_so(api: Api) -> None:
    path = "/models/bot/aliases/staging"
    json_type = {"content-type": "application/json"}
    r = api.call("dev", "PUT", path, content=b'{"version": 1', headers=json_type)
    _error(r, "body", "not valid JSON", "Content-Type: application/json")
    r = api.call("dev", "PUT", path, content=b"[1]", headers=json_type)
    _error(r, "body", "must be a JSON object")
    r = api.call("dev", "PUT", path, content=b'{"version": 1}',
                 headers={"content-type": "text/plain"})  # fmt: skip
    _error(r, "body", "Content-Type: application/json")
    assert api.store.list_audit_events(action="alias.set", limit=None) == []


@pytest.mark.parametrize("version", [True, "2"])
def test_an_alias_version_must_be_a_json_integer(api: Api, version: Any) -> None:
    """``{"version": true}`` moved the alias to version 1, ``"2"`` to version 2."""
    r = api.call("dev", "PUT", "/models/bot/aliases/staging", json={"version": version})
    _error(r, "version", "integer")
    assert api.store.list_audit_events(action="alias.set", limit=None) == []
    r = api.call("dev", "PUT", "/endpoints/acme-support/traffic",
                 json={"weights": {"1": "50", "2": "50"}})  # fmt: skip
    _error(r, "weights.1", "integer")


def test_a_query_parameter_a_route_does_not_read_is_a_400_naming_it(api: Api) -> None:
    """A misspelt filter (``endpont=``) was ignored: the answer covered every endpoint."""
    r = api.call("viv", "GET", "/rollouts", params={"endpont": "acme-support"})
    _error(r, "endpont", "unknown query parameter", "endpoint")
    r = api.call("viv", "GET", "/audit/events", params={"cursor": "abc", "limit": 5})
    _error(r, "cursor", "unknown query parameter", "since")
    r = api.call("viv", "GET", "/whoami", params={"as": "ops"})
    _error(r, "as", "no query parameters")
    for path, params in [  # what the console and the remote CLI send still works
        ("/rollouts", {"active": "true", "limit": "200"}),
        ("/drift", {"latest": "true"}),
        ("/feedback", {"limit": "10"}),
        ("/audit/events", {"action": "alias.*", "actor": "ops", "limit": "100"}),
        ("/endpoints/acme-support/series", {"window": "15m"}),
        ("/models", {"tenant": "acme"}),
    ]:
        r = api.call("viv", "GET", path, params=params)
        assert r.status_code == 200, (path, r.text)


def test_bad_verify_head_and_a_future_drift_end_name_their_parameter(api: Api) -> None:
    r = api.call("viv", "GET", "/audit/verify", params={"head": "garbage"})
    _error(r, "head", "SEQ:HASH")
    r = api.call("viv", "GET", "/endpoints/acme-support/drift",
                 params={"reference": "previous:24h", "end": "2099-01-01T00:00:00Z"})  # fmt: skip
    _error(r, "end", "in the future")
    r = api.call("viv", "GET", "/endpoints/acme-support/series",
                 params={"end": "2099-01-01T00:00:00Z"})  # fmt: skip
    _error(r, "end", "in the future")  # was a 200 with an empty series


def test_a_console_login_that_names_an_actor_is_refused_not_ignored(api: Api) -> None:
    """``{"token": <a developer's>, "actor": "ops"}`` logged in as the developer, the
    ``actor`` silently dropped: whoever sent it was not told that nobody names the actor."""
    with httpx.Client(base_url=api.base + CONSOLE_PREFIX, timeout=60) as client:
        csrf = client.get("/api/login").json()["csrf_token"]
        r = client.post("/api/login", json={"token": api.tokens["dev"], "actor": "ops"},
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "actor", r.text
        assert "only 'token'" in r.json()["error"]["message"]
        assert "modelyard_session" not in r.cookies
        r = client.post("/api/login", content=b"[]", headers={"X-CSRF-Token": csrf,
                        "content-type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "body", r.text
        assert api.store.list_audit_events(action="console.login", limit=None) == []
        r = client.post("/api/login", json={"token": api.tokens["dev"]},
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert r.status_code == 200 and r.json()["actor"] == "dev", r.text


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("rules:\n  - {name: a, metric: error_rate, window: 999999d, threshold: 0.1}\n",
         "rules.0.window"),
        ("rules:\n  - {name: a, metric: error_rate, for: 99999d, threshold: 0.1}\n",
         "rules.0.for"),
        ("drift: {window: 999999d}\nrules: []\n", "drift.window"),
        ("drift: {reference: 'previous:9999d'}\nrules: []\n", "drift.reference"),
    ],
)  # fmt: skip
def test_alert_rules_with_windows_over_a_year_are_refused_when_loaded(
    ops_home: Path, tmp_path: Path, yaml_text: str, field: str
) -> None:
    """A rule's ``window: 999999d`` loaded, then every evaluation died with a traceback
    (OverflowError); a drift window that long was skipped on every tick."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        AlertRules.load(rules)
    assert caught.value.context["field"] == field
    assert "at most 366 days" in caught.value.message
    if field == "rules.0.window":
        result = modelyard("monitor", "alerts", "--evaluate", "--rules", str(rules),
                           home=ops_home)  # fmt: skip
        _one_line_error(result, "rules.0.window", "too long")


def test_the_csv_export_cannot_run_a_formula_in_the_auditors_spreadsheet(tmp_path: Path) -> None:
    """An actor named ``=HYPERLINK(...)`` (the CLI takes any --actor; an IdP's claim can be
    anything) was written as is: a spreadsheet opening the export ran it. Escaped cells
    turn back into the exact values (the JSONL export's) with ``csv_value``."""
    evil = '=HYPERLINK("http://evil.example","x")'
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}", actor=evil) as store:
        store.create_tenant("acme")
        store.record_audit_event("note.added", "-1+1", {"text": "@SUM(A1)"})
        events = store.list_audit_events(limit=None, newest_first=False)
    out = io.StringIO()
    write_events(events, "csv", out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))[1:]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert rows[0][2] == "'" + evil
    jsonl = io.StringIO()
    write_events(events, "jsonl", jsonl)
    for row, line in zip(rows, jsonl.getvalue().splitlines(), strict=True):
        exact = json.loads(line)
        back = [csv_value(cell) for cell in row]
        assert back[2:5] == [exact["actor"], exact["action"], exact["subject"]]
        assert json.loads(back[5]) == exact["payload"] and back[7] == exact["hash"]


def test_an_alert_rule_for_an_endpoint_that_does_not_exist_says_so_and_keeps_no_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo (``endpoint: acme-suport``) made an alert that stayed 'inactive, no data'
    forever, exported to Prometheus like a healthy one, and never paged anyone."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store)
        rules = AlertRules.parse({"rules": [
            {"name": "typo", "metric": "error_rate", "endpoint": "suport", "threshold": 0.1},
            {"name": "real", "metric": "error_rate", "endpoint": "support", "threshold": 0.1},
        ]})  # fmt: skip
        with caplog.at_level("WARNING", logger="modelyard.alerts"):
            evaluate_rules(store, rules, datetime.now(UTC))
        assert [a.rule for a in store.list_alert_states()] == ["real"]
    assert "names endpoint 'suport', which does not exist" in caplog.text
    assert "support" in caplog.text  # the endpoints there are


def test_a_card_asked_for_by_an_endpoints_name_says_which_model_it_serves(
    tmp_path: Path,
) -> None:
    """``registry card acme-support@champion`` (the endpoint's name, as the on-call knows
    it) said only "no registered model named 'acme-support'"."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        fake_world(store, endpoint="acme-support")
        store.set_alias("bot", "champion", 2)
        with pytest.raises(ModelVersionNotFound) as caught:
            version_card(store, "acme-support@champion")
        assert "'acme-support' is an endpoint, serving bot:1" in caught.value.message
        assert "modelyard registry card bot@champion" in caught.value.hint
        with pytest.raises(ModelVersionNotFound) as caught:
            version_card(store, "acme-support:2")
        assert "registry card bot:2" in caught.value.hint
        with pytest.raises(ModelVersionNotFound) as caught:  # a model's missing alias: as before
            version_card(store, "bot@nope")
        assert "endpoint" not in caught.value.one_line()
        assert version_card(store, "bot@champion")[0].version == 2


def test_a_viewer_cannot_stop_every_audited_change_with_a_made_up_verify_head(api: Api) -> None:
    """``GET /audit/verify?head=1:000…`` by a viewer recorded a break, and from then on the
    store refused every audited change (an alias move was a 500) until an admin
    acknowledged it: one GET with a read token froze the platform."""
    made_up = "1:" + "0" * 64
    r = api.call("viv", "GET", "/audit/verify", params={"head": made_up})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False and r.json()["first_bad_seq"] == 1
    assert "differs from the head given with --head" in r.json()["reason"]  # the viewer is told
    assert api.store.open_audit_breaks() == []  # and nothing is recorded
    r = api.call("dev", "PUT", "/models/bot/aliases/staging", json={"version": 2})
    assert r.status_code == 200, r.text
    head = api.store.audit_head()
    r = api.call("viv", "GET", "/audit/verify", params={"head": str(head)})
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    # An admin's head is recorded, as `modelyard audit verify --head` records it.
    r = api.call("ops", "GET", "/audit/verify", params={"head": made_up})
    assert r.status_code == 200 and r.json()["ok"] is False, r.text
    assert [b.seq for b in api.store.open_audit_breaks()] == [1]
