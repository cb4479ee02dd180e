"""The data plane through the official openai client, on the fake EchoEngine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import two_tenant_world


@dataclass
class Served:
    store: Store
    url: str
    acme_key: str
    globex_key: str
    clients: ExitStack  # the openai clients of a test, closed when it ends


def _setup(store: Store) -> tuple[str, str]:
    two_tenant_world(store, policies={"globex": "redacted"}, versions=2, template="alpaca")
    _, acme = create_api_key(store, "acme")
    _, globex = create_api_key(store, "globex")
    return acme, globex


@pytest.fixture
def served(tmp_path: object) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        acme, globex = _setup(store)
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(store, server.base_url, acme, globex, clients)


def _client(served: Served, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0)
    return served.clients.enter_context(client)


def test_chat_completion_answers_and_is_recorded(served: Served) -> None:
    client = _client(served, served.acme_key)
    raw = client.chat.completions.with_raw_response.create(
        model="acme-support",
        messages=[
            {"role": "system", "content": "Route the ticket."},
            {"role": "user", "content": "vpn is down again"},
        ],
        temperature=0,
        max_tokens=8,
    )
    completion = raw.parse()
    assert raw.headers["x-modelyard-version"] == "acme-bot:1"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    served_app_flush(served)
    records = served.store.list_inference_records(endpoint="acme-support")
    assert [r.id for r in records] == [completion.id]
    assert records[0].tenant == "acme" and records[0].version == "acme-bot:1"
    assert records[0].status == "ok" and "vpn is down again" in (records[0].prompt or "")


def served_app_flush(served: Served, want: int = 1) -> None:
    """Records are written asynchronously; wait until they land."""
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and served.store.count_inference_records() < want:
        time.sleep(0.05)


def test_completions_route(served: Served) -> None:
    out = _client(served, served.acme_key).completions.create(
        model="acme-support", prompt="say hello world", max_tokens=2
    )
    assert out.choices[0].text == "say hello"
    assert out.choices[0].finish_reason == "length"


def test_other_tenants_endpoint_is_a_404_like_a_missing_one(served: Served) -> None:
    client = _client(served, served.acme_key)
    for model in ("globex-support", "no-such-endpoint"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        assert "does not exist or you do not have access" in info.value.message
    ids = [m.id for m in client.models.list()]
    assert ids == ["acme-support"]


def test_bad_keys_are_401(served: Served) -> None:
    for key in ("not-a-key", served.acme_key[:-1] + "x"):
        with pytest.raises(openai.AuthenticationError):
            _client(served, key).models.list()


def test_client_mistakes_are_400_in_openai_error_format(served: Served) -> None:
    r = httpx.post(
        served.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {served.acme_key}"},
        json={"model": "acme-support", "messages": []},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _client(served, served.acme_key).chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": "x"}], max_tokens=100000
        )


def test_traffic_change_takes_effect_without_restart(served: Served) -> None:
    served.store.set_traffic("acme-support", {1: 0, 2: 100})
    import time

    time.sleep(0.3)
    raw = _client(served, served.acme_key).chat.completions.with_raw_response.create(
        model="acme-support", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelyard-version"] == "acme-bot:2"


def test_redacted_tenant_records_have_no_pii(served: Served) -> None:
    _client(served, served.globex_key).chat.completions.create(
        model="globex-support",
        messages=[{"role": "user", "content": "mail me at jane.doe@example.com"}],
    )
    served_app_flush(served)
    (record,) = served.store.list_inference_records(tenant="globex")
    assert "jane.doe@example.com" not in (record.prompt or "")
    assert "[EMAIL]" in (record.prompt or "")


def test_health_ready_and_metrics(served: Served) -> None:
    assert httpx.get(served.url + "/health").json()["status"] == "ok"
    assert httpx.get(served.url + "/ready").json()["ready"] is True
    _client(served, served.acme_key).completions.create(model="acme-support", prompt="a b")
    body = httpx.get(served.url + "/metrics").text
    assert 'modelyard_requests_total{endpoint="acme-support"' in body
