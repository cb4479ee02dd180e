"""Limits and failure behaviour of the API, key rotation, and no 500 under schemathesis.

Per-key rate limits (429 with Retry-After, other tenants unaffected, unused tokens
given back), the body, prompt-token and max_tokens caps (refused before the
engine sees the request), the request timeout (504, record ``timeout``), the key
cache TTL (a revocation applies within it) and key rotation (API and CLI).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from clihelp import modelyard
from modelyard.access import authenticate, create_api_key, rotate_api_key
from modelyard.errors import Conflict, InvalidApiKey
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    PacedEchoEngine,
    RateLimiter,
    SamplingParams,
    ServerLimits,
    TokenStream,
    create_app,
)
from modelyard.store import ApiKey, InferenceRecord, ModelVersion, Store
from worlds import two_tenant_world


class CountingEcho(EchoEngine):
    """The echo engine, counting the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.calls += 1
        return super().stream(version, prompt, params)


@dataclass
class Server:
    store: Store
    url: str
    engine: EchoEngine
    clients: dict[str, openai.OpenAI] = field(default_factory=dict)

    def client(self, key: str) -> openai.OpenAI:
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)
        return self.clients[key]

    def records(self, want: int) -> list[InferenceRecord]:
        """The inference records, once ``want`` of them are written and none is still
        ``running`` (they are asynchronous; the request journal writes a long request as
        running first, then updates it)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.store.count_inference_records() >= want:
                records = self.store.list_inference_records()
                if all(r.status != "running" for r in records):
                    return records
            time.sleep(0.05)
        return self.store.list_inference_records()


ServerFactory = Callable[..., Server]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as s:
        two_tenant_world(s, versions=1, template="text")
        yield s


@pytest.fixture
def serve(store: Store) -> Iterator[ServerFactory]:
    """Start a server over ``store`` with the given limits and engine (stopped afterwards)."""
    started: list[tuple[BackgroundServer, Server]] = []

    def start(engine: EchoEngine | None = None, **limits: Any) -> Server:
        engine = engine or CountingEcho()
        app = create_app(store, engine, limits=ServerLimits(**limits), refresh_seconds=0.1)
        background = BackgroundServer(app).start()
        server = Server(store, background.base_url, engine)
        started.append((background, server))
        return server

    yield start
    for background, server in started:
        for client in server.clients.values():
            client.close()
        background.stop()


def _complete(client: openai.OpenAI, prompt: str = "a b", **kw: Any) -> Any:
    return client.completions.create(model=kw.pop("model", "acme-support"), prompt=prompt, **kw)


# -- rate limits ---------------------------------------------------------------------------


def test_requests_per_minute_are_per_key_and_other_tenants_are_unaffected(
    serve: ServerFactory, store: Store
) -> None:
    server = serve(default_rpm=100)
    _, limited = create_api_key(store, "acme", rpm_limit=2)
    _, globex = create_api_key(store, "globex")
    client = server.client(limited)
    _complete(client)
    _complete(client)
    with pytest.raises(openai.RateLimitError) as info:
        _complete(client)
    retry_after = info.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 30  # 1 request at 2/min
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "2 requests per minute" in error["message"]
    for _ in range(5):  # another tenant's key (server default: 100/min) goes on
        _complete(server.client(globex), model="globex-support")
    statuses = sorted(r.http_status for r in server.records(8))
    assert statuses == [200] * 7 + [429]


def test_tokens_per_minute_count_prompt_and_max_tokens_and_refund_the_rest(
    serve: ServerFactory, store: Store
) -> None:
    server = serve()
    _, key = create_api_key(store, "acme", tpm_limit=30)
    client = server.client(key)
    # each reserves 2 + 20 = 22 tokens and uses 2 + 2: without the refund the 2nd would fail
    for _ in range(3):
        assert _complete(client, "a b", max_tokens=20).choices[0].text == "a b"
    with pytest.raises(openai.RateLimitError) as info:  # can never fit in 30 tokens/min
        _complete(client, "a b", max_tokens=40)
    assert info.value.response.headers["retry-after"] == "60"
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "tokens"
    # refused before the prompt is tokenized: max_tokens alone can never fit
    assert "at least 40 tokens (its max_tokens)" in info.value.body["message"]
    with pytest.raises(openai.RateLimitError) as info:  # no max_tokens: the default, 64
        _complete(client, "a b")
    assert isinstance(info.value.body, dict)
    assert "at least 64 tokens (its max_tokens, 64 when not set)" in info.value.body["message"]
    long_prompt = " ".join(["word"] * 25)  # 25 + 5 fits a minute, not the 18 left
    with pytest.raises(openai.RateLimitError) as info:
        _complete(client, long_prompt, max_tokens=5)
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_the_limiter_refills_continuously() -> None:
    now = [0.0]
    limiter = RateLimiter(default_rpm=60, clock=lambda: now[0])
    key = ApiKey("k", 1, "acme", "", ("infer",), None, None, None)  # type: ignore[arg-type]
    for _ in range(60):
        limiter.admit(key, 0)
    with pytest.raises(Exception, match="60 requests per minute") as info:
        limiter.admit(key, 0)
    assert getattr(info.value, "retry_after", None) == 1
    now[0] = 1.0  # one request per second comes back
    limiter.admit(key, 0)


# -- caps, before the engine sees the request ----------------------------------------------


def test_body_prompt_and_max_tokens_caps_are_refused_before_scheduling(
    serve: ServerFactory, store: Store
) -> None:
    server = serve(max_body_bytes=2048, max_prompt_tokens=8, max_tokens=16)
    _, key = create_api_key(store, "acme")
    client = server.client(key)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    big = json.dumps({"model": "acme-support", "prompt": "x " * 5000}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert "2048 bytes" in r.json()["error"]["message"]
    chunked = httpx.post(  # no Content-Length: refused once the body passes the cap
        server.url + "/v1/completions", content=iter([big[:1500], big[1500:]]), headers=headers
    )
    assert chunked.status_code == 413

    with pytest.raises(openai.BadRequestError, match="--max-prompt-tokens") as info:
        _complete(client, " ".join(["w"] * 9))
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError, match="limit of 8 prompt tokens") as info:
        client.chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": "w " * 9}]
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="max_tokens") as info:
        _complete(client, max_tokens=17)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "max_tokens"
    assert server.engine.calls == 0

    small = httpx.post(
        server.url + "/v1/completions",
        content=iter([json.dumps({"model": "acme-support", "prompt": "ok then"}).encode()]),
        headers=headers,
    )
    assert small.status_code == 200 and small.json()["choices"][0]["text"] == "ok then"
    assert server.engine.calls == 1


# -- timeouts ------------------------------------------------------------------------------


def test_choices_of_a_refused_request_are_stopped_not_answered_and_charged(
    serve: ServerFactory, store: Store
) -> None:
    """``n=4`` on a key with 3 requests a minute left: the fourth choice is refused, so the
    client gets a 429 and none of the answers; the three admitted choices are stopped at
    once (they ran to the end and were charged as answered)."""
    server = serve(PacedEchoEngine(0.2))
    _, key = create_api_key(store, "acme", rpm_limit=3)
    prompt = " ".join(f"w{i}" for i in range(20))  # 4 s of words per choice
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        _complete(server.client(key), prompt, max_tokens=20, n=4)
    assert time.monotonic() - started < 2
    records = server.records(4)
    assert sorted(r.status for r in records) == ["cancelled"] * 3 + ["refused"], records
    assert all(r.completion_tokens < 20 for r in records)


def test_a_request_past_the_timeout_is_cancelled_and_answered_504(
    serve: ServerFactory, store: Store
) -> None:
    server = serve(PacedEchoEngine(0.1), request_timeout_s=0.5)
    _, key = create_api_key(store, "acme")
    client = server.client(key)
    prompt = " ".join(f"w{i}" for i in range(30))  # 3 s of words
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        _complete(client, prompt, max_tokens=30)
    assert time.monotonic() - started < 2.5
    assert info.value.status_code == 504
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "timeout"

    chunks = []
    with pytest.raises(openai.APIError, match=r"timeout of 0\.5 s"):
        for chunk in _complete(client, prompt, max_tokens=30, stream=True):
            chunks.append(chunk.choices[0].text)
    assert 0 < len(chunks) < 30  # some words came, then the error event

    records = server.records(2)
    assert [r.status for r in records] == ["timeout", "timeout"]
    assert {r.http_status for r in records} == {504}
    assert all(r.completion_tokens < 30 for r in records)  # the generations were stopped


# -- keys: cache TTL and rotation ----------------------------------------------------------


def test_a_revocation_applies_within_the_key_cache_ttl(serve: ServerFactory, store: Store) -> None:
    server = serve(key_cache_seconds=0.5)
    key, secret = create_api_key(store, "acme")
    client = server.client(secret)
    _complete(client)
    store.revoke_api_key(key.id)
    revoked_at = time.monotonic()
    deadline = revoked_at + 5
    while time.monotonic() < deadline:
        try:
            _complete(client)
        except openai.AuthenticationError as exc:
            assert "revoked" in exc.message
            break
        time.sleep(0.05)
    else:
        pytest.fail("the revoked key still worked after 5 s")
    assert time.monotonic() - revoked_at < 0.5 + 0.5  # the TTL, plus slack for one request


def test_rotation_keeps_the_old_key_for_the_grace_period(
    serve: ServerFactory, store: Store
) -> None:
    old, old_secret = create_api_key(
        store, "acme", scopes=["infer"], rpm_limit=7, expires_in=timedelta(days=30)
    )
    new, new_secret = rotate_api_key(store, old.id, timedelta(hours=1))
    assert (new.tenant, new.scopes, new.rpm_limit) == ("acme", ("infer",), 7)
    assert new.expires_at is not None and timedelta(days=29) < new.expires_at - new.created_at
    stored_old = store.get_api_key(old.id)
    assert stored_old is not None and stored_old.rotated_to == new.id
    assert stored_old.expires_at is not None and stored_old.expires_at < new.created_at + timedelta(
        hours=1, seconds=5
    )
    assert authenticate(store, old_secret).id == old.id  # within its grace
    assert authenticate(store, new_secret).id == new.id
    with pytest.raises(Conflict, match="rotated already"):
        rotate_api_key(store, old.id)
    events = [(e.action, e.subject) for e in store.list_audit_events(subject=f"{old.id}")]
    assert ("api_key.rotated", old.id) in events
    created = store.list_audit_events(action="api_key.created", subject=new.id)
    assert created[0].payload["rotated_from"] == old.id

    server = serve(key_cache_seconds=0.2)
    _, secret = create_api_key(store, "acme")
    current = authenticate(store, secret)
    _complete(server.client(secret))
    _, newest = rotate_api_key(store, current.id, timedelta(0))  # no grace: cut over now
    time.sleep(0.3)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        _complete(server.client(secret))
    _complete(server.client(newest))
    with pytest.raises(InvalidApiKey):
        authenticate(store, secret)


def test_cli_keys_create_with_limits_rotate_and_limits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    created = modelyard(
        "keys", "create", "--tenant", "acme", "--rpm", "5", "--tpm", "1000", "--json", home=home
    )
    assert created.code == 0, created.err
    key = json.loads(created.out)
    rotated = modelyard("keys", "rotate", key["id"], "--grace", "2h", "--json", home=home)
    assert rotated.code == 0, rotated.err
    new = json.loads(rotated.out)
    assert new["key"].startswith("myk_") and new["id"] != key["id"]
    assert (new["tenant"], new["scopes"], new["rotated_from"]) == ("acme", key["scopes"], key["id"])
    assert new["old_expires_at"]
    listed = {k["id"]: k for k in json.loads(modelyard("keys", "list", "--json", home=home).out)}
    assert listed[key["id"]]["rotated_to"] == new["id"]
    assert (listed[new["id"]]["rpm_limit"], listed[new["id"]]["tpm_limit"]) == (5, 1000)
    assert new["key"] not in json.dumps(listed)

    again = modelyard("keys", "rotate", key["id"], home=home)
    assert again.code == 1 and f"Rotate the newer key: `modelyard keys rotate {new['id']}`" in (
        again.err
    )
    assert modelyard("keys", "rotate", "nope", home=home).code == 1
    bad = modelyard("keys", "rotate", new["id"], "--grace", "soon", home=home)
    assert bad.code == 2 and "invalid duration 'soon'" in bad.err

    changed = modelyard("keys", "limits", new["id"], "--rpm", "default", "--json", home=home)
    assert changed.code == 0, changed.err
    assert (json.loads(changed.out)["rpm_limit"], json.loads(changed.out)["tpm_limit"]) == (
        None,
        1000,
    )
    assert modelyard("keys", "limits", new["id"], "--tpm", "0", home=home).code == 2
    log = json.loads(modelyard("audit", "log", "--json", home=home).out)
    actions = [e["action"] for e in log]
    assert {"api_key.rotated", "api_key.limits_set"} <= set(actions)


# -- schemathesis: no input makes a 500 ----------------------------------------------------


def _known_model(case: Any) -> Any:
    """Valid bodies name a real endpoint (a random name is only ever a 404)."""
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "acme-support"
    return case


def test_no_input_makes_a_server_error(serve: ServerFactory, store: Store) -> None:
    """Every operation of /openapi.json: 30 valid inputs, and 30 invalid bodies for the POSTs.

    (Driven through hypothesis directly: schemathesis' pytest loader does not run on pytest 9.)
    """
    server = serve(max_body_bytes=65536)
    _, key = create_api_key(store, "acme")
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/feedback",
        "/v1/models",
    }
    headers = {"Authorization": f"Bearer {key}"}
    for operation in operations:
        with_body = operation.method.upper() == "POST"  # GETs have no input that can be invalid
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if with_body else [])
        for mode in modes:

            @given(case=operation.as_strategy(mode).map(_known_model))
            @settings(
                max_examples=30,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=server.url, headers=headers, checks=[not_a_server_error]
                )

            run()
    statuses = {r.http_status for r in server.records(1)}
    assert 200 in statuses  # valid requests got through, with the key
    assert statuses <= {200, 400, 404, 413}
