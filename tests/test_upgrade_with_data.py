"""Upgrading modelyard on a store that holds data: nothing is lost, and the migrations that
move or compute data do what they say.

Each test builds a store at an early revision with Alembic, fills it with rows as the
modelyard of that revision wrote them (raw inserts of that revision's columns, read from
its migration files; audit events chained with the HMAC of docs/audit.md, seals encoded
as the record writer of 0016/0017 encoded them), then upgrades it with the command an
operator runs (``modelyard init``) and reads it back through the CLI.

- from 0001: registry, keys, an endpoint with a split traffic plan, records (0006 rebuilds
  ``endpoints`` and ``inference_records`` on SQLite; 0012 marks old records ``api``);
- from 0005: an audit chain (0009 records its head), feedback, record features (0007
  copies the record columns onto them), profiles, drift, alerts, prices, retention;
- from 0017: sealed records with ``seal``/``seal_pos`` and anchored seals with
  ``anchor_seq`` (0018 drops the three columns: verification and proofs must find the
  seals from their index rows), judges, budgets, tokens, feedback labels, batch records.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Connection, create_engine

from clihelp import Result, modelyard
from modelyard.access import authenticate
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._engine import _alembic_config, head_revision

AUDIT_KEY = "5e" * 32
GENESIS = "0" * 64


# -- rows as an older modelyard wrote them ---------------------------------------------------


def _type_of(value: Any) -> sa.types.TypeEngine[Any] | None:
    if isinstance(value, datetime):
        return sa.DateTime(timezone=True)
    if isinstance(value, dict | list):
        return sa.JSON()
    if isinstance(value, bytes):
        return sa.LargeBinary()
    if isinstance(value, bool):
        return sa.Boolean()
    return None


# Tables whose integer ids the database numbers (a sequence on PostgreSQL): modelyard never
# gave one, so neither do these inserts (the sequence must move on, as it did then).
NUMBERED = {
    "tenants",
    "base_models",
    "registered_models",
    "model_versions",
    "endpoints",
    "monitor_profiles",
    "drift_results",
    "alert_notifications",
    "budgets",
    "judgements",
    "rollout_events",
}


def put(conn: Connection, name: str, *rows: Mapping[str, Any]) -> None:
    """INSERT ``rows`` into table ``name``: exactly the columns given, bound with the
    types of that revision's columns (times, JSON, bytes, booleans). In a ``NUMBERED``
    table the rows' ``id`` is what the database must give them (checked), not inserted."""
    numbered = name in NUMBERED
    plain = [{k: v for k, v in r.items() if not (numbered and k == "id")} for r in rows]
    columns: dict[str, Any] = {}
    for row in plain:
        for key, value in row.items():
            if columns.get(key) is None:
                columns[key] = _type_of(value)
    table = sa.table(name, *(sa.column(k, t) for k, t in columns.items()))
    if not numbered:
        conn.execute(sa.insert(table), plain)
        return
    for given, one in zip(rows, plain, strict=True):
        conn.execute(sa.insert(table), [one])
        last = conn.execute(sa.text(f"SELECT max(id) FROM {name}")).scalar_one()
        assert last == given["id"], (name, given["id"], last)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass
class Chain:
    """The audit chain as modelyard appended to it since 0002 (docs/audit.md):
    ``hash = HMAC-SHA256(key, prev_hash + canonical_json({seq, time, actor, action,
    subject, payload}))``."""

    key: bytes = bytes.fromhex(AUDIT_KEY)
    seq: int = 0
    head: str = GENESIS

    def append(
        self,
        conn: Connection,
        at: datetime,
        actor: str,
        action: str,
        subject: str,
        payload: Mapping[str, Any],
    ) -> int:
        self.seq += 1
        body: dict[str, Any] = {
            "seq": self.seq,
            "time": _iso(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "payload": dict(payload),
        }
        digest = hmac.new(self.key, (self.head + _canonical(body)).encode(), hashlib.sha256)
        self.head, prev = digest.hexdigest(), self.head
        put(conn, "audit_events", {**body, "time": at, "prev_hash": prev, "hash": self.head})
        return self.seq


# Seals as the record writer of 0016/0017 wrote them (docs/audit.md, "Sealed records"):
# RFC 9162 leaves and roots over the canonical array of RECORD_FORMAT 1.
SEALED_FIELDS = (
    "id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "endpoint_name",
    "version_id",
    "route",
    "prompt",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "http_status",
    "error",
    "shadow",
    "fallback_from_id",
    "server_id",
    "tool_calls",
    "format_ok",
    "source",
    "job_id",
)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _array(values: Sequence[Any]) -> bytes:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()


def _record_leaf(record: Mapping[str, Any]) -> bytes:
    values = [record.get(f) for f in SEALED_FIELDS]
    values[1] = _iso(record["created_at"])
    return _sha(b"\x00" + _array([1, *values]))


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _sha(b"\x01" + _root(leaves[:k]) + _root(leaves[k:]))


def seal(
    conn: Connection,
    chain: Chain,
    seals: Sequence[tuple[str, list[dict[str, Any]]]],
    at: datetime,
) -> int:
    """Write each (seal id, records) batch: the records with ``seal``/``seal_pos``, the
    seal's index row; then one ``records.anchored`` event listing them, and mark the
    index rows with its seq (``anchor_seq``), as 0017's writer did."""
    entries = []
    for seal_id, records in seals:
        leaves = [_record_leaf(r) for r in records]
        put(
            conn,
            "inference_records",
            *({**r, "seal": seal_id, "seal_pos": pos} for pos, r in enumerate(records)),
        )
        ids = [r["id"] for r in records]
        tenants = [r["tenant_id"] for r in records]
        times = [_iso(r["created_at"]) for r in records]
        put(
            conn,
            "record_seals",
            {
                "id": seal_id,
                "anchor_seq": None,
                "created_at": at,
                "ids": ids,
                "tenants": tenants,
                "times": times,
                "leaves": b"".join(leaves),
            },
        )
        index = hashlib.sha256(
            _canonical({"ids": ids, "tenants": tenants, "times": times}).encode()
        ).hexdigest()
        entries.append((seal_id, len(ids), _root(leaves).hex(), index, min(times), max(times)))
    seal_leaves = [_sha(b"\x00" + _array(["seal", 1, *e[:4]])) for e in entries]
    payload = {
        "v": 1,
        "root": _root(seal_leaves).hex(),
        "seals": [e[0] for e in entries],
        "records": [e[1] for e in entries],
        "roots": [e[2] for e in entries],
        "indexes": [e[3] for e in entries],
        "first": min(e[4] for e in entries),
        "last": max(e[5] for e in entries),
    }
    subject = f"seals:{entries[0][0]}" + (f"+{len(entries) - 1}" if len(entries) > 1 else "")
    seq = chain.append(conn, at, "serve@node-1", "records.anchored", subject, payload)
    conn.execute(
        sa.text("UPDATE record_seals SET anchor_seq = :seq WHERE id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)
        ),
        {"seq": seq, "ids": [e[0] for e in entries]},
    )
    return seq


# -- the world every revision starts with (0001's tables) -----------------------------------

T0 = datetime(2026, 11, 25, 10, 0, 0, 250000, tzinfo=UTC)
KEY_ID, KEY_SECRET = "Ab3dEf6hIj9k", "s" * 32


def _full_key() -> str:
    import zlib

    body = f"myk_{KEY_ID}_{KEY_SECRET}"
    return body + f"{zlib.crc32(body.encode()):08x}"[:6]


def record(rid: str, at: datetime, **extra: Any) -> dict[str, Any]:
    """An inference record with 0001's columns (``extra``: a later revision's)."""
    return {
        "id": rid,
        "created_at": at,
        "tenant_id": 1,
        "api_key_id": KEY_ID,
        "endpoint_name": "acme-support",
        "version_id": 2,
        "route": "chat.completions",
        "prompt": f"question {rid}?",
        "response": f"answer {rid}.",
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "latency_ms": 12.5,
        "ttft_ms": 4.25,
        "status": "ok",
        "http_status": 200,
        "error": None,
        **extra,
    }


def world_0001(
    conn: Connection, at: datetime = T0, versions: Mapping[int, Mapping[str, Any]] | None = None
) -> None:
    """A tenant, its key, a base, a model with two versions and two aliases, an endpoint
    splitting its traffic 90/10 between them. ``versions``: later revisions' columns of
    versions 1 and 2."""
    versions = versions or {1: {}, 2: {}}
    put(conn, "tenants", {"id": 1, "name": "acme", "storage_policy": "full", "created_at": at})
    put(
        conn,
        "api_keys",
        {
            "id": KEY_ID,
            "tenant_id": 1,
            "created_at": at,
            "expires_at": None,
            "key_hash": hashlib.sha256(KEY_SECRET.encode()).hexdigest(),
            "scopes": ["infer", "feedback"],
            "revoked_at": None,
        },
    )
    put(
        conn,
        "base_models",
        {
            "id": 1,
            "name": "tiny-base",
            "source": "hf:tiny/llama",
            "weight_hashes": {"model.safetensors": "ab" * 32},
            "created_at": at,
        },
    )
    put(
        conn,
        "registered_models",
        {
            "id": 1,
            "name": "acme-bot",
            "tenant_id": 1,
            "description": "acme's support bot",
            "created_at": at,
        },
    )
    put(
        conn,
        "model_versions",
        *(
            {
                "id": v,
                "registered_model_id": 1,
                "version": v,
                "kind": "adapter",
                "status": "ready",
                "artifact_digest": f"{v}d" * 32,
                "base_model_id": 1,
                "run_id": None,
                "lineage": {"seed": v, "data": "tickets:1"},
                "metrics": {"exact_match": 0.5 + v / 10},
                "created_at": at + timedelta(minutes=v),
                **versions[v],
            }
            for v in (1, 2)
        ),
    )
    put(
        conn,
        "model_aliases",
        {"registered_model_id": 1, "alias": "prod", "version_id": 2, "updated_at": at},
        {"registered_model_id": 1, "alias": "previous", "version_id": 1, "updated_at": at},
    )
    put(
        conn,
        "endpoints",
        {
            "id": 1,
            "name": "acme-support",
            "tenant_id": 1,
            "registered_model_id": 1,
            "model_ref": "acme-bot@prod",
            "shared": False,
            "created_at": at,
            "updated_at": at,
        },
    )
    put(
        conn,
        "traffic_routes",
        {"endpoint_id": 1, "version_id": 2, "weight": 90},
        {"endpoint_id": 1, "version_id": 1, "weight": 10},
    )


# -- upgrading -------------------------------------------------------------------------------


@dataclass
class Old:
    """A store at an old revision, its home, and the CLI on it after the upgrade."""

    url: str
    home: Path
    engine: sa.Engine
    revision: str
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> Result:
        env = {
            "MODELYARD_STORE_URL": self.url,
            "MODELYARD_AUDIT_KEY": AUDIT_KEY,
            "MODELYARD_ACTOR": "ops",
            **self.env,
        }
        r = modelyard(*args, home=self.home, env=env)
        assert "Traceback" not in r.err, r.err
        return r

    def json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        assert r.code == 0, (args, r.out, r.err)
        return json.loads(r.out)

    def upgrade(self) -> dict[str, Any]:
        """``modelyard init``: what an operator runs ahead of a rollout (and what every
        server does at start)."""
        result: dict[str, Any] = self.json("init")
        assert (result["schema_before"], result["schema"]) == (self.revision, head_revision())
        return result


@contextlib.contextmanager
def _stores(url: str, tmp_path: Path) -> Iterator[Callable[[str], Old]]:
    engines: list[sa.Engine] = []

    def make(revision: str) -> Old:
        engine = create_engine(url)
        engines.append(engine)
        cfg = _alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        (tmp_path / "home").mkdir()
        return Old(url, tmp_path / "home", engine, revision)

    try:
        yield make
    finally:
        for engine in engines:
            engine.dispose()


@pytest.fixture
def at_revision(store_url: str, tmp_path: Path) -> Iterator[Callable[[str], Old]]:
    """``at_revision("000N")``: an empty store (SQLite, PostgreSQL) migrated to 000N, to
    be filled."""
    with _stores(store_url, tmp_path) as make:
        yield make


@pytest.fixture
def pg_at_revision(postgres_url: str, tmp_path: Path) -> Iterator[Callable[[str], Old]]:
    with _stores(postgres_url, tmp_path) as make:
        yield make


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- from 0001 ---------------------------------------------------------------------------------


def test_upgrade_from_0001_keeps_registry_keys_traffic_and_records(at_revision: Any) -> None:
    old = at_revision("0001")
    with old.engine.begin() as conn:
        world_0001(conn)
        put(
            conn,
            "inference_records",
            *(record(f"r{i}", T0 + timedelta(hours=1, minutes=i)) for i in range(3)),
            record(
                "r3",
                T0 + timedelta(hours=2),
                status="error",
                http_status=500,
                error="engine failed",
                response=None,
                completion_tokens=0,
            ),
        )

    old.upgrade()

    models = old.json("registry", "list")
    assert [(m["name"], m["latest_version"]) for m in models] == [("acme-bot", 2)]
    v2 = old.json("registry", "show", "acme-bot:2")
    assert v2["lineage"] == {"seed": 2, "data": "tickets:1"}
    assert v2["metrics"] == {"exact_match": 0.7}
    assert set(v2["aliases"]) == {"prod"} and v2["tags"] == {}  # 0004's default
    assert old.json("registry", "show", "acme-bot@previous")["version"] == 1
    endpoint = old.json("endpoints", "show", "acme-support")
    assert {r["version"]: r["weight"] for r in endpoint["routes"]} == {2: 90, 1: 10}
    assert (endpoint["shadow_version"], endpoint["shadow_fraction"]) == (None, 0.0)  # 0006
    keys = old.json("keys", "list")
    assert [(k["id"], k["tenant"], k["scopes"]) for k in keys] == [
        (KEY_ID, "acme", ["infer", "feedback"])
    ]
    with Store.open(old.url, migrate=False) as store:  # the key a client holds still works
        assert authenticate(store, _full_key()).id == KEY_ID
    records = old.json("monitor", "records")
    assert [r["id"] for r in records] == ["r3", "r2", "r1", "r0"]
    assert {r["source"] for r in records} == {"api"}  # 0012: every earlier record
    assert records[0]["error"] == "engine failed" and records[1]["prompt"] == "question r2?"
    verified = old.json("audit", "verify", "--records")
    assert verified["ok"] is True
    assert verified["records"]["before_sealing"] == 4  # written before sealing: counted
    # The upgraded store takes audited changes: the chain starts at the head 0009 recorded.
    assert old.cli("tenants", "create", "globex").code == 0
    assert old.json("audit", "verify")["ok"] is True


# -- from 0005 ---------------------------------------------------------------------------------

T5 = datetime(2026, 12, 2, 9, 0, 0, 500000, tzinfo=UTC)


def _chain_0005(conn: Connection, chain: Chain) -> None:
    """The events 0002..0005's store appended for ``world_0001``'s changes."""
    events: list[tuple[str, str, dict[str, Any]]] = [
        ("actor.added", "ops", {"role": "admin"}),
        ("tenant.created", "acme", {"storage_policy": "full"}),
        (
            "api_key.created",
            KEY_ID,
            {
                "tenant": "acme",
                "scopes": ["infer", "feedback"],
                "expires_at": None,
                "rpm_limit": 60,
                "tpm_limit": None,
            },
        ),
        ("base_model.registered", "tiny-base", {"source": "hf:tiny/llama"}),
        ("registered_model.created", "acme-bot", {"tenant": "acme"}),
        *(
            (
                "model_version.registered",
                f"acme-bot:{v}",
                {
                    "kind": "adapter",
                    "artifact_digest": f"{v}d" * 32,
                    "base_model": "tiny-base",
                    "run_id": None,
                    "created_by": "ops",
                    "lineage": {"seed": v, "data": "tickets:1"},
                    "metrics": {"exact_match": 0.5 + v / 10},
                },
            )
            for v in (1, 2)
        ),
        ("alias.set", "acme-bot@previous", {"version": 1, "previous": None}),
        ("alias.set", "acme-bot@prod", {"version": 2, "previous": None}),
        ("endpoint.created", "acme-support", {"model_ref": "acme-bot@prod", "tenant": "acme"}),
        ("endpoint.traffic_set", "acme-support", {"routes": {"2": 90, "1": 10}}),
        ("model_version.tagged", "acme-bot:2", {"set": {"team": "support"}, "removed": []}),
    ]
    for i, (action, subject, payload) in enumerate(events):
        chain.append(conn, T0 + timedelta(seconds=i), "ops", action, subject, payload)


def _features(rid: str, prompt_chars: int) -> dict[str, Any]:
    return {
        "record_id": rid,
        "prompt_chars": prompt_chars,
        "response_chars": 9,
        "prompt_non_ascii": 0.0,
        "prompt_digits": 0.1,
        "response_non_ascii": 0.0,
        "response_digits": 0.0,
        "unknown_token_rate": None,
        "cache_hit": None,
        "embedding": None,
    }


def test_upgrade_from_0005_keeps_the_chain_feedback_and_monitoring(at_revision: Any) -> None:
    old = at_revision("0005")
    chain = Chain()
    records = [record(f"r{i}", T5 + timedelta(minutes=i)) for i in range(4)]
    with old.engine.begin() as conn:
        world_0001(
            conn,
            versions={
                1: {"created_by": "ops", "tags": {}},
                2: {"created_by": "ops", "tags": {"team": "support"}},
            },
        )
        conn.execute(sa.text(f"UPDATE api_keys SET rpm_limit = 60 WHERE id = '{KEY_ID}'"))
        put(conn, "actors", {"name": "ops", "role": "admin", "created_at": T0, "updated_at": T0})
        _chain_0005(conn, chain)
        put(conn, "inference_records", *records)
        put(conn, "record_features", *(_features(r["id"], 10 + i) for i, r in enumerate(records)))
        put(
            conn,
            "feedback",
            *(
                {
                    "id": f"fb-{i}",
                    "record_id": f"r{i}",
                    "tenant_id": 1,
                    "api_key_id": KEY_ID,
                    "score": score,
                    "comment": comment,
                    "created_at": T5 + timedelta(hours=1),
                    "updated_at": T5 + timedelta(hours=1),
                }
                for i, (score, comment) in enumerate([(1.0, "spot on"), (-1.0, "wrong order")])
            ),
        )
        put(
            conn,
            "monitor_profiles",
            {
                "id": 1,
                "window": "hour",
                "start": T5.replace(minute=0, second=0, microsecond=0),
                "endpoint_name": "acme-support",
                "version_id": 2,
                "tenant_id": 1,
                "requests": 4,
                "errors": 0,
                "latency_p50_ms": 12.5,
                "latency_p95_ms": 12.5,
                "latency_p99_ms": 12.5,
                "ttft_p50_ms": 4.25,
                "ttft_p95_ms": 4.25,
                "tokens_in": 28,
                "tokens_out": 12,
                "cost": 0.004,
                "cache_hits": 0,
                "cache_known": 0,
                "feedback_count": 2,
                "feedback_sum": 0.0,
                "latency_hist": [[40, 4]],
                "ttft_hist": [[30, 4]],
                "updated_at": T5,
            },
        )
        put(
            conn,
            "drift_results",
            {
                "id": 1,
                "run_id": "d" * 36,
                "computed_at": T5,
                "endpoint_name": "acme-support",
                "version_id": 2,
                "tenant_id": None,
                "reference": "eval",
                "window_start": T5 - timedelta(hours=1),
                "window_end": T5,
                "feature": "prompt_chars",
                "method": "psi",
                "value": 0.02,
                "threshold": 0.2,
                "drifted": False,
                "status": "ok",
                "n_reference": 40,
                "n_current": 4,
                "details": {"edges": [0, 10, 20]},
            },
        )
        put(
            conn,
            "alert_states",
            {
                "id": "a" * 64,
                "rule": "error-rate",
                "labels": {"endpoint": "acme-support"},
                "severity": "page",
                "state": "resolved",
                "value": 0.0,
                "summary": "error rate back under 5%",
                "active_since": None,
                "fired_at": T5,
                "resolved_at": T5 + timedelta(minutes=5),
                "last_evaluated": T5,
            },
        )
        put(
            conn,
            "alert_notifications",
            {
                "id": 1,
                "alert_id": "a" * 64,
                "rule": "error-rate",
                "state": "firing",
                "target": "https://hooks.example/x",
                "sent_at": T5,
                "ok": True,
                "attempts": 1,
                "error": None,
            },
        )
        put(conn, "retention_policies", {"tenant_id": 1, "raw_days": 30, "updated_at": T5})
        put(
            conn,
            "token_prices",
            {
                "base_model": "tiny-base",
                "input_per_1k": 0.1,
                "output_per_1k": 0.2,
                "updated_at": T5,
            },
        )

    old.upgrade()

    # 0009: the head is the newest event, so the chain verifies and goes on from it.
    assert old.cli("audit", "head").out.strip() == f"{chain.seq}:{chain.head}"
    verified = old.json("audit", "verify")
    assert (verified["ok"], verified["events"]) == (True, chain.seq)
    assert old.cli("tenants", "create", "globex").code == 0
    verified = old.json("audit", "verify")
    assert (verified["ok"], verified["events"]) == (True, chain.seq + 1)
    # 0006 rebuilt endpoints and inference_records on SQLite: what referred to them stays.
    endpoint = old.json("endpoints", "show", "acme-support")
    assert {r["version"]: r["weight"] for r in endpoint["routes"]} == {2: 90, 1: 10}
    assert old.json("registry", "show", "acme-bot:2")["tags"] == {"team": "support"}
    assert [k["rpm_limit"] for k in old.json("keys", "list")] == [60]
    with Store.open(old.url, migrate=False) as store:
        feedback = store.list_feedback()
        # 0007: the features carry their record's endpoint, version, time and numbers.
        features = store.feature_columns(
            endpoint="acme-support", version_id=2, since=T5, until=T5 + timedelta(hours=1)
        )
    assert sorted((f.record_id, f.score, f.comment) for f in feedback) == [
        ("r0", 1.0, "spot on"),
        ("r1", -1.0, "wrong order"),
    ]
    assert features["prompt_chars"] == (10, 11, 12, 13)
    assert features["prompt_tokens"] == (7, 7, 7, 7) and features["latency_ms"] == (12.5,) * 4
    shown = old.json("monitor", "records")
    assert [r["id"] for r in shown] == ["r3", "r2", "r1", "r0"]
    profiles = old.json("monitor", "profiles", "--no-update", "--since", "2026-12-01")
    assert [(p["requests"], p["feedback_count"], p["tool_calls"]) for p in profiles] == [(4, 2, 0)]
    alerts = old.json("monitor", "alerts")
    assert [(a["rule"], a["state"]) for a in alerts] == [("error-rate", "resolved")]
    assert _count(old.engine, "drift_results") == 1
    assert _count(old.engine, "alert_notifications") == 1
    prices = old.json("monitor", "price", "list")
    assert [(p["base_model"], p["input_per_1k"]) for p in prices] == [("tiny-base", 0.1)]
    retention = old.json("monitor", "retention", "list")
    assert [(r["tenant"], r["raw_days"]) for r in retention] == [("acme", 30)]


# -- from 0017 ---------------------------------------------------------------------------------

T17 = datetime(2026, 12, 5, 14, 0, 0, 125000, tzinfo=UTC)
# Columns of a record added by 0006, 0008, 0010 and 0012, as the writer set them.
LATER = {
    "shadow": False,
    "fallback_from_id": None,
    "server_id": "node-1",
    "tool_calls": None,
    "format_ok": None,
    "source": "api",
    "job_id": None,
}


def test_upgrade_from_0017_keeps_sealed_records_verifiable(
    at_revision: Any, tmp_path: Path
) -> None:
    """0018 drops ``inference_records.seal``/``seal_pos`` and ``record_seals.anchor_seq``:
    records sealed before it still verify, and their proofs still find their anchors."""
    old = at_revision("0017")
    chain = Chain()
    at = [T17 + timedelta(seconds=i, microseconds=i) for i in range(8)]
    unsealed = record("r-old", T0 + timedelta(days=9), **LATER)  # written before sealing
    seal_a = [record(f"r-a{i}", at[i], **LATER) for i in range(3)]
    seal_b = [
        record("r-b0", at[3], **{**LATER, "source": "batch", "job_id": "job-1"}),
        record("r-b1", at[4], **{**LATER, "tool_calls": 1, "format_ok": True}),
    ]
    seal_c = [
        {
            **record("r-c0", at[5], **LATER),
            "prompt": "café ☕ ?",
            "status": "error",
            "http_status": 500,
            "error": "engine failed",
            "response": None,
        }
    ]
    running = {
        **record("r-run", at[6], **LATER),
        "status": "running",
        "http_status": 0,
        "response": None,
        "latency_ms": 0.0,
        "ttft_ms": None,
    }
    with old.engine.begin() as conn:
        world_0001(
            conn,
            versions={1: {"created_by": "ops", "tags": {}}, 2: {"created_by": "ops", "tags": {}}},
        )
        put(conn, "actors", {"name": "ops", "role": "admin", "created_at": T0, "updated_at": T0})
        _chain_0005(conn, chain)
        put(conn, "inference_records", unsealed, {**running, "seal": None, "seal_pos": None})
        seal(conn, chain, [("a" * 32, seal_a), ("b" * 32, seal_b)], at[5])
        seal(conn, chain, [("c" * 32, seal_c)], at[7])
        conn.execute(  # the head (0009's row) moved with every append
            sa.text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
            {"seq": chain.seq, "hash": chain.head},
        )
        put(
            conn,
            "feedback",
            {
                "id": "fb-a0",
                "record_id": "r-a0",
                "tenant_id": 1,
                "api_key_id": KEY_ID,
                "score": -1.0,
                "comment": "no",
                "label": "Reset it in Settings.",
                "created_at": at[7],
                "updated_at": at[7],
            },
        )
        put(
            conn,
            "judges",
            {
                "name": "helpful",
                "revision": 1,
                "rubric": "correctness",
                "prompt": None,
                "base_url": "http://judge:8000/v1",
                "model": "judge-7b",
                "api_key_env": None,
                "max_tokens": 256,
                "input_per_1k": 0.0,
                "output_per_1k": 0.0,
                "created_at": at[7],
                "created_by": "ops",
            },
        )
        put(
            conn,
            "judgements",
            {
                "id": 1,
                "judge": "helpful",
                "revision": 1,
                "input_hash": "ab" * 32,
                "record_id": "r-a0",
                "score": 4.0,
                "output": "4",
                "error": None,
                "prompt_tokens": 50,
                "completion_tokens": 2,
                "cost": 0.0,
                "latency_ms": 100.0,
                "created_at": at[7],
            },
        )
        put(
            conn,
            "budgets",
            {
                "id": 1,
                "tenant_id": 1,
                "key_id": "",
                "period": "month",
                "amount": 100.0,
                "updated_at": at[7],
                "updated_by": "ops",
            },
        )
        put(
            conn,
            "actor_tokens",
            {
                "id": "Tk3dEf6hIj9k",
                "actor": "ops",
                "name": "ci",
                "token_hash": "cd" * 32,
                "scopes": ["read", "write"],
                "created_at": at[7],
                "created_by": "ops",
                "expires_at": None,
                "revoked_at": None,
            },
        )

    old.upgrade()

    columns = {c["name"] for c in sa.inspect(old.engine).get_columns("inference_records")}
    assert not {"seal", "seal_pos"} & columns
    verified = old.json("audit", "verify", "--records")
    assert (verified["ok"], verified["events"]) == (True, chain.seq)
    counts = {k: verified["records"][k] for k in ("seals", "records", "before_sealing", "running")}
    assert counts == {"seals": 3, "records": 6, "before_sealing": 1, "running": 1}
    proof = tmp_path / "r-b0.json"  # 0018: a proof finds its seal's anchor with no anchor_seq
    assert old.cli("audit", "prove", "r-b0", "--out", str(proof)).code == 0
    checked = old.cli("audit", "check-proof", str(proof))
    assert checked.code == 0, checked.err
    shown = {r["id"]: r for r in old.json("monitor", "records")}
    assert (shown["r-b0"]["source"], shown["r-b0"]["job_id"]) == ("batch", "job-1")
    assert shown["r-a0"]["feedback_label"] == "Reset it in Settings."
    assert shown["r-c0"]["prompt"] == "café ☕ ?" and shown["r-b1"]["tool_calls"] == 1
    assert [(j["name"], j["revision"]) for j in old.json("judges", "list")] == [("helpful", 1)]
    assert [b["amount"] for b in old.json("budgets", "list")] == [100.0]
    assert [t["name"] for t in old.json("tokens", "list", "--all")] == ["ci"]
    # A record written now is sealed and anchored beside them (as a server without its
    # record writer does it, in one transaction).
    with Store.open(old.url, migrate=False, actor="serve", audit_key=AUDIT_KEY) as store:
        store.add_monitored_records([(_new_record("r-new"), None)], seal=True)
    verified = old.json("audit", "verify", "--records")
    assert verified["ok"] is True
    assert (verified["records"]["seals"], verified["records"]["records"]) == (4, 7)


def _new_record(rid: str) -> NewInferenceRecord:
    return NewInferenceRecord(
        id=rid,
        endpoint_name="acme-support",
        route="chat.completions",
        latency_ms=5.0,
        status="ok",
        http_status=200,
        tenant_id=1,
        version_id=2,
        prompt="Q?",
        response="A.",
    )


# -- replicas starting together -------------------------------------------------------------


def test_processes_started_together_upgrade_the_store_once(pg_at_revision: Any) -> None:
    """Every server applies pending migrations at start, and `helm upgrade` starts a new
    serve and a new controller pod at once (an install, every replica): one migrates, the
    others wait for it and find the schema at head, none fails (on PostgreSQL all but one
    did: `relation ... already exists`; on SQLite a file lock did this already)."""
    old = pg_at_revision("0005")
    with old.engine.begin() as conn:
        world_0001(conn, versions={1: {"tags": {}}, 2: {"tags": {}}})
        put(conn, "inference_records", *(record(f"r{i}", T5) for i in range(3)))
    # Each process imports modelyard first, then opens the store when told: together.
    opened = "import sys\nfrom modelyard.store import Store\nsys.stdin.readline()\n"
    opened += f"with Store.open({old.url!r}) as s:\n    print(s.schema_revision())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", opened],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert [(code, out.strip()) for out, _, code in results] == [(0, head_revision())] * 4, [
        err.strip().splitlines()[-1:] for _, err, _ in results
    ]
    assert (
        _count(old.engine, "traffic_routes") == 2 and _count(old.engine, "inference_records") == 3
    )


# -- a failed upgrade --------------------------------------------------------------------------


def test_a_failed_upgrade_changes_nothing(at_revision: Any) -> None:
    """The whole upgrade is one transaction on both databases: when a migration fails
    (here 0011, as a table of its name exists), those before it are undone too."""
    old = at_revision("0005")
    with old.engine.begin() as conn:
        world_0001(conn, versions={1: {"tags": {}}, 2: {"tags": {}}})
        put(conn, "inference_records", record("r0", T5))
        conn.execute(sa.text("CREATE TABLE audit_breaks (id INTEGER PRIMARY KEY)"))

    r = old.cli("init")
    assert r.code == 1
    assert r.err.startswith("error: store migration 0011 failed: ") and "audit_breaks" in r.err
    assert "the store is unchanged, at revision 0005 (the upgrade is one transaction)" in r.err
    with Store.open(old.url, migrate=False) as store:
        assert store.schema_revision() == "0005"
    tables = set(sa.inspect(old.engine).get_table_names())
    assert "rollouts" not in tables and "audit_head" not in tables  # 0006, 0009: undone
    columns = {c["name"] for c in sa.inspect(old.engine).get_columns("inference_records")}
    assert "shadow" not in columns and "source" not in columns
    assert (
        _count(old.engine, "traffic_routes") == 2 and _count(old.engine, "inference_records") == 1
    )
    with old.engine.begin() as conn:  # the cause removed, the same upgrade goes through
        conn.execute(sa.text("DROP TABLE audit_breaks"))
    old.upgrade()
    assert _count(old.engine, "traffic_routes") == 2


def test_sqlite_upgrade_refuses_to_leave_a_dangling_reference(tmp_path: Path) -> None:
    """SQLite migrates with its foreign keys off (a rebuilt table would take the rows that
    refer to it along); it checks them before committing, and changes nothing when one
    points nowhere (here a feedback row whose record someone deleted by hand)."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = create_engine(url)
    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        world_0001(conn, versions={1: {"tags": {}}, 2: {"tags": {}}})
    engine.dispose()
    with sqlite3.connect(tmp_path / "store.db") as raw:  # foreign keys off, as sqlite3 opens
        raw.execute(
            "INSERT INTO feedback (id, record_id, tenant_id, score, created_at, updated_at) "
            "VALUES ('fb', 'gone', 1, 1.0, '2026-12-02 09:00:00', '2026-12-02 09:00:00')"
        )
    (tmp_path / "home").mkdir()
    r = modelyard("init", home=tmp_path / "home", env={"MODELYARD_STORE_URL": url})
    assert r.code == 1, r.err
    assert (
        "it would leave references to rows that are not there: 1 (the first: row 1 of "
        "feedback, to inference_records); nothing was changed" in r.err
    )
    assert "PRAGMA foreign_key_check" in r.err
    with Store.open(url, migrate=False) as store:
        assert store.schema_revision() == "0005"


def test_the_failed_upgrade_in_the_docs_prints_what_they_show(tmp_path: Path) -> None:
    """docs/operations.md, 'If a migration fails': a table made by hand stops 0021."""
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    shown = re.search(r"\$ modelyard init\n(error: store migration .+)\n\$ echo \$\?\n(\d)", text)
    assert shown is not None
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'store.db'}")
    (tmp_path / "home").mkdir()
    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0017")
        conn.execute(sa.text("CREATE TABLE files (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    r = modelyard("init", home=tmp_path / "home")
    assert (r.err.strip(), r.code) == (shown.group(1), int(shown.group(2)))
