"""The upstream engine (the gateway): an endpoint version answered by another OpenAI-compatible
server, here a second real modelyard server, mixed with a local version in one traffic plan;
upstream faults (429, 500, timeouts, a refused key) from a small fault-injecting server; the
client's non-streamed requests (the vllm engine's whole answers) and cutting them short."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.errors import ConfigError, UpstreamError
from modelyard.registry import UpstreamSpec, register_upstream
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    EngineSet,
    SamplingParams,
    TokenStream,
    UpstreamClient,
    UpstreamEngine,
    create_app,
)
from modelyard.serving._interruptible import InterruptibleTransport
from modelyard.store import Store
from worlds import fake_world

UPSTREAM_KEY_ENV = "MODELYARD_TEST_VENDOR_KEY"


@dataclass
class Vendor:
    """The upstream: a second modelyard server with its own store, tenant and key."""

    url: str
    key: str


@pytest.fixture
def vendor(tmp_path: Path) -> Iterator[Vendor]:
    with Store.open(f"sqlite:///{tmp_path / 'vendor.db'}") as store:
        fake_world(store, tenant="vendor", model="vendor-bot", endpoint="vendor-chat")
        _, key = create_api_key(store, "vendor")
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server:
            yield Vendor(server.base_url + "/v1", key)


@dataclass
class Gateway:
    url: str
    store: Store
    artifacts: ArtifactStore
    key: str
    db: Path
    clients: ExitStack  # the openai clients of a test, closed with the server


def _gateway(
    tmp_path: Path, spec: UpstreamSpec, weights: dict[int, int] | None
) -> Iterator[Gateway]:
    """acme's endpoint ``acme-support``: bot:1 (local, echo) and bot:2 (the upstream ``spec``)
    with ``weights`` (None: the upstream alone)."""
    db = tmp_path / "gateway.db"
    with Store.open(f"sqlite:///{db}") as store:
        artifacts = ArtifactStore(tmp_path / "artifacts")
        fake_world(store, tenant="acme", model="bot", endpoint=None, versions=1)
        upstream = register_upstream(store, artifacts, spec, name="bot")
        assert upstream.ref == "bot:2" and upstream.kind == "upstream"
        store.create_endpoint("acme-support", model_ref="bot:2" if weights is None else "bot:1",
                              tenant="acme")  # fmt: skip
        if weights is not None:
            store.set_traffic("acme-support", weights)
        _, key = create_api_key(store, "acme")
        engine = EngineSet(EchoEngine(), UpstreamEngine(artifacts, store=store))
        app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
        try:
            with BackgroundServer(app) as server, ExitStack() as clients:
                yield Gateway(server.base_url, store, artifacts, key, db, clients)
        finally:
            engine.close()


@pytest.fixture
def gateway(tmp_path: Path, vendor: Vendor, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, vendor.key)
    spec = UpstreamSpec(base_url=vendor.url, model="vendor-chat", api_key_env=UPSTREAM_KEY_ENV,
                        input_per_1k=0.5, output_per_1k=1.5)  # fmt: skip
    yield from _gateway(tmp_path, spec, {1: 90, 2: 10})


def _client(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
    return gw.clients.enter_context(client)


def _users_by_version(gw: Gateway) -> dict[str, str]:
    """A user that lands on each version of the 90/10 plan (routing by user is stable)."""
    client, found = _client(gw), dict[str, str]()
    for i in range(300):
        raw = client.chat.completions.with_raw_response.create(
            model="acme-support", messages=[{"role": "user", "content": "hello there"}],
            user=f"user-{i}", max_tokens=8,
        )  # fmt: skip
        found.setdefault(raw.headers["x-modelyard-version"], f"user-{i}")
        if len(found) == 2:
            return found
    raise AssertionError(f"300 users all landed on {found}")


def test_a_plan_mixes_a_local_version_and_an_upstream(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP clients' included
    users = _users_by_version(gateway)
    client = _client(gateway)
    up = users["bot:2"]
    # chat, streamed chat and completions through the upstream, with the official client
    chat = client.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": "where is my parcel"}],
        user=up, max_tokens=16,
    )  # fmt: skip
    assert chat.choices[0].message.content and chat.usage and chat.usage.prompt_tokens > 0
    streamed = client.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": "where is my parcel"}],
        user=up, max_tokens=16, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    done = client.completions.create(
        model="acme-support", prompt="track order 42", user=up, max_tokens=8
    )
    assert done.choices[0].text == "track order 42"  # the vendor's echo of the prompt
    local = client.completions.create(
        model="acme-support", prompt="track order 42", user=users["bot:1"], max_tokens=8
    )
    assert local.choices[0].text == "track order 42"

    # every request has its record, with the version that answered and its real usage
    records = _records(gateway)
    upstream = [r for r in records if r["version"] == "bot:2"]
    assert len(upstream) >= 4 and all(r["status"] == "ok" for r in upstream)
    assert {r["version"] for r in records} == {"bot:1", "bot:2"}
    # the upstream's base carries its prices: costs are computed like any version's
    prices = {p.base_model: p for p in gateway.store.list_token_prices()}
    base = gateway.store.get_model_version("bot", 2).base_model
    assert base.startswith("vendor-chat@127.0.0.1:") and prices[base].output_per_1k == 1.5

    # the key is nowhere: not in the store, the artifacts, the logs or any answer
    vendor_key = _env_key()
    assert vendor_key.encode() not in gateway.db.read_bytes()
    for path in gateway.artifacts.root.rglob("*"):
        if path.is_file():
            assert vendor_key.encode() not in path.read_bytes(), path
    assert vendor_key not in caplog.text
    assert vendor_key not in repr(gateway.store.list_audit_events())
    assert vendor_key not in httpx.get(gateway.url + "/metrics").text
    assert vendor_key not in chat.model_dump_json()


def _env_key() -> str:
    import os

    return os.environ[UPSTREAM_KEY_ENV]


def _records(gw: Gateway) -> list[dict[str, Any]]:
    """The gateway's records with their version refs, once the writer has written them."""
    versions = {v.id: v.ref for v in gw.store.list_model_versions("bot")}
    for _ in range(100):
        rows = gw.store.query_records(endpoint="acme-support", limit=None)
        if rows and all(r["status"] != "running" for r in rows):
            break
        asyncio.run(asyncio.sleep(0.05))
    return [{**r, "version": versions.get(r["version_id"])} for r in rows]


# -- faults ---------------------------------------------------------------------------------


class Faults:
    """A fake upstream whose next answers are scripted: ``plan`` is a list of what to do per
    call ("429", "500", "401", "slow", "ok"); the last entry repeats."""

    def __init__(self, plan: list[str]) -> None:
        self.plan = plan
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []  # every request's body, as received
        self.sent = 0  # chunks of "drip" answers sent
        self.dripping = threading.Event()  # set while a "drip" or "hold" answer runs
        self.left = threading.Event()  # set when a "drip" answer was cut off by the caller
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.answer)
        self.app.post("/v1/completions")(self.answer)

    async def answer(self, request: Request) -> Any:
        with self.lock:
            what = self.plan[min(self.calls, len(self.plan) - 1)]
            self.calls += 1
        body = await request.json()
        self.bodies.append(body)
        if what == "429":
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "0"})
        if what == "quota":  # OpenAI's answer when the account's credit is spent
            error = {"message": "You exceeded your current quota", "type": "insufficient_quota",
                     "code": "insufficient_quota", "param": None}  # fmt: skip
            return JSONResponse({"error": error}, 429)
        if what == "500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if what == "400":  # the client's own request: too long for the provider's model
            error = {"message": "This model's maximum context length is 8 tokens",
                     "code": "context_length_exceeded", "param": "messages"}  # fmt: skip
            return JSONResponse({"error": error}, 400)
        if what == "401":
            return JSONResponse({"error": {"message": "bad key"}}, 401)
        if what == "404":  # vLLM's answer for an adapter it does not hold
            message = f"The model `{body.get('model')}` does not exist."
            return JSONResponse({"error": {"message": message}}, 404)
        if what == "slow":
            await asyncio.sleep(3)
        if what == "drip":
            return StreamingResponse(self.drip(), media_type="text/event-stream")
        if what == "hold":
            return await self.hold(request)
        if what == "cut":  # a stream closed cleanly mid-answer (an idle timeout, a proxy)

            async def cut() -> Any:
                half = {"choices": [{"index": 0, "delta": {"content": "hal"}}]}
                yield f"data: {json.dumps(half)}\n\n"

            return StreamingResponse(cut(), media_type="text/event-stream")
        if what == "json":  # a server that does not stream: the whole answer, as JSON
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            message = {"role": "assistant", "content": "whole"}
            return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage}  # fmt: skip
        if not body.get("stream"):
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            return {"choices": [{"index": 0, "text": "fine", "finish_reason": "stop"}],
                    "usage": usage, "metrics": {"generation_time_ms": 0.0}}  # fmt: skip

        async def events() -> Any:
            chat = "messages" in body
            piece = {"delta": {"content": "fine"}} if chat else {"text": "fine"}
            yield f"data: {json.dumps({'choices': [{'index': 0, **piece}]})}\n\n"
            end: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            end["delta" if chat else "text"] = {} if chat else ""
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            done = {"choices": [end], "usage": usage}
            yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def hold(self, request: Request) -> Any:
        """A non-streamed answer that takes 20 s, unless the caller goes away."""
        self.dripping.set()
        for _ in range(400):
            if await request.is_disconnected():
                self.left.set()
                return JSONResponse({"error": {"message": "gone"}}, 499)
            await asyncio.sleep(0.05)
        return {"choices": [{"index": 0, "text": "late", "finish_reason": "stop"}]}

    async def drip(self) -> Any:
        """A word every 50 ms for 20 s, unless the caller goes away."""
        self.dripping.set()
        try:
            for _ in range(400):
                self.sent += 1
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': 'word '}]})}\n\n"
                await asyncio.sleep(0.05)
        finally:
            if self.sent < 400:
                self.left.set()


@pytest.fixture
def faulty(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Gateway, Faults]]:
    faults = Faults(request.param)
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="m", timeout_s=1.0,
                            max_retries=2)  # fmt: skip
        for gw in _gateway(tmp_path, spec, None):
            yield gw, faults


def _ask(gw: Gateway) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions", timeout=30,
        headers={"Authorization": f"Bearer {gw.key}"},
        json={"model": "acme-support", "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_upstream_gets_the_token_cap_under_the_name_it_takes(
    tmp_path: Path, field: str
) -> None:
    """OpenAI's o-series and gpt-5 refuse max_tokens in chat requests: an upstream registered
    with --max-tokens-field max_completion_tokens is sent that name alone (legacy completions
    keep max_tokens, the only name they have)."""
    faults = Faults(["ok"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="o4-mini",
                            max_tokens_field=field)  # fmt: skip
        for gw in _gateway(tmp_path, spec, None):
            client = _client(gw)
            chat = client.chat.completions.create(
                model="acme-support", messages=[{"role": "user", "content": "hi"}], max_tokens=7
            )
            assert chat.choices[0].message.content == "fine"
            client.completions.create(model="acme-support", prompt="hi", max_tokens=5)
    chat_body, completion_body = faults.bodies
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    assert chat_body[field] == 7 and other not in chat_body
    assert completion_body["max_tokens"] == 5 and "max_completion_tokens" not in completion_body
    with pytest.raises(ConfigError, match="max_tokens_field is 'max_output_tokens'"):
        UpstreamSpec(base_url="http://x/v1", model="m", max_tokens_field="max_output_tokens")


def test_the_upstream_gets_the_penalties_and_the_logit_bias_as_sent(tmp_path: Path) -> None:
    """A provider (or vLLM, which is sent the same body) applies them; nothing sent at its
    no-op value is forwarded."""
    faults = Faults(["ok", "ok"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="gpt-4o-mini")
        for gw in _gateway(tmp_path, spec, None):
            client = _client(gw)
            client.chat.completions.create(
                model="acme-support", messages=[{"role": "user", "content": "hi"}],
                presence_penalty=0.5, frequency_penalty=-1.5, logit_bias={"50256": -100},
            )  # fmt: skip
            client.completions.create(model="acme-support", prompt="hi", presence_penalty=0)
    shaped, plain = faults.bodies
    assert (shaped["presence_penalty"], shaped["frequency_penalty"]) == (0.5, -1.5)
    assert shaped["logit_bias"] == {"50256": -100.0}
    assert not {"presence_penalty", "frequency_penalty", "logit_bias"} & set(plain)


def test_the_upstream_gets_a_tools_strict(tmp_path: Path) -> None:
    """OpenAI constrains a ``strict`` tool's arguments under ``auto`` too (the OpenAI Agents
    SDK sends ``strict: true`` by default): an upstream was sent the tool without it."""
    faults = Faults(["ok"])
    params = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"],
              "additionalProperties": False}  # fmt: skip
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="gpt-4o-mini")
        for gw in _gateway(tmp_path, spec, None):
            _client(gw).chat.completions.create(
                model="acme-support", messages=[{"role": "user", "content": "hi"}], tools=[
                    {"type": "function", "function": {"name": "find", "parameters": params,
                                                      "strict": True}},
                    {"type": "function", "function": {"name": "free", "strict": False}},
                ],
            )  # fmt: skip
    [body] = faults.bodies
    sent = {t["function"]["name"]: t["function"] for t in body["tools"]}
    assert sent["find"] == {"name": "find", "parameters": params, "strict": True}
    assert "strict" not in sent["free"]


def test_the_upstream_gets_each_messages_name(tmp_path: Path) -> None:
    """OpenAI tells participants apart by a message's ``name``; it was dropped on the way."""
    faults = Faults(["ok"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="gpt-4o-mini")
        for gw in _gateway(tmp_path, spec, None):
            _client(gw).chat.completions.create(
                model="acme-support", messages=[
                    {"role": "system", "content": "Moderate.", "name": "rules"},
                    {"role": "user", "content": "hi", "name": "alice"},
                    {"role": "user", "content": "hello"},
                ],
            )  # fmt: skip
    [body] = faults.bodies
    assert [m.get("name") for m in body["messages"]] == ["rules", "alice", None]


@pytest.mark.parametrize("faulty", [["429", "500", "ok"]], indirect=True)
def test_retries_mend_passing_faults(faulty: tuple[Gateway, Faults]) -> None:
    gw, faults = faulty
    r = _ask(gw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fine"
    assert faults.calls == 3


@pytest.mark.parametrize("faulty", [["json"]], indirect=True)
def test_an_upstream_that_does_not_stream_is_read_whole(faulty: tuple[Gateway, Faults]) -> None:
    """An upstream (or a proxy before it) that answers a streamed request with one JSON
    body: its answer reaches the client (before: an empty answer, 200)."""
    gw, _ = faulty
    r = _ask(gw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "whole"
    assert r.json()["usage"]["completion_tokens"] == 1
    streamed = httpx.post(
        gw.url + "/v1/chat/completions", timeout=30,
        headers={"Authorization": f"Bearer {gw.key}"},
        json={"model": "acme-support", "messages": [{"role": "user", "content": "hi"}],
              "stream": True},
    )  # fmt: skip
    assert streamed.status_code == 200 and '"content": "whole"' in streamed.text.replace(
        '":"', '": "'
    ), streamed.text


@pytest.mark.parametrize(
    ("faulty", "status", "code", "said", "logged"),
    [
        (["429"], 503, "upstream_busy", "its provider is rate limiting requests (429)",
         "is rate limiting modelyard (429): slow down"),
        (["500"], 502, "upstream_error", "its provider failed (5xx)", "failed with 500: boom"),
        (["slow"], 504, "upstream_timeout", "its provider did not answer within 1 s",
         "did not answer within 1 s"),
        (["401"], 502, "upstream_error", "its provider refused the request (4xx)",
         "refused modelyard's credential (401): bad key"),
        # before: retried, then 503 upstream_busy with Retry-After, which clients retry
        (["quota"], 502, "upstream_error", "its provider refused the request (4xx)",
         "modelyard's account has no quota left (429 insufficient_quota)"),
        # before: the half answer, 200, finish_reason stop
        (["cut"], 502, "upstream_error", "its provider could not be reached or broke off",
         "could not be reached or broke off: RemoteProtocolError"),
    ],
    indirect=["faulty"],
)  # fmt: skip
def test_upstream_faults_are_clear_errors_after_bounded_retries(
    faulty: tuple[Gateway, Faults], status: int, code: str, said: str, logged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The tenant is told what happened in its terms; the upstream's host, where the key
    comes from and whose account it is are the operator's: in the server's log (once per
    failure, at warning) and the inference record, never in the body (before: "the upstream
    at 127.0.0.1:PORT refused modelyard's credential ... Check the key in the environment
    variable ...")."""
    gw, faults = faulty
    caplog.set_level(logging.INFO)
    where = gw.store.get_model_version("bot", 2).base_model.split("@", 1)[1]  # the host
    r = _ask(gw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"].startswith(f"bot:2: {said}"), error
    # no retry for a refused key or quota, nor once text came
    never = code == "upstream_error" and faults.plan[0] in ("401", "quota", "cut")
    assert faults.calls == (1 if never else 3)  # else 2 retries
    if status == 503:
        assert r.headers["retry-after"] == "1" and "Retry-After" in error["message"]
    # the official client sees the same body, with nothing of the operator's in it
    client = _client(gw)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == status
    # a streamed response: an error event once text was sent ("cut"), else the error body
    streamed = httpx.post(
        gw.url + "/v1/responses", timeout=30, headers={"Authorization": f"Bearer {gw.key}"},
        json={"model": "acme-support", "input": "hi", "stream": True},
    )  # fmt: skip
    assert said in streamed.text and (streamed.status_code == 200) == (faults.plan[0] == "cut")
    body = json.dumps(raised.value.body) + r.text + streamed.text
    assert said in str(raised.value.body)
    for secret in (where, "127.0.0.1", UPSTREAM_KEY_ENV, "environment variable",
                   "modelyard's", "Check the key", "upstream at"):  # fmt: skip
        assert secret not in body, (secret, body)
    # the operator's: one warning per failed request, with the host and the upstream's words
    warned = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno == logging.WARNING and "upstream request of bot:2" in rec.getMessage()
    ]
    assert len(warned) == 3, warned  # one per failed request (httpx, the SDK, streamed)
    assert all(f"the upstream at {where}" in line and logged in line for line in warned), warned
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR and where in
                rec.getMessage()]  # fmt: skip
    records = _records(gw)
    assert records and records[0]["status"] == "error" and records[0]["version"] == "bot:2"
    assert all(f"the upstream at {where}" in (rec["error"] or "") and logged in rec["error"]
               for rec in records), records  # fmt: skip


def test_a_refused_key_names_its_variable_to_the_operator_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream whose key is in an environment variable (as OpenAI's) refuses it: the
    variable's name is in the server's log line and the record, on no /v1 route, streamed
    or not (before: "Check the key in the environment variable MODELYARD_TEST_VENDOR_KEY"
    in the body); the key's value is in none of them."""
    secret = "sk-test-not-a-real-key"
    monkeypatch.setenv(UPSTREAM_KEY_ENV, secret)
    caplog.set_level(logging.INFO)
    faults = Faults(["401"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="m",
                            api_key_env=UPSTREAM_KEY_ENV)  # fmt: skip
        for gw in _gateway(tmp_path, spec, None):
            client = _client(gw)
            bodies = []
            for route in ("chat", "completions", "responses"):
                with pytest.raises(openai.APIStatusError) as raised:
                    if route == "chat":
                        client.chat.completions.create(
                            model="acme-support", messages=[{"role": "user", "content": "hi"}]
                        )
                    elif route == "completions":
                        client.completions.create(model="acme-support", prompt="hi")
                    else:
                        client.responses.create(model="acme-support", input="hi")
                assert raised.value.status_code == 502, route
                bodies.append(json.dumps(raised.value.body))
            chat = {"model": "acme-support", "messages": [{"role": "user", "content": "hi"}]}
            for path, body in [("chat/completions", {**chat, "stream": True}),
                               ("responses", {"model": "acme-support", "input": "hi",
                                              "stream": True})]:  # fmt: skip
                streamed = httpx.post(f"{gw.url}/v1/{path}", json=body, timeout=30,
                                      headers={"Authorization": f"Bearer {gw.key}"})  # fmt: skip
                bodies.append(streamed.text)
            records = _records(gw)
    where = server.base_url.removeprefix("http://")
    for body in bodies:
        assert "bot:2: its provider refused the request (4xx)" in body, body
        for operators in (where, UPSTREAM_KEY_ENV, "credential", "modelyard's", secret):
            assert operators not in body, (operators, body)
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING
              and "upstream request of bot:2" in rec.getMessage()]  # fmt: skip
    assert len(warned) == faults.calls == 5, warned  # one line per failed request
    for line in warned:
        assert f"the upstream at {where} refused modelyard's credential (401): bad key" in line
        assert f"Check the key in the environment variable {UPSTREAM_KEY_ENV}" in line
    assert len(records) == 5 and all(
        f"{where} refused modelyard's credential" in r["error"] and UPSTREAM_KEY_ENV in r["error"]
        for r in records
    ), records
    assert secret not in caplog.text and secret not in json.dumps(records, default=str)


def test_a_key_not_set_is_named_to_the_operator_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server started without the upstream's key in its environment (before: the body said
    "the upstream key MODELYARD_TEST_VENDOR_KEY is not set ... Set MODELYARD_TEST_VENDOR_KEY
    in the environment of the process ...")."""
    monkeypatch.delenv(UPSTREAM_KEY_ENV, raising=False)
    caplog.set_level(logging.INFO)
    faults = Faults(["ok"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="m",
                            api_key_env=UPSTREAM_KEY_ENV)  # fmt: skip
        for gw in _gateway(tmp_path, spec, None):
            with pytest.raises(openai.APIStatusError) as raised:
                _client(gw).completions.create(model="acme-support", prompt="hi")
            records = _records(gw)
    body = json.dumps(raised.value.body)
    assert raised.value.status_code == 502 and "bot:2: its provider failed;" in body, body
    assert UPSTREAM_KEY_ENV not in body and "127.0.0.1" not in body, body
    assert faults.calls == 0 and UPSTREAM_KEY_ENV in records[0]["error"]
    assert f"{UPSTREAM_KEY_ENV} is not set" in caplog.text


@pytest.mark.parametrize("faulty", [["400"]], indirect=True)
def test_a_refusal_of_the_clients_own_request_passes_the_providers_words(
    faulty: tuple[Gateway, Faults],
) -> None:
    """A 4xx about the request itself is the tenant's to mend: the provider's reason and
    param reach it (a 400, never retried), and still not the upstream's host."""
    gw, faults = faulty
    with pytest.raises(openai.BadRequestError) as raised:
        _client(gw).chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": "hi"}]
        )
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "messages", error
    assert "maximum context length is 8 tokens" in error["message"], error
    assert "127.0.0.1" not in json.dumps(error) and faults.calls == 1


def test_registry_upstream_cli_never_takes_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    r = modelyard(
        "registry", "upstream", "gpt", "--base-url", "https://api.example.com/v1",
        "--upstream-model", "gpt-4o-mini", "--api-key-env", "OPENAI_API_KEY",
        "--price-input", "0.15", "--price-output", "0.6", "--json", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    assert shown["upstream"]["api_key"] == {"env": "OPENAI_API_KEY"}
    assert shown["version"]["kind"] == "upstream"
    r = modelyard("registry", "upstream", "gpt", "--base-url", "ftp://x", "--upstream-model",
                  "m", home=home)  # fmt: skip
    assert r.code == 2 and "--base-url is 'ftp://x'" in r.err and "Traceback" not in r.err
    r = modelyard("registry", "export", "gpt:1", "--out", str(tmp_path / "out"), home=home)
    assert r.code == 2 and "upstream" in r.err and "no weights" in r.err


@pytest.mark.parametrize("faulty", [["drip"]], indirect=True)
def test_a_client_that_leaves_cancels_the_upstream_request(
    faulty: tuple[Gateway, Faults],
) -> None:
    gw, faults = faulty
    body = {"model": "acme-support", "prompt": "go", "max_tokens": 200, "stream": True}
    headers = {"Authorization": f"Bearer {gw.key}"}
    with httpx.stream("POST", gw.url + "/v1/completions", json=body, headers=headers,
                      timeout=30) as r:  # fmt: skip
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    # the gateway noticed at its next chunk and closed the upstream connection
    assert faults.left.wait(10), f"the upstream sent {faults.sent} chunks and was not cut off"
    assert faults.sent < 400
    records = _records(gw)
    assert [r["status"] for r in records] == ["cancelled"], records  # recorded as such


# -- the client's non-streamed requests (the vllm engine's whole answers) ---------------------


@pytest.fixture
def faults_at(request: pytest.FixtureRequest) -> Iterator[tuple[Faults, UpstreamClient]]:
    """``Faults`` and a client of it on an ``InterruptibleTransport`` (as the vllm engine's)."""
    faults = Faults(request.param)
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="m", timeout_s=30.0,
                            max_retries=0)  # fmt: skip
        client = UpstreamClient(spec, transport=InterruptibleTransport(4))
        try:
            yield faults, client
        finally:
            client.close()


def _whole(client: UpstreamClient) -> TokenStream:
    out = TokenStream(whole=True)
    threading.Thread(
        target=client.run, args=("go", SamplingParams(max_tokens=8), out),
        kwargs={"what": "bot:2", "whole": True}, daemon=True,
    ).start()  # fmt: skip
    return out


@pytest.mark.parametrize("faults_at", [["404"]], indirect=True)
def test_a_404_names_the_model_the_request_named(
    faults_at: tuple[Faults, UpstreamClient],
) -> None:
    """On vLLM a version is asked for by its adapter's name: a 404 named the spec's base
    model instead, which vLLM does hold."""
    _, client = faults_at
    out = TokenStream(whole=True)
    client.run("go", SamplingParams(max_tokens=8), out, what="bot:2", model="v7", whole=True)
    with pytest.raises(UpstreamError, match=r"for model 'v7' \(404\): The model `v7` does not"):
        out.result()


@pytest.mark.parametrize("faults_at", [["ok"]], indirect=True)
def test_a_whole_answer_is_one_response_with_its_usage(
    faults_at: tuple[Faults, UpstreamClient],
) -> None:
    faults, client = faults_at
    gen = _whole(client).result()
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens) == ("fine", 3, 1)
    assert gen.finish_reason == "stop" and "usage" not in gen.extra  # the upstream's counts
    assert gen.ttft_ms is not None and gen.ttft_ms > 0  # the wait, less the decoding (0 ms)
    assert faults.calls == 1


@pytest.mark.parametrize(
    ("faults_at", "error", "said"),
    [(["500"], UpstreamError, "failed with 500"), (["401"], UpstreamError, "credential")],
    indirect=["faults_at"],
)
def test_a_whole_answers_failure_is_the_same_error_as_a_streamed_ones(
    faults_at: tuple[Faults, UpstreamClient], error: type[Exception], said: str
) -> None:
    _, client = faults_at
    with pytest.raises(error, match=said):
        _whole(client).result()


@pytest.mark.parametrize("faults_at", [["hold"]], indirect=True)
def test_a_cancelled_whole_answer_cuts_its_connection_at_once(
    faults_at: tuple[Faults, UpstreamClient],
) -> None:
    """Blocked in a non-streamed request, the client's thread is freed by the consumer's
    cancel, and the upstream sees its caller leave (vLLM aborts the request then)."""
    faults, client = faults_at
    out = _whole(client)
    assert faults.dripping.wait(10)
    out.cancel()
    gen = out.result()
    assert gen.finish_reason == "cancelled" and gen.text == ""
    assert faults.left.wait(5), "the upstream never saw its caller leave"
    # the pool serves the next request on a fresh connection
    faults.plan = ["ok"]
    assert _whole(client).result().text == "fine"
