"""Feedback on a request that got no answer (refused, failed) is refused with a 409 in
OpenAI's error format: there is nothing to rate, and a score there would move the
endpoint's feedback_score for nothing. One that brings the request's ``label`` (the answer
it should have had: a correction, which `data from-records` trains on) is kept. Another
tenant's such request stays the same 404 as a missing id (the tenant is checked first)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.errors import Conflict, NotFound
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, Store
from worlds import two_tenant_world


def _record(store: Store, record_id: str, tenant: str, status: str, http_status: int) -> None:
    store.add_inference_records(
        [
            NewInferenceRecord(
                id=record_id,
                endpoint_name=f"{tenant}-support",
                route="chat.completions",
                latency_ms=1.0,
                status=status,
                http_status=http_status,
                error=None if status == "ok" else "refused or failed",
                tenant_id=store.get_tenant(tenant).id,
            )
        ]
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Store, openai.OpenAI]]:
    """The store (acme's and globex's records: answered, refused, failed) and an openai
    client with an acme key that has the feedback scope."""
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        two_tenant_world(store, versions=1)
        for tenant in ("acme", "globex"):
            _record(store, f"{tenant}-ok", tenant, "ok", 200)
            _record(store, f"{tenant}-refused", tenant, "refused", 400)
            _record(store, f"{tenant}-failed", tenant, "error", 500)
        key = create_api_key(store, "acme")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server, ExitStack() as stack:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            yield store, stack.enter_context(client)


def _feedback(client: openai.OpenAI, request_id: str, **more: Any) -> dict[str, Any]:
    body = {"request_id": request_id, "thumbs": "down", **more}
    reply: dict[str, Any] = client.post("/feedback", body=body, cast_to=httpx.Response).json()
    return reply


@pytest.mark.parametrize(("record_id", "http_status"), [("refused", 400), ("failed", 500)])
def test_feedback_on_a_request_that_got_no_answer_is_a_409(
    served: tuple[Store, openai.OpenAI], record_id: str, http_status: int
) -> None:
    store, client = served
    with pytest.raises(openai.ConflictError) as info:
        _feedback(client, f"acme-{record_id}")
    assert info.value.status_code == 409
    error = info.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["code"] == "conflict"
    assert error["param"] == "request_id"
    assert f"request 'acme-{record_id}' got no answer" in error["message"]
    assert f"HTTP {http_status}" in error["message"]
    assert "nothing to rate" in error["message"] and "`label`" in error["message"]
    assert store.list_feedback() == []  # the endpoint's feedback_score did not move

    assert _feedback(client, "acme-ok")["score"] == -1.0  # an answered one still is rated
    assert [f.record_id for f in store.list_feedback()] == ["acme-ok"]


def test_a_correction_of_a_request_that_got_no_answer_is_kept(
    served: tuple[Store, openai.OpenAI],
) -> None:
    store, client = served
    kept = _feedback(client, "acme-failed", label="reset the router")
    assert kept["request_id"] == "acme-failed" and kept["label"] == "reset the router"
    assert [(f.record_id, f.label) for f in store.list_feedback()] == [
        ("acme-failed", "reset the router")
    ]


def test_another_tenants_unanswered_request_is_the_404_of_a_missing_id(
    served: tuple[Store, openai.OpenAI],
) -> None:
    store, client = served
    bodies = []
    for request_id in ("globex-refused", "globex-failed", "globex-ok", "no-such-request"):
        with pytest.raises(openai.NotFoundError) as info:
            _feedback(client, request_id)
        assert isinstance(info.value.body, dict)
        body = info.value.body
        bodies.append({**body, "message": body["message"].replace(request_id, "X")})
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["code"] == "not_found" and bodies[0]["param"] == "request_id"
    assert store.list_feedback() == []


def test_the_store_refuses_feedback_on_an_unanswered_record(store: Store) -> None:
    two_tenant_world(store, versions=1)
    _record(store, "r-refused", "acme", "refused", 429)
    _record(store, "r-failed", "acme", "error", 503)
    _record(store, "g-refused", "globex", "refused", 400)
    for record_id in ("r-refused", "r-failed"):
        with pytest.raises(Conflict, match="got no answer"):
            store.add_feedback(record_id, tenant="acme", score=1.0)
    for label in (None, "a correction"):
        with pytest.raises(NotFound, match="no request with id 'g-refused'"):
            store.add_feedback("g-refused", tenant="acme", score=1.0, label=label)
    assert store.list_feedback() == []
    store.add_feedback("r-refused", tenant="acme", score=1.0, label="a correction")
    assert [f.record_id for f in store.list_feedback()] == ["r-refused"]
