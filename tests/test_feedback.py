"""POST /v1/feedback through the official openai client, and feedback in the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from modelyard.access import create_api_key
from modelyard.errors import ConfigError, NotFound
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from modelyard.store._schema import Base
from worlds import two_tenant_world


@dataclass
class Served:
    store: Store
    url: str
    acme: str  # infer + feedback
    acme_infer_only: str
    globex: str
    clients: ExitStack  # the openai clients of a test, closed when it ends


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        acme = create_api_key(store, "acme")[1]
        infer_only = create_api_key(store, "acme", scopes=["infer"])[1]
        globex = create_api_key(store, "globex")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(store, server.base_url, acme, infer_only, globex, clients)


def _client(served: Served, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0)
    return served.clients.enter_context(client)


def _feedback(client: openai.OpenAI, **body: Any) -> dict[str, Any]:
    reply: dict[str, Any] = client.post("/feedback", body=body, cast_to=httpx.Response).json()
    return reply


def _ask(served: Served, key: str, endpoint: str = "acme-support") -> str:
    reply = _client(served, key).chat.completions.create(
        model=endpoint, messages=[{"role": "user", "content": "my printer is on fire"}]
    )
    return reply.id


def test_thumbs_and_scores_are_stored_and_the_latest_wins(served: Served) -> None:
    client = _client(served, served.acme)
    request_id = _ask(served, served.acme)  # its record may not be written yet
    first = _feedback(client, request_id=request_id, thumbs="up", comment="spot on")
    assert first["object"] == "feedback" and first["request_id"] == request_id
    assert first["score"] == 1.0 and first["comment"] == "spot on"

    second = _feedback(client, request_id=request_id, thumbs="down")
    assert second["id"] == first["id"] and second["score"] == -1.0 and second["comment"] is None
    other = _ask(served, served.acme)
    _feedback(client, request_id=other, score=0.25)

    stored = served.store.list_feedback(tenant="acme")
    assert [(f.record_id, f.score) for f in stored] == [(other, 0.25), (request_id, -1.0)]
    assert all(f.endpoint_name == "acme-support" and f.version == "acme-bot:1" for f in stored)
    assert stored[1].updated_at >= stored[1].created_at
    key_id = served.acme.split("_")[1]
    assert {f.api_key_id for f in stored} == {key_id}


def test_another_tenants_request_is_a_404_exactly_like_a_missing_one(served: Served) -> None:
    theirs = _ask(served, served.globex, "globex-support")
    client = _client(served, served.acme)
    bodies = []
    for request_id in (theirs, "cmpl-0123456789abcdef"):
        with pytest.raises(openai.NotFoundError) as info:
            _feedback(client, request_id=request_id, thumbs="up")
        assert isinstance(info.value.body, dict)
        bodies.append(
            {**info.value.body, "message": info.value.body["message"].replace(request_id, "X")}
        )
    assert bodies[0] == bodies[1]
    assert bodies[0]["message"].startswith("no request with id 'X'")
    assert bodies[0]["code"] == "not_found" and bodies[0]["param"] == "request_id"
    assert served.store.list_feedback() == []


def test_feedback_needs_the_feedback_scope(served: Served) -> None:
    request_id = _ask(served, served.acme_infer_only)
    with pytest.raises(openai.PermissionDeniedError, match="'feedback' scope"):
        _feedback(_client(served, served.acme_infer_only), request_id=request_id, thumbs="up")
    with pytest.raises(openai.AuthenticationError):
        _feedback(_client(served, "myk_nope"), request_id=request_id, thumbs="up")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"thumbs": "up", "score": 1}, None),  # both
        ({}, None),  # neither
        ({"score": 1.5}, "score"),
        ({"score": -2}, "score"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"thumbs": "up", "comment": "x" * 4001}, "comment"),
        ({"thumbs": "up", "label": "x" * 501}, "label"),
    ],
)
def test_invalid_feedback_is_a_400_naming_the_field(
    served: Served, body: dict[str, Any], param: str | None
) -> None:
    request_id = _ask(served, served.acme)
    with pytest.raises(openai.BadRequestError) as info:
        _feedback(_client(served, served.acme), request_id=request_id, **body)
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param is None:
        assert "exactly one of score" in error["message"]


# -- the store -----------------------------------------------------------------------------


def _record(store: Store, record_id: str, tenant: str, endpoint: str) -> None:
    store.add_inference_records(
        [
            NewInferenceRecord(
                id=record_id,
                endpoint_name=endpoint,
                route="chat.completions",
                latency_ms=1.0,
                status="ok",
                http_status=200,
                tenant_id=store.get_tenant(tenant).id,
            )
        ]
    )


def test_store_feedback_is_tenant_scoped_and_filtered(store: Store) -> None:
    two_tenant_world(store, versions=1)
    _record(store, "r1", "acme", "acme-support")
    _record(store, "r2", "acme", "acme-support")
    _record(store, "r3", "globex", "globex-support")
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.add_feedback("r1", tenant="acme", score=1.0, comment="good")
    store.add_feedback("r3", tenant="globex", score=-0.5)
    with pytest.raises(NotFound):
        store.add_feedback("r3", tenant="acme", score=1.0)
    with pytest.raises(ConfigError, match="from -1 to 1"):
        store.add_feedback("r2", tenant="acme", score=1.01)
    with pytest.raises(ConfigError):
        store.add_feedback("r2", tenant="acme", score=float("nan"))
    time.sleep(0.01)
    cut = datetime.now(UTC)
    store.add_feedback("r2", tenant="acme", score=0.0)

    assert [f.record_id for f in store.list_feedback(tenant="acme")] == ["r2", "r1"]
    assert [f.record_id for f in store.list_feedback(endpoint="globex-support")] == ["r3"]
    assert [f.record_id for f in store.list_feedback(since=cut)] == ["r2"]
    assert len(store.list_feedback(since=before)) == 3
    # feedback is data-plane traffic: no audit events
    assert not store.list_audit_events(action="feedback*")


def test_the_migrations_match_the_models(store: Store, store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
