"""The OpenAI surface as a demanding client meets it (review of the serving API): values of
the wrong JSON type, bodies that are not a JSON object, misspelt fields, unknown routes and a
prompt longer than the context, each a 4xx in OpenAI's error body that names the field, never
coerced, silently dropped or worded for the server's own code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.registry import UpstreamSpec, register_upstream
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    EngineSet,
    Generation,
    SamplingParams,
    TokenStream,
    UpstreamEngine,
    create_app,
)
from modelyard.store import ModelVersion, Store
from tinymodels import rambler_server
from worlds import fake_world, two_tenant_world

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
HELLO = [{"role": "user", "content": "hello there"}]


@dataclass
class Served:
    url: str
    key: str
    clients: ExitStack

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0)
        return self.clients.enter_context(client)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("review")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        key = create_api_key(store, "acme")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(server.base_url, key, clients)


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "invalid_request_error"
    return dict(error)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "acme-support", "messages": HELLO, "max_tokens": 5, **fields}


def test_stream_options_without_stream_is_a_400_as_openai_answers(served: Served) -> None:
    """OpenAI and vLLM refuse ``stream_options`` on a request that does not stream; accepting
    it would silently ignore it."""
    error = _error(served.post(CHAT, _chat(stream_options={"include_usage": True})))
    assert error["param"] == "stream_options", error
    assert "only allowed with stream: true" in error["message"], error
    streamed = served.post(CHAT, _chat(stream=True, stream_options={"include_usage": True}))
    assert streamed.status_code == 200 and '"usage"' in streamed.text


@pytest.mark.parametrize(
    ("path", "body", "param", "sent"),
    [
        (CHAT, _chat(max_tokens="5"), "max_tokens", 'a string ("5")'),
        (CHAT, _chat(max_tokens=True), "max_tokens", "a boolean (true)"),
        (CHAT, _chat(max_tokens=5.0), "max_tokens", "a number (5.0)"),
        (CHAT, _chat(max_completion_tokens="5"), "max_completion_tokens", "a string"),
        (CHAT, _chat(temperature=True), "temperature", "a boolean (true)"),
        (CHAT, _chat(temperature="0.5"), "temperature", 'a string ("0.5")'),
        (CHAT, _chat(top_p="1"), "top_p", "a string"),
        (CHAT, _chat(n="2"), "n", 'a string ("2")'),
        (CHAT, _chat(seed="1"), "seed", 'a string ("1")'),
        (CHAT, _chat(stream="yes"), "stream", 'a string ("yes")'),
        (CHAT, _chat(stream=1), "stream", "an integer (1)"),
        (CHAT, _chat(logprobs="true"), "logprobs", "a string"),
        (
            CHAT,
            _chat(stream=True, stream_options={"include_usage": "yes"}),
            "stream_options.include_usage",
            "a string",
        ),
        (
            COMPLETIONS,
            {"model": "acme-support", "prompt": "hi", "max_tokens": "3"},
            "max_tokens",
            "a string",
        ),
        (
            COMPLETIONS,
            {"model": "acme-support", "prompt": "hi", "logprobs": True},
            "logprobs",
            "a boolean",
        ),
        (
            RESPONSES,
            {"model": "acme-support", "input": "hi", "max_output_tokens": "3"},
            "max_output_tokens",
            'a string ("3")',
        ),
        (
            RESPONSES,
            {"model": "acme-support", "input": "hi", "stream": "false"},
            "stream",
            "a string",
        ),
        ("/v1/feedback", {"request_id": "cmpl-x", "score": "1"}, "score", 'a string ("1")'),
    ],
)
def test_a_value_of_the_wrong_json_type_is_a_400_naming_it(
    served: Served, path: str, body: dict[str, Any], param: str, sent: str
) -> None:
    """OpenAI refuses ``"max_tokens": "5"``; coercing it (or ``true`` to 1, ``"yes"`` to a
    stream) hid the client's bug, or answered as an event stream a client that cannot read one."""
    error = _error(served.post(path, body))
    assert error["param"] == param and error["code"] == "invalid_request"
    assert f"not {sent}" in error["message"], error["message"]


@pytest.mark.parametrize(
    ("content", "headers", "says"),
    [
        (b'{"model": ', {"Content-Type": "application/json"}, "is not valid JSON (Expecting"),
        (b"{", {"Content-Type": "application/json"}, "at character 1"),
        (b"", {"Content-Type": "application/json"}, "the request body is empty"),
        (b"[1, 2]", {"Content-Type": "application/json"}, "is an array, not a JSON object"),
        (b"null", {"Content-Type": "application/json"}, "is null, not a JSON object"),
        (b'"hi"', {"Content-Type": "application/json"}, "is a string, not a JSON object"),
        (b'{"model": "x"}', {"Content-Type": "text/plain"}, "sent as 'text/plain', not JSON"),
        (b"model=x", {"Content-Type": "application/x-www-form-urlencoded"}, "not JSON"),
        (b'{"model": "\xff"}', {"Content-Type": "application/json"}, "it is not UTF-8 (byte 11)"),
    ],
)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, RESPONSES])
def test_a_body_that_is_not_a_json_object_is_a_400_saying_so(
    served: Served, path: str, content: bytes, headers: dict[str, str], says: str
) -> None:
    """Before: ``"param": "10"`` (a character position read as a field) for malformed JSON,
    "Field required" for an empty body, "valid dictionary or object to extract fields from"
    for another content type."""
    error = _error(served.post(path, content=content, headers=headers))
    assert error["param"] is None
    assert says in error["message"] and "Content-Type: application/json" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (
            _chat(stream=True, stream_options={"include_usgae": True}),
            "stream_options.include_usgae",
            "not a parameter this server accepts",
        ),
        (
            _chat(messages=[{"role": "user", "content": "hi", "contents": "more"}]),
            "messages.0",
            "'contents' is not a message field",
        ),
        (
            _chat(messages=[{"role": "user", "content": "hi", "image_url": "http://x/a.png"}]),
            "messages.0",
            "'image_url' is not a message field",
        ),
        (
            _chat(messages=[{"role": "assistant", "content": "hi", "audio": {"id": "a1"}}]),
            "messages.0",
            "'audio' is not a message field",
        ),
        (
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                        ],
                    }
                ]
            ),
            "messages.0.content.1",
            "parts of type 'image_url' are not supported",
        ),
    ],
)
def test_a_misspelt_or_unread_field_is_a_400_never_dropped(
    served: Served, body: dict[str, Any], param: str, says: str
) -> None:
    """Before: a misspelt ``include_usage`` was dropped (no usage chunk, no error), and so was
    any field beside a message's content (an image URL the model never saw)."""
    error = _error(served.post(CHAT, body))
    assert error["param"] == param and says in error["message"], error


def test_a_misspelt_feedback_field_is_a_400(served: Served) -> None:
    """Before: ``commnet`` was dropped and the feedback stored without its comment."""
    r = served.post("/v1/feedback", {"request_id": "cmpl-x", "thumbs": "up", "commnet": "ok"})
    error = _error(r)
    assert error["param"] == "commnet" and "not a parameter" in error["message"]


def test_an_answer_sent_back_as_the_sdk_returned_it_is_still_accepted(served: Served) -> None:
    """The SDK's own message (``refusal``, ``annotations``, ``audio`` and ``function_call``
    at null) goes back into the conversation as it is, as with OpenAI."""
    client = served.client()
    first = client.chat.completions.create(model="acme-support", messages=HELLO, max_tokens=5)
    echoed = first.choices[0].message.model_dump()
    assert {"refusal", "annotations", "audio", "function_call"} <= set(echoed)
    again = client.chat.completions.create(
        model="acme-support",
        messages=[*HELLO, echoed, {"role": "user", "content": "and then?"}],  # type: ignore[list-item]
        max_tokens=5,
    )
    assert again.choices[0].message.content == "and then?"


def test_an_unknown_route_or_method_says_what_is_served(served: Served) -> None:
    """Before: ``{"message": "Not Found"}`` and ``"Method Not Allowed"``."""
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().embeddings.create(model="acme-support", input="hi")
    message = caught.value.message
    assert "Invalid URL (POST /v1/embeddings)" in message and "/v1/chat/completions" in message
    r = httpx.get(served.url + CHAT, headers={"Authorization": f"Bearer {served.key}"})
    error = _error(r, 405)
    assert "GET is not allowed on /v1/chat/completions; use POST" in error["message"]
    assert r.headers["allow"] == "POST"


# -- a prompt longer than the model's context ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The transformers engine on a tiny base (a 256-token context), endpoint ``rambler``."""
    tmp = tmp_path_factory.mktemp("review-tiny")
    with rambler_server(tmp) as (url, _, key), ExitStack() as clients:
        yield Served(url, key, clients)


LONG = "word " * 400  # far over the tiny base's 256 tokens


def test_a_prompt_over_the_context_is_openais_context_length_exceeded(tiny: Served) -> None:
    """Before: ``code: invalid_config`` and ``param: max_tokens`` for a prompt that alone is
    over the context (and the advice to ask for fewer max_tokens). Clients act on OpenAI's
    ``context_length_exceeded`` (LiteLLM's ContextWindowExceededError, context fallbacks)."""
    client = tiny.client()
    cases: list[tuple[str, Any]] = [
        ("messages", lambda: client.chat.completions.create(
            model="rambler", messages=[{"role": "user", "content": LONG}], max_tokens=4)),
        ("messages", lambda: client.chat.completions.create(
            model="rambler", messages=[{"role": "user", "content": LONG}], max_tokens=4,
            stream=True)),
        ("prompt", lambda: client.completions.create(model="rambler", prompt=LONG, max_tokens=4)),
        ("input", lambda: client.responses.create(model="rambler", input=LONG,
                                                   max_output_tokens=4)),
    ]  # fmt: skip
    for param, call in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        error = caught.value
        assert (error.code, error.param) == ("context_length_exceeded", param), error.body
        assert "This model's maximum context length is 256 tokens" in error.message
        assert "Shorten the prompt" in error.message and "max_tokens" not in error.message[-40:]


def test_max_tokens_past_the_context_names_max_tokens_and_how_many_fit(tiny: Served) -> None:
    client = tiny.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="rambler", messages=HELLO, max_tokens=256)
    error = caught.value
    assert (error.code, error.param) == ("context_length_exceeded", "max_tokens")
    prompt_tokens = client.chat.completions.create(
        model="rambler", messages=HELLO, max_tokens=1
    ).usage.prompt_tokens  # type: ignore[union-attr]
    assert f"Ask for at most {256 - prompt_tokens} max_tokens" in error.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="rambler", input="hello there", max_output_tokens=256)
    error = caught.value
    assert (error.code, error.param) == ("context_length_exceeded", "max_output_tokens")
    assert "max_output_tokens is 256" in error.message


def test_an_upstreams_context_length_exceeded_reaches_the_client_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream (OpenAI, vLLM) that refuses a prompt over its context: the client gets
    ``context_length_exceeded`` and the upstream's ``param``, not ``invalid_config``."""
    vendor = FastAPI()

    @vendor.post("/v1/chat/completions")
    def refuse() -> JSONResponse:
        error = {"message": "This model's maximum context length is 8192 tokens. However, your "
                 "messages resulted in 9000 tokens.", "type": "invalid_request_error",
                 "param": "messages", "code": "context_length_exceeded"}  # fmt: skip
        return JSONResponse({"error": error}, status_code=400)

    monkeypatch.setenv("MODELYARD_TEST_REVIEW_KEY", "sk-vendor")
    with (
        BackgroundServer(vendor) as upstream,
        Store.open(f"sqlite:///{tmp_path / 'gw.db'}") as store,
    ):
        artifacts = ArtifactStore(tmp_path / "artifacts")
        fake_world(store, tenant="acme", model="bot", endpoint=None, versions=1)
        spec = UpstreamSpec(base_url=upstream.base_url + "/v1", model="gpt",
                            api_key_env="MODELYARD_TEST_REVIEW_KEY", max_retries=0)  # fmt: skip
        register_upstream(store, artifacts, spec, name="bot")
        store.create_endpoint("acme-support", model_ref="bot:2", tenant="acme")
        key = create_api_key(store, "acme")[1]
        engine = EngineSet(EchoEngine(), UpstreamEngine(artifacts, store=store))
        app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
        try:
            with (
                BackgroundServer(app) as server,
                openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as c,
                pytest.raises(openai.BadRequestError) as caught,
            ):
                c.chat.completions.create(model="acme-support", messages=HELLO, max_tokens=4)
        finally:
            engine.close()
    error = caught.value
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert "maximum context length is 8192 tokens" in error.message


def test_a_streamed_answer_of_several_choices_has_one_id(served: Served) -> None:
    """OpenAI's chunks of one answer share one id (clients gather a stream by it); before,
    each choice's chunks carried its own record id. The id is the first choice's, as in the
    whole answer, and feedback is sent against it."""
    client = served.client()
    for stream in (
        client.chat.completions.create(
            model="acme-support", messages=HELLO, n=3, stream=True,
            stream_options={"include_usage": True},
        ),
        client.completions.create(model="acme-support", prompt=["a b", "c d"], stream=True),
    ):  # fmt: skip
        chunks = list(stream)
        assert {c.id for c in chunks} == {chunks[0].id}, [c.id for c in chunks]
        r = served.post("/v1/feedback", {"request_id": chunks[0].id, "thumbs": "up"})
        assert r.status_code == 200, r.text


class TwoCalls(EchoEngine):
    """Answers every prompt with two calls of ``lookup`` (as a model making parallel calls)."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        text = "\n".join(
            f'<tool_call>\n{{"name": "lookup", "arguments": {{"id": {i}}}}}\n</tool_call>'
            for i in (1, 2)
        )
        stream = TokenStream()
        stream.push(text)
        stream.finish(Generation(text, len(prompt.split()), 24, "stop", ttft_ms=0.0))
        return stream


def test_parallel_tool_calls_false_is_honoured(tmp_path: Path) -> None:
    """Before: accepted as having no effect, and an answer calling two functions returned
    both; OpenAI makes at most one call with ``parallel_tool_calls: false``."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="chat-fallback")
        key = create_api_key(store, "acme")[1]
        app = create_app(store, TwoCalls(), refresh_seconds=0.2, heartbeat_s=None)
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            ask: Any = {"model": "acme-support", "messages": HELLO, "tools": tools}
            both = client.chat.completions.create(**ask).choices[0].message.tool_calls
            assert both is not None and len(both) == 2  # parallel calls by default
            whole = client.chat.completions.create(**ask, parallel_tool_calls=False)
            calls = whole.choices[0].message.tool_calls
            assert calls is not None and [c.function.arguments for c in calls] == ['{"id": 1}']
            assert whole.choices[0].finish_reason == "tool_calls"
            assert whole.choices[0].message.content is None
            streamed = client.chat.completions.create(**ask, parallel_tool_calls=False, stream=True)
            deltas = [
                call
                for chunk in streamed
                for c in chunk.choices
                for call in c.delta.tool_calls or []
            ]
            assert [d.function.arguments for d in deltas if d.function] == ['{"id": 1}']


def test_a_key_in_the_url_is_refused_even_beside_a_good_header(served: Served) -> None:
    """Before: refused only when no Authorization header came with it, so a client that sent
    its key in the URL too (where proxies and logs keep it) was answered and never told."""
    r = served.post(CHAT + f"?api_key={served.key}", _chat())
    assert r.status_code == 401, r.text
    assert "'api_key'" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "authentication_error"
    assert served.post(CHAT, _chat()).status_code == 200
