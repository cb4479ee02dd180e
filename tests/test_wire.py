"""What a client may send: request bodies checked at the border, over HTTP.

Text that is not valid Unicode, sampling parameters out of range and OpenAI
parameters this server does not implement are 400s in OpenAI's error body,
naming the parameter; what SDKs send by default keeps working; and a client's
mistake that only the engine finds is recorded as ``refused`` (a 4xx), which
rollout guards never count as the version's failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.delivery import TrafficSample, evaluate_guards
from modelyard.errors import ConfigError
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    SamplingParams,
    TokenStream,
    create_app,
)
from modelyard.store import InferenceRecord, ModelVersion, Store
from waiting import until
from worlds import two_tenant_world

CHAT = {"model": "acme-support", "messages": [{"role": "user", "content": "vpn is down"}]}
COMPLETION = {"model": "acme-support", "prompt": "vpn is down"}


class PickyEngine(EchoEngine):
    """Echoes, except that it finds a client's mistake in a prompt saying ``bad`` only while
    generating (as a real engine finds what no border check can): the stream fails with a
    ``ConfigError``, a 400."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        if "bad" not in prompt:
            return super().stream(version, prompt, params)
        stream = TokenStream()
        stream.fail(ConfigError("the prompt asks for what this model cannot do", param="prompt"))
        return stream


@dataclass
class Served:
    store: Store
    url: str
    key: str
    client: openai.OpenAI
    version: ModelVersion

    def post(self, path: str, body: Any) -> httpx.Response:
        """A raw body (``str``: sent as is, e.g. with escapes json.dumps would not write)."""
        content = body if isinstance(body, str) else json.dumps(body)
        return httpx.post(
            self.url + path,
            content=content.encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            timeout=30,
        )


def _serve(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        versions = two_tenant_world(store, tenants=("acme",), versions=1)["acme"]
        _, key = create_api_key(store, "acme")
        app = create_app(store, PickyEngine(), refresh_seconds=0.1)
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            yield Served(store, server.base_url, key, client, versions[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("wire"))


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Served]:
    """A server of its own (a test that counts records)."""
    yield from _serve(tmp_path)


def _refused(response: httpx.Response, param: str, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], error


# -- text that is not valid Unicode ---------------------------------------------------------

SURROGATE = "\ud800"  # json.dumps writes it as the escape \ud800, which JSON allows


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": SURROGATE}]},
         "messages.0.content"),
        ("/v1/chat/completions", {**CHAT, "messages": [
            {"role": "system", "content": "ok"}, {"role": "user", "content": "a" + SURROGATE}]},
         "messages.1.content"),
        ("/v1/chat/completions", {**CHAT, "user": "\udc00"}, "user"),
        ("/v1/chat/completions", {**CHAT, "stop": SURROGATE}, "stop"),
        ("/v1/chat/completions", {**CHAT, "stop": ["fine", SURROGATE]}, "stop.1"),
        ("/v1/chat/completions", {**CHAT, "model": SURROGATE}, "model"),
        ("/v1/chat/completions", {**CHAT, "metadata": {"k": SURROGATE}}, "metadata.k"),
        ("/v1/completions", {**COMPLETION, "prompt": "x" + SURROGATE}, "prompt"),
        ("/v1/completions", {**COMPLETION, "user": SURROGATE, "stream": True}, "user"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_naming_its_field(
    served: Served, path: str, body: dict[str, Any], param: str
) -> None:
    _refused(served.post(path, body), param, "lone surrogate", "not valid Unicode")
    # the server is still there, and answers the next request
    assert served.client.chat.completions.create(**CHAT).choices[0].message.content  # type: ignore[call-overload]


def test_bytes_that_are_not_utf8_are_a_400(served: Served) -> None:
    response = httpx.post(
        served.url + "/v1/completions",
        content=b'{"model": "acme-support", "prompt": "\xff\xfe"}',
        headers={"Authorization": f"Bearer {served.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "error" in response.json()


# -- sampling parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "fragment"),
    [
        ("temperature", 1e-40, "0 (greedy) or a value from 0.01 to 2"),
        ("temperature", 2.5, "less than or equal to 2"),
        ("temperature", -0.5, "greater than or equal to 0"),
        ("top_p", 0, "greater than 0"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("seed", 2**70, "less than or equal to 18446744073709551615"),
        ("seed", -(2**64), "greater than or equal to -9223372036854775808"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("max_tokens", 10**30, "above this server's limit of 256"),
        ("max_completion_tokens", 0, "greater than or equal to 1"),
        ("n", 9, "ask for 1 to 8 choices"),
        ("stop", ["a", "b", "c", "d", "e"], "at most 4"),
        ("stop", "x" * 300, "at most 256"),
        ("presence_penalty", 2.5, "less than or equal to 2"),
        ("frequency_penalty", -3, "greater than or equal to -2"),
        ("logit_bias", {"abc": 10}, "key 'abc' is not a token id"),
        ("logit_bias", {"-5": 10}, "key '-5' is not a token id"),
        ("logit_bias", {"5": 101}, "the bias of token 5 is 101; a bias is a number from -100"),
        ("logit_bias", {"5": "high"}, "the bias of token 5 is 'high'"),
        ("logit_bias", [5], "must be an object of token ids to biases"),
        ("logit_bias", {str(i): 1 for i in range(1025)}, "send at most 1024"),
    ],
)
def test_sampling_parameters_out_of_range_are_400s_naming_them(
    served: Served, param: str, value: Any, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, **{param: value})  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert info.value.param == param
    assert fragment in info.value.message
    # the same over the text completions route
    _refused(served.post("/v1/completions", {**COMPLETION, param: value}), param, fragment)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400s(served: Served, raw: str) -> None:
    for param in ("temperature", "top_p"):
        body = json.dumps(CHAT)[:-1] + f', "{param}": {raw}}}'
        _refused(served.post("/v1/chat/completions", body), param, "finite number")


def test_the_edges_of_each_range_are_accepted(served: Served) -> None:
    for extra in (
        {"temperature": 0},
        {"temperature": 0.01},
        {"temperature": 2},
        {"top_p": 1e-9},
        {"seed": 2**64 - 1},
        {"seed": -(2**63)},
        {"stop": ["a", "b", "c", "d"]},
        {"stop": "x" * 256},
        {"max_tokens": 256},
    ):
        reply = served.client.chat.completions.create(**CHAT, **extra)  # type: ignore[call-overload]
        assert reply.choices[0].message.content, extra


# -- OpenAI parameters not implemented yet ----------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("modalities", ["text", "audio"]),
        ("reasoning_effort", "high"),
    ],
)
def test_unsupported_chat_parameters_are_refused_not_ignored(
    served: Served, param: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, **{param: value})  # type: ignore[call-overload]
    assert info.value.param == param
    assert "not supported by this server yet" in info.value.message


@pytest.mark.parametrize(
    ("param", "value"),
    [("presence_penalty", 0.5), ("frequency_penalty", -1.0), ("logit_bias", {"42": 10})],
)
def test_logit_shaping_an_engine_cannot_do_is_refused_naming_the_engine(
    served: Served, param: str, value: Any
) -> None:
    """The echo engine does not sample: a penalty or bias is a 400, never ignored (the
    transformers, vLLM and upstream engines apply them: tests/test_logit_shaping.py)."""
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, **{param: value})  # type: ignore[call-overload]
    assert info.value.param == param
    assert f"{param} is not supported on the echo engine" in info.value.message


def test_echo_works_on_any_engine_without_logprobs(served: Served) -> None:
    """The prompt before the answer is the route's work; the prompt's log probabilities
    are the engine's (transformers only: tests/test_echo.py)."""
    reply = served.client.completions.create(**COMPLETION, echo=True)  # type: ignore[arg-type]
    plain = served.client.completions.create(**COMPLETION)  # type: ignore[arg-type]
    assert reply.choices[0].text == COMPLETION["prompt"] + plain.choices[0].text


@pytest.mark.parametrize(("param", "value"), [("best_of", 2), ("suffix", "end")])
def test_unsupported_completion_parameters_are_refused(
    served: Served, param: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.client.completions.create(**COMPLETION, **{param: value})  # type: ignore[call-overload]
    assert info.value.param == param
    assert "not supported by this server yet" in info.value.message


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"logprobs": True, "top_logprobs": 3}, "logprobs"),
        ("completions", {"logprobs": 2}, "logprobs"),
    ],
)
def test_what_the_engine_cannot_honour_is_refused_naming_the_engine(
    served: Served, route: str, extra: dict[str, Any], param: str
) -> None:
    """The echo engine has no logits: structured outputs and logprobs are a 400 there."""
    with pytest.raises(openai.BadRequestError) as info:
        if route == "chat":
            served.client.chat.completions.create(**CHAT, **extra)  # type: ignore[call-overload]
        else:
            served.client.completions.create(**COMPLETION, **extra)  # type: ignore[call-overload]
    assert info.value.param == param
    assert f"{param} is not supported on the echo engine" in info.value.message


def test_tools_on_a_version_without_a_chat_template_are_refused_naming_it(
    served: Served,
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, tools=tools)  # type: ignore[call-overload]
    assert info.value.param == "tools" and "has no place for tools" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, tool_choice="required")  # type: ignore[call-overload]
    assert info.value.param == "tool_choice" and "no tools are offered" in info.value.message


def test_an_unknown_parameter_is_refused_by_name(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(**CHAT, extra_body={"length_penalty": 5})  # type: ignore[call-overload]
    assert info.value.param == "length_penalty"
    assert "not a parameter this server accepts" in info.value.message


def test_what_sdks_send_by_default_keeps_working(served: Served) -> None:
    reply = served.client.chat.completions.create(
        **CHAT,  # type: ignore[arg-type]
        n=1,
        temperature=0.7,
        response_format={"type": "text"},
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        user="u-1",
        metadata={"team": "support"},
        store=False,
        service_tier="auto",
    )
    assert reply.choices[0].message.content
    chunks = list(
        served.client.chat.completions.create(
            **CHAT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    # what langchain-openai's ChatOpenAI sends (null where the user set nothing)
    langchain = {**CHAT, "stream": False, "n": 1, "temperature": 0.7, "top_p": None,
                 "seed": None, "stop": None, "max_tokens": None, "logprobs": None,
                 "presence_penalty": None, "frequency_penalty": None,
                 "logit_bias": None}  # fmt: skip
    response = served.post("/v1/chat/completions", langchain)
    assert response.status_code == 200, response.text
    # a message's name (OpenAI's field for who speaks) is accepted
    named = {**CHAT, "messages": [{"role": "user", "content": "hi", "name": "ana"}]}
    assert served.post("/v1/chat/completions", named).status_code == 200


# -- a client's mistake that only the engine finds --------------------------------------------


def _records(served: Served, count: int) -> list[InferenceRecord]:
    def finished() -> list[InferenceRecord] | None:
        records = served.store.list_inference_records(limit=500)
        if len(records) >= count and all(r.status != "running" for r in records):
            return records  # finished: a long request is first written as running
        return None

    return until(f"{count} records, finished", finished, timeout_s=10)


def test_client_mistakes_the_engine_finds_are_refused_never_the_versions_errors(
    fresh: Served,
) -> None:
    served = fresh
    since = datetime.now().astimezone() - timedelta(minutes=1)
    for _ in range(60):
        with pytest.raises(openai.BadRequestError) as info:
            served.client.completions.create(model="acme-support", prompt="a bad request")
        assert info.value.param == "prompt"
    for _ in range(10):
        served.client.completions.create(**COMPLETION)  # type: ignore[call-overload]
    records = _records(served, 70)
    refused = [r for r in records if r.http_status == 400]
    assert len(refused) == 60
    assert {r.status for r in refused} == {"refused"}
    assert {r.status for r in records if r.http_status == 200} == {"ok"}
    # what a rollout's guards see of this version: 10 requests, none failed
    samples = served.store.rollout_samples("acme-support", since, [served.version.id])
    canary = TrafficSample.of(samples.values())
    assert (canary.requests, canary.errors) == (10, 0)
    results = evaluate_guards(["error_rate <= 0.02"], canary, canary, min_requests=10)
    assert [r.status for r in results] == ["pass"]


def test_an_empty_content_list_is_refused_as_openai_refuses_it(served: Served) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": []}]}
    _refused(
        served.post("/v1/chat/completions", body), "messages.0.content", "content is an empty list"
    )
    parts = [{"type": "text", "text": "hello"}]  # a list with a part is a message, as before
    ok = served.post(
        "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": parts}]}
    )
    assert ok.status_code == 200, ok.text
