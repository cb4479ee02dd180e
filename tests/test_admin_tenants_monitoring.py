"""The admin API's tenants and keys, monitoring and audit export, over real HTTP.

A real server (``create_app`` with the admin API mounted, as ``modelyard serve``
does) over a SQLite store, real personal access tokens, requests through httpx;
what the answers say is checked against the store: rows, audit events, and the
same functions the CLI prints (``write_events`` for the export).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.access import authenticate, create_actor_token, create_api_key
from modelyard.admin import ADMIN_PREFIX, create_admin_app
from modelyard.audit import AccessPolicy, write_events
from modelyard.errors import AuthError
from modelyard.monitoring import compute_drift, text_features, update_profiles
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import AlertState, NewInferenceRecord, Store
from worlds import gate_metrics

KEY = "admin-tenants-test-key-admin-tenants"
ACTORS = {"viv": "viewer", "dev": "developer", "dana": "approver"}
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # the traffic's hour


@dataclass
class World:
    store: Store  # acting as ops, the admin
    url: str
    tokens: dict[str, str]
    tenant_key: str
    versions: dict[int, int]  # version number → id

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def ok(self, who: str, path: str, **params: Any) -> Any:
        r = self.call(who, "GET", path, params=params)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    def denied(self, actor: str) -> list[Any]:
        return self.store.list_audit_events(action="permission.denied", actor=actor, limit=None)


def _record(w_versions: dict[int, int], tenant_id: int, i: int, **kw: Any) -> NewInferenceRecord:
    fields: dict[str, Any] = {"id": f"rec-{i}", "endpoint_name": "acme-support",
                              "route": "chat.completions", "latency_ms": 10.0, "status": "ok",
                              "http_status": 200, "tenant_id": tenant_id,
                              "version_id": w_versions[1], "prompt_tokens": 10,
                              "completion_tokens": 5, "created_at": T0} | kw  # fmt: skip
    return NewInferenceRecord(**fields)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key=KEY, policy=policy) as ops:
        ops.add_actor("ops", "admin")
        for name, role in ACTORS.items():
            ops.add_actor(name, role)
        ops.create_tenant("acme", storage_policy="full")
        ops.register_base_model("tiny", "/models/tiny", {"model.safetensors": "ab" * 32})
        ops.create_registered_model("support", tenant="acme")
        made = [
            ops.create_model_version(
                "support", kind="adapter", artifact_digest=digest * 32, base_model="tiny",
                run_id=None, lineage={}, metrics=gate_metrics(True),
            )
            for digest in ("cd", "ef")
        ]  # fmt: skip
        ops.create_endpoint("acme-support", model_ref="support:1", tenant="acme")
        tokens = {name: create_actor_token(ops, name)[1] for name in [*ACTORS, "ops"]}
        tokens["dev-read"] = create_actor_token(ops, "dev", scopes=["read"])[1]
        _, tenant_key = create_api_key(ops, "acme")
        app = create_app(
            ops, EchoEngine(), heartbeat_s=None, mounts={ADMIN_PREFIX: create_admin_app(ops)}
        )
        with BackgroundServer(app) as server:
            yield World(ops, server.base_url + ADMIN_PREFIX, tokens, tenant_key,
                        {v.version: v.id for v in made})  # fmt: skip


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "code", "param"} <= set(body["error"])
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]  # type: ignore[no-any-return]


def _events(store: Store, action: str) -> list[Any]:
    return store.list_audit_events(action=action, limit=None)


# -- tenants and keys ------------------------------------------------------------------------


def test_tenants_and_keys_are_made_listed_rotated_and_revoked_as_the_cli_does(
    world: World,
) -> None:
    r = world.call("dev", "POST", "/tenants", json={"name": "globex", "storage_policy": "hash"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "globex" and r.json()["storage_policy"] == "hash"
    assert world.store.get_tenant("globex").storage_policy == "hash"
    assert _events(world.store, "tenant.created")[0].actor == "dev"
    assert world.call("dev", "POST", "/tenants", json={"name": "globex"}).status_code == 409

    r = world.call("dev", "POST", "/tenants/globex/keys",
                   json={"scopes": ["infer"], "expires_in": "30d", "rpm_limit": 5})  # fmt: skip
    assert r.status_code == 201, r.text
    made = r.json()
    secret = made["key"]
    assert "key_hash" not in made and made["state"] == "active" and made["scopes"] == ["infer"]
    assert made["rpm_limit"] == 5 and made["tpm_limit"] is None
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert authenticate(world.store, secret).tenant == "globex"  # a real key
    created = _events(world.store, "api_key.created")[0]
    assert created.actor == "dev" and created.subject == made["id"]
    assert secret not in json.dumps(created.payload)

    listed = world.call("viv", "GET", "/keys", params={"tenant": "globex"})
    assert listed.status_code == 200 and [k["id"] for k in listed.json()] == [made["id"]]
    assert "key_hash" not in listed.json()[0] and "key" not in listed.json()[0]
    stored = world.store.get_api_key(made["id"])
    assert stored is not None and stored.key_hash not in listed.text
    assert secret.split("_")[-1] not in listed.text

    world.store.set_budget("globex", "day", 12.5)
    world.store.set_retention("globex", 7)
    tenants = {t["name"]: t for t in world.ok("viv", "/tenants")}
    assert set(tenants) == {"acme", "globex"}
    globex = tenants["globex"]
    assert globex["retention_days"] == 7 and globex["keys"] == {"active": 1, "total": 1}
    assert [(b["period"], b["amount"], b["spent"]) for b in globex["budgets"]] == [
        ("day", 12.5, 0.0)
    ]
    shown = world.ok("viv", "/tenants/globex")
    assert [k["id"] for k in shown["key_list"]] == [made["id"]] and secret not in json.dumps(shown)
    assert world.ok("viv", "/budgets", tenant="globex")[0]["used_percent"] == 0.0

    r = world.call("dev", "PATCH", f"/keys/{made['id']}/limits", json={"tpm_limit": 1000})
    assert r.status_code == 200 and (r.json()["rpm_limit"], r.json()["tpm_limit"]) == (5, 1000)
    r = world.call("dev", "PATCH", f"/keys/{made['id']}/limits", json={"rpm_limit": None})
    assert (r.json()["rpm_limit"], r.json()["tpm_limit"]) == (None, 1000)  # null: the default
    assert len(_events(world.store, "api_key.limits_set")) == 2

    r = world.call("dev", "POST", f"/keys/{made['id']}/rotate", json={"grace": "0"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["rotated_from"] == made["id"] and new["key"] != secret
    assert (new["scopes"], new["tpm_limit"]) == (["infer"], 1000)  # same scopes and limits
    assert authenticate(world.store, new["key"]).id == new["id"]
    with pytest.raises(AuthError):  # grace 0: the old key stops at once
        authenticate(world.store, secret)
    old = {k["id"]: k for k in world.ok("viv", "/keys")}[made["id"]]
    assert old["rotated_to"] == new["id"] and old["state"] == "expired"
    assert _events(world.store, "api_key.rotated")[0].actor == "dev"
    _error(world.call("dev", "POST", f"/keys/{made['id']}/rotate"), 409)  # rotated already

    r = world.call("dev", "POST", f"/keys/{new['id']}/revoke")
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert world.store.get_api_key(new["id"]).revoked_at is not None  # type: ignore[union-attr]
    revoked = _events(world.store, "api_key.revoked")[0]
    assert (revoked.actor, revoked.subject) == ("dev", new["id"])
    with pytest.raises(AuthError):
        authenticate(world.store, new["key"])
    assert world.store.verify_audit_chain().ok


def test_bad_tenant_and_key_input_is_a_400_naming_the_field(world: World) -> None:
    for body, param in (
        ({"name": "Not A Name"}, "name"),
        ({"name": "ok", "storage_policy": "everything"}, "storage_policy"),
        ({"name": "ok", "colour": "red"}, "colour"),
    ):
        _error(world.call("dev", "POST", "/tenants", json=body), 400, param)
    bodies: list[tuple[dict[str, Any], str]] = [
        ({"scopes": ["admin"]}, "scopes.0"),
        ({"scopes": []}, "scopes"),
        ({"expires_in": "forever"}, "expires_in"),
        ({"expires_in": "99999999999999999999d"}, "expires_in"),
        ({"rpm_limit": 0}, "rpm_limit"),
    ]
    for key_body, param in bodies:
        _error(world.call("dev", "POST", "/tenants/acme/keys", json=key_body), 400, param)
    _error(world.call("dev", "POST", "/tenants/nobody/keys", json={}), 404)
    _error(world.call("dev", "POST", "/keys/nokey/revoke"), 404)
    _error(world.call("dev", "POST", "/keys/nokey/rotate", json={"grace": "1h"}), 404)
    _error(world.call("dev", "PATCH", "/keys/nokey/limits", json={"rpm_limit": 3}), 404)
    _error(world.call("dev", "POST", "/keys/nokey/rotate", json={"grace": "-1h"}), 400, "grace")
    _error(world.call("viv", "GET", "/tenants/nobody"), 404)
    assert world.store.list_tenants()[0].name == "acme" and len(world.store.list_tenants()) == 1


# -- roles and scopes ------------------------------------------------------------------------

READS = [
    "/tenants", "/tenants/acme", "/keys", "/budgets", "/profiles?window=day", "/drift",
    "/alerts", "/feedback", "/feedback/summary", "/endpoints/acme-support/series",
    "/endpoints/acme-support/drift?reference=previous:1h", "/audit/export",
]  # fmt: skip


def test_a_viewer_reads_gets_403_on_changes_and_a_tenant_key_gets_401(world: World) -> None:
    key, _ = create_api_key(world.store, "acme")
    for path in READS:
        r = world.call("viv", "GET", path)
        assert r.status_code == 200, (path, r.text)
        plain = httpx.get(
            world.url + path, headers={"Authorization": f"Bearer {world.tenant_key}"}, timeout=60
        )  # a busy machine (CI: vLLM beside it) answers slowly
        assert plain.status_code == 401, path
        assert "tenant's API key does not open the admin API" in _error(plain, 401)["message"]
    changes: list[tuple[str, str, Any]] = [
        ("POST", "/tenants", {"name": "initech"}),
        ("POST", "/tenants/acme/keys", {}),
        ("POST", f"/keys/{key.id}/revoke", None),
        ("POST", f"/keys/{key.id}/rotate", {"grace": "1h"}),
        ("PATCH", f"/keys/{key.id}/limits", {"rpm_limit": 7}),
    ]
    for method, path, body in changes:
        r = world.call("viv", method, path, json=body)
        assert _error(r, 403)["type"] == "permission_error", (method, path)
    denied = world.denied("viv")
    assert len(denied) == len(changes)  # each refusal on the chain, as viv
    assert {e.payload["attempted"] for e in denied} == {
        "tenant.created", "api_key.created", "api_key.revoked", "api_key.rotated",
        "api_key.limits_set",
    }  # fmt: skip
    assert [t.name for t in world.store.list_tenants()] == ["acme"]
    assert len(world.store.list_api_keys("acme")) == 2  # the fixture's and this test's
    assert world.store.get_api_key(key.id).revoked_at is None  # type: ignore[union-attr]
    # a developer's read-only token: a change is 403 for its scope, audited as dev
    r = world.call("dev-read", "POST", "/tenants", json={"name": "initech"})
    assert "needs scope write" in _error(r, 403)["message"]
    assert world.denied("dev")[0].payload["required_scope"] == "write"
    assert world.call("dev-read", "GET", "/tenants").status_code == 200
    assert world.call(None, "GET", "/tenants").status_code == 401


# -- monitoring ------------------------------------------------------------------------------


def test_the_traffic_series_buckets_requests_errors_and_latency_per_version(
    world: World,
) -> None:
    tid = world.store.get_tenant("acme").id
    v2 = world.versions[2]
    records = [  # 09:00-09:01: v1 latencies 1..20 ms, two errors; v2 one request
        _record(world.versions, tid, i, latency_ms=float(i + 1),
                created_at=T0 + timedelta(seconds=2 * i),
                status="error" if i < 2 else "ok", http_status=500 if i < 2 else 200)
        for i in range(20)
    ]  # fmt: skip
    records += [
        _record(world.versions, tid, 100, version_id=v2, latency_ms=70.0,
                created_at=T0 + timedelta(seconds=5)),
        # 09:02: a timeout, a client's mistake (not an error), one still running (left out)
        _record(world.versions, tid, 101, created_at=T0 + timedelta(minutes=2), status="timeout",
                http_status=504, latency_ms=900.0),
        _record(world.versions, tid, 102, created_at=T0 + timedelta(minutes=2, seconds=1),
                status="refused", http_status=400, latency_ms=1.0),
        _record(world.versions, tid, 103, created_at=T0 + timedelta(minutes=2, seconds=2),
                status="running", http_status=0, latency_ms=0.0),
        # a shadow copy on v2, and a record before the window
        _record(world.versions, tid, 104, version_id=v2, shadow=True, latency_ms=40.0,
                created_at=T0 + timedelta(minutes=1)),
        _record(world.versions, tid, 105, created_at=T0 - timedelta(minutes=10)),
    ]  # fmt: skip
    world.store.add_inference_records(records)
    end = (T0 + timedelta(minutes=3)).isoformat()
    body = world.ok("viv", "/endpoints/acme-support/series", window="3m", bucket=60, end=end)
    assert (body["bucket_s"], body["buckets"]) == (60, 3)
    assert body["start"] == T0.isoformat()
    series = {(s["version"], s["shadow"]): s for s in body["series"]}
    assert set(series) == {("support:1", False), ("support:2", False), ("support:2", True)}
    v1 = series[("support:1", False)]
    assert (v1["requests"], v1["errors"]) == (22, 3)
    first, second, third = v1["points"]
    assert first == {  # the latency of the 18 answered ok: 3..20 ms
        "start": T0.isoformat(), "requests": 20, "errors": 2,
        "latency_p50_ms": 11.0, "latency_p95_ms": 20.0, "latency_p99_ms": 20.0,
    }  # fmt: skip
    assert second["requests"] == 0 and second["latency_p50_ms"] is None  # a dense series
    # a timeout and a refusal: none answered ok, no latency (900 ms and 1 ms were)
    assert (third["requests"], third["errors"], third["latency_p99_ms"]) == (2, 1, None)
    assert [p["requests"] for p in series[("support:2", False)]["points"]] == [1, 0, 0]
    assert [p["requests"] for p in series[("support:2", True)]["points"]] == [0, 1, 0]
    # a smaller bucket: the first minute in 30 s halves, the window not aligned
    halves = world.ok("viv", "/endpoints/acme-support/series", window="90s", bucket=30,
                      end=(T0 + timedelta(seconds=75)).isoformat())  # fmt: skip
    (v1,) = [s for s in halves["series"] if s["version"] == "support:1"]
    # 08:59:30, 09:00:00, 09:00:30 and 09:01:00 (to 09:01:15: the last bucket is partial)
    assert [p["requests"] for p in v1["points"]] == [0, 15, 5, 0]
    assert halves["start"] == (T0 - timedelta(seconds=30)).isoformat()
    # bad input: 400 naming the field, an unknown endpoint 404
    path = "/endpoints/acme-support/series"
    _error(world.call("viv", "GET", path, params={"window": "1d", "bucket": 1}), 400, "bucket")
    _error(world.call("viv", "GET", path, params={"bucket": 0}), 400, "bucket")
    _error(world.call("viv", "GET", path, params={"window": "soon"}), 400, "window")
    _error(world.call("viv", "GET", path, params={"window": "90d"}), 400, "window")
    _error(world.call("viv", "GET", path, params={"end": "yesterday"}), 400, "end")
    _error(world.call("viv", "GET", "/endpoints/nowhere/series"), 404)


def test_drift_is_computed_as_monitor_drift_computes_it_and_not_stored(world: World) -> None:
    tid = world.store.get_tenant("acme").id
    items = []
    for i in range(60):  # the hour before: short prompts; the last hour: long ones
        before = i < 30
        prompt = "hi there" if before else "please summarise this long claim " * (5 + i % 3)
        at = T0 + timedelta(minutes=i * 2 - 120 + 1)  # 07:01 to 08:59, every 2 minutes
        items.append((_record(world.versions, tid, i, created_at=at, prompt=prompt),
                      text_features(prompt, "ok")))  # fmt: skip
    world.store.add_monitored_records(items)
    params = {"reference": "previous:1h", "window": "1h", "end": T0.isoformat(),
              "min_samples": 10}  # fmt: skip
    body = world.ok("viv", "/endpoints/acme-support/drift", **params)
    expected = compute_drift(world.store, "acme-support", reference="previous:1h",
                             window=timedelta(hours=1), now=T0, save=False,
                             config=_config(10))  # fmt: skip
    assert body["version"] == "support:1" and body["reference"] == "previous:1h"
    assert "prompt_chars" in body["drifted_features"]
    assert body["drifted_features"] == expected.drifted_features
    got = {f["feature"]: f for f in body["features"]}
    for r in expected.results:
        assert got[r.feature]["status"] == r.status and got[r.feature]["n_current"] == r.n_current
    assert world.store.list_drift_results() == []  # answered, not stored
    # the stored runs: what monitor drift (or the loop) saved
    compute_drift(world.store, "acme-support", reference="previous:1h",
                  window=timedelta(hours=1), now=T0, config=_config(10))  # fmt: skip
    runs = world.ok("viv", "/drift", endpoint="acme-support", latest="true")
    assert {r["feature"] for r in runs} == set(got) and runs[0]["version"] == "support:1"
    # bad input: 400 naming the field
    path = "/endpoints/acme-support/drift"
    _error(world.call("viv", "GET", path), 400, "reference")  # no eval dataset in its lineage
    bad: list[tuple[dict[str, Any], str]] = [
        ({"reference": "yesterday"}, "reference"),
        ({"reference": "previous:forever"}, "reference"),
        ({"reference": "baseline:2026-01-01/nope"}, "reference"),
        ({"reference": "previous:1h", "window": "10y"}, "window"),
        ({"reference": "previous:1h", "method": "prompt_chars=magic"}, "method"),
        ({"reference": "previous:1h", "threshold": "nosuch=1"}, "threshold"),
        ({"reference": "previous:1h", "min_samples": 1}, "min_samples"),
        ({"reference": "previous:1h", "version": "two"}, "version"),
    ]
    for query, param in bad:
        _error(world.call("viv", "GET", path, params=query), 400, param)
    _error(world.call("viv", "GET", "/endpoints/nowhere/drift?reference=previous:1h"), 404)


def _config(min_samples: int) -> Any:
    from modelyard.monitoring import DriftConfig

    return DriftConfig(min_samples=min_samples)


def test_profiles_alerts_and_feedback_read_what_the_monitor_recorded(world: World) -> None:
    tid = world.store.get_tenant("acme").id
    world.store.add_inference_records(
        [_record(world.versions, tid, i, latency_ms=float(10 * (i + 1)),
                 created_at=T0 + timedelta(minutes=i)) for i in range(4)]
    )  # fmt: skip
    for i, score in enumerate((1.0, 1.0, -1.0)):
        world.store.add_feedback(f"rec-{i}", tenant="acme", score=score, comment=f"c{i}")
    update_profiles(world.store)
    (hour,) = world.ok("viv", "/profiles", endpoint="acme-support")
    assert hour["start"] == T0.isoformat() and hour["requests"] == 4
    assert hour["version"] == "support:1" and hour["error_rate"] == 0.0
    assert hour["feedback_count"] == 3 and hour["feedback_mean"] == pytest.approx(1 / 3)
    assert world.ok("viv", "/profiles", window="day")[0]["requests"] == 4
    assert world.ok("viv", "/profiles", since=(T0 + timedelta(hours=2)).isoformat()) == []

    listed = world.ok("viv", "/feedback", endpoint="acme-support")
    assert sorted(f["comment"] for f in listed) == ["c0", "c1", "c2"]
    assert {f["version"] for f in listed} == {"support:1"}
    (summary,) = world.ok("viv", "/feedback/summary", tenant="acme")
    assert (summary["count"], summary["positive"], summary["negative"]) == (3, 2, 1)
    assert summary["mean_score"] == pytest.approx(1 / 3) and summary["version"] == "support:1"
    assert world.ok("viv", "/feedback/summary", endpoint="nowhere") == []
    _error(world.call("viv", "GET", "/feedback", params={"tenant": "nobody"}), 404)
    _error(world.call("viv", "GET", "/feedback", params={"limit": 0}), 400, "limit")

    now = datetime.now(UTC)
    world.store.save_alert_state(AlertState(
        id="a1", rule="errors-high", labels={"endpoint": "acme-support"}, severity="critical",
        state="firing", value=0.2, summary="error rate 20%", active_since=now, fired_at=now,
        resolved_at=None, last_evaluated=now,
    ))  # fmt: skip
    (firing,) = world.ok("viv", "/alerts", state="firing")
    assert (firing["rule"], firing["labels"], firing["value"]) == (
        "errors-high", {"endpoint": "acme-support"}, 0.2,
    )  # fmt: skip
    assert world.ok("viv", "/alerts", state="resolved") == []
    _error(world.call("viv", "GET", "/alerts", params={"state": "angry"}), 400, "state")
    _error(world.call("viv", "GET", "/profiles", params={"window": "week"}), 400, "window")


# -- audit export ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_audit_export_is_what_modelyard_audit_export_writes(
    world: World, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.admin import _audit

    monkeypatch.setattr(_audit, "EXPORT_PAGE", 3)  # several pages, in this small chain
    for i in range(4):
        world.store.set_retention("acme", i + 1)
    expected = io.StringIO()
    count = write_events(world.store.iter_audit_events(), fmt, expected)  # type: ignore[arg-type]
    assert count > 7
    r = world.call("viv", "GET", "/audit/export", params={"format": fmt})
    assert r.status_code == 200, r.text
    assert r.text == expected.getvalue()
    assert r.headers["content-disposition"] == f'attachment; filename="audit.{fmt}"'
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(r.text)))
        assert len(rows) == count + 1 and rows.count(rows[0]) == 1  # one header
    since = world.store.list_audit_events(action="retention.set", limit=None)[-1].time
    later = world.call(
        "viv", "GET", "/audit/export", params={"format": fmt, "since": since.isoformat()}
    )
    subset = io.StringIO()
    write_events(world.store.iter_audit_events(since=since), fmt, subset)  # type: ignore[arg-type]
    assert later.text == subset.getvalue() and "retention.set" in later.text
    _error(world.call("viv", "GET", "/audit/export", params={"format": "xml"}), 400, "format")
    # a naive time is UTC, as on the command line (not a 500)
    naive = since.replace(tzinfo=None).isoformat()
    assert world.call("viv", "GET", "/audit/events", params={"since": naive}).status_code == 200


def test_the_series_and_feedback_queries_agree_on_sqlite_and_postgresql(store: Store) -> None:
    """``Store.traffic_series`` and ``feedback_summary`` are one grouped query each, in
    each database's SQL (epoch seconds differ): the same answers on both."""
    from worlds import fake_world

    fake_world(store, model="support", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    versions = {1: store.get_model_version("support", 1).id}
    at = T0 + timedelta(seconds=30, microseconds=500_000)  # mid-bucket, with a fraction
    store.add_inference_records(
        [_record(versions, tid, i, latency_ms=float(100 - i), created_at=at + timedelta(seconds=i),
                 status="timeout" if i == 0 else "ok") for i in range(100)]
    )  # fmt: skip
    points = store.traffic_series(
        "acme-support", since=T0, until=T0 + timedelta(hours=1), bucket_s=60
    )
    assert [(p.start, p.requests, p.errors) for p in points] == [
        (T0, 30, 1), (T0 + timedelta(minutes=1), 60, 0), (T0 + timedelta(minutes=2), 10, 0),
    ]  # fmt: skip
    first = points[0]  # answered ok in 71..99 ms (the timeout's 100 ms is no latency)
    assert (first.latency_p50_ms, first.latency_p95_ms, first.latency_p99_ms) == (85, 98, 99)
    assert first.version == "support:1" and not first.shadow
    for i, score in enumerate((1.0, -0.5, 0.0)):
        store.add_feedback(f"rec-{i}", tenant="acme", score=score)
    (summary,) = store.feedback_summary(endpoint="acme-support")
    assert (summary.count, summary.positive, summary.negative) == (3, 1, 1)
    assert summary.mean_score == pytest.approx(1 / 6) and summary.last_at is not None
    assert summary.last_at.tzinfo is not None
