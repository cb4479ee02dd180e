"""OpenAI's request fields as the official SDK sends them, each honoured or refused with a
400 naming it, never silently dropped or left to fail inside the engine (a 500)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import fake_world

HELLO: Any = [{"role": "user", "content": "reset my password please"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    tmp: Path = tmp_path_factory.mktemp("fields")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        fake_world(store, model="bot", endpoint="acme-support", versions=1, template="text")
        # a chat template with a place for tools
        store.create_registered_model("tool-bot", tenant="acme")
        store.create_model_version(
            "tool-bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
            run_id=None, lineage={"prompt_template": "chat-fallback"}, metrics={},
        )  # fmt: skip
        store.create_endpoint("acme-tools", model_ref="tool-bot:1", tenant="acme")
        key = create_api_key(store, "acme")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as sdk,
        ):
            yield sdk


def _refused(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value


# -- max_tokens and max_completion_tokens ----------------------------------------------------


def test_two_different_token_caps_are_a_400_naming_both(client: openai.OpenAI) -> None:
    """Before: ``max_completion_tokens`` won and ``max_tokens`` was dropped without a word
    (a client that set 3 got 4 tokens). OpenAI refuses both together; vLLM silently takes
    ``max_completion_tokens``. Here two numbers are a 400 naming both; one number sent under
    both names is one cap."""
    chat, text = client.chat.completions.create, client.completions.create
    prompt = "reset my password please"
    for call in (
        lambda: chat(model="acme-support", messages=HELLO, max_tokens=3, max_completion_tokens=4),
        lambda: text(model="acme-support", prompt=prompt, max_tokens=3,
                     extra_body={"max_completion_tokens": 4}),
    ):  # fmt: skip
        error = _refused(call)
        assert error.param == "max_completion_tokens", error.body
        assert "max_tokens (3) and max_completion_tokens (4) disagree" in error.message
    same = chat(model="acme-support", messages=HELLO, max_tokens=3, max_completion_tokens=3)
    assert same.usage is not None and same.usage.completion_tokens == 3  # a token a word
    also = text(model="acme-support", prompt=prompt, max_tokens=3,
                extra_body={"max_completion_tokens": 3})  # fmt: skip
    assert also.usage is not None and also.usage.completion_tokens == 3


# -- texts that are not valid Unicode, deep in tools, calls and schemas ----------------------

SURROGATE = "\ud800"  # json.dumps writes the escape \ud800, as a JavaScript client may send
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ],
}
ANSWERED = {"role": "tool", "content": "found", "tool_call_id": "call_1"}


def _call(**function: str) -> list[dict[str, Any]]:
    """HELLO, a call of ``lookup`` (its function's fields replaced) and its result."""
    called = {**CALLED, "tool_calls": [{**CALLED["tool_calls"][0],
                                        "function": {"name": "lookup", "arguments": "{}",
                                                     **function}}]}  # fmt: skip
    return [*HELLO, called, ANSWERED, {"role": "user", "content": "and now?"}]


def _tool(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "lookup", **fields}}


@pytest.mark.parametrize(
    ("path", "body", "param", "where"),
    [
        ("chat/completions", {"tools": [_tool(description="find " + SURROGATE)]},
         "tools.0.function.description", "at character 5"),
        ("chat/completions", {"tools": [_tool(parameters={"type": "object", "properties": {
            "city": {"type": "string", "description": SURROGATE}}})]},
         "tools.0.function.parameters", "properties.city.description: "),
        ("chat/completions", {"messages": _call(name="look" + SURROGATE)},
         "messages.1.tool_calls.0.function.name", "at character 4"),
        ("chat/completions", {"messages": _call(arguments='{"city": "\\ud800"}')},
         "messages.1.tool_calls.0", "arguments.city: "),
        ("chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "t", "schema": {"type": "object", "title": SURROGATE}}}},
         "response_format.json_schema.schema", "title: "),
        ("responses", {"tools": [{"type": "function", "name": "lookup",
                                  "description": SURROGATE}]},
         "tools.0.description", "at character 0"),
        ("responses", {"metadata": {SURROGATE: "x"}}, "metadata", "a key: "),
        ("responses", {"input": [
            {"type": "function_call", "call_id": "c1", "name": "lookup",
             "arguments": '{"city": "\\ud800"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "found"},
            {"role": "user", "content": "and now?"}]},
         "input.0.arguments", "arguments.city: "),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_a_tool_a_call_or_a_schema_is_a_400_naming_it(
    client: openai.OpenAI, path: str, body: dict[str, Any], param: str, where: str
) -> None:
    """Before: accepted, and the prompt held the lone surrogate: a tokenizer fails on it, so
    a version whose tokenizer's chat template renders tools (``chat``) answered a 500; the
    Responses API failed writing back the ``metadata`` it echoes (a 500 on every engine).
    Checked at the border like every other text: a 400 naming the field and the place."""
    common = (
        {"model": "acme-tools", "messages": HELLO, "max_tokens": 4}
        if path.startswith("chat")
        else {"model": "acme-tools", "input": "hi", "max_output_tokens": 4}
    )
    r = httpx.post(
        f"{client.base_url}{path}",
        content=json.dumps({**common, **body}),  # ensure_ascii: the \ud800 escape
        headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert where in error["message"] and "lone surrogate" in error["message"], error


# -- prompt_cache_retention ------------------------------------------------------------------


def test_prompt_cache_retention_is_one_of_openais_and_accepted_on_both_routes(
    client: openai.OpenAI,
) -> None:
    """Before: the Responses API took any text (``"24hr"``, a typo, accepted without a word)
    and chat completions refused the SDK's own parameter as unknown. OpenAI's two lifetimes
    are accepted on both (a request's prompt cache changes no answer here); another is a
    400 naming it."""
    chat = client.chat.completions.create(
        model="acme-support", messages=HELLO, max_tokens=2, prompt_cache_retention="24h"
    )
    assert chat.choices[0].message.content == "reset my"
    reply = client.responses.create(
        model="acme-support", input="reset my password", max_output_tokens=2,
        prompt_cache_retention="in_memory",
    )  # fmt: skip
    assert reply.output_text == "reset my"
    for call in (
        lambda: client.responses.create(model="acme-support", input="hi",
                                        prompt_cache_retention="24hr"),  # type: ignore[arg-type]
        lambda: client.chat.completions.create(model="acme-support", messages=HELLO,
                                               prompt_cache_retention="1h"),  # type: ignore[arg-type]
    ):  # fmt: skip
        error = _refused(call)
        assert error.param == "prompt_cache_retention", error.body
        assert "'in_memory' or '24h'" in error.message, error.message


# -- stop ------------------------------------------------------------------------------------


def test_an_empty_stop_string_is_a_400_naming_stop(client: openai.OpenAI) -> None:
    """Before: accepted and skipped by every engine here (the answer ran on as if no stop
    had been sent), while vLLM refuses it ("stop cannot contain an empty string"): an empty
    string would end every answer before its first token. An empty list is no stop."""
    for stop in ("", ["", "\n"], ["done", ""]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="acme-support", messages=HELLO, max_tokens=4, stop=stop
            )
        error = caught.value
        assert error.param == "stop" and "a stop string is empty" in error.message, error.body
    error = _refused(lambda: client.completions.create(model="acme-support", prompt="hi", stop=""))
    assert error.param == "stop"
    reply = client.chat.completions.create(
        model="acme-support", messages=HELLO, max_tokens=4, stop=[]
    )
    assert reply.choices[0].message.content == "reset my password please"


# -- tool results ----------------------------------------------------------------------------


def test_a_tool_result_answering_no_earlier_call_is_a_400_naming_it(
    client: openai.OpenAI,
) -> None:
    """Before: accepted, and rendered as the result of a call the model never made (a
    mistyped id, or a history trimmed of the assistant's call); OpenAI refuses it, and so
    does this server's Responses API (``input.N.call_id``)."""
    orphan = [*HELLO, {"role": "tool", "content": "found", "tool_call_id": "call_9"}]
    mistyped = [*HELLO, CALLED, {**ANSWERED, "tool_call_id": "call_2"}]
    for messages, at in ((orphan, 1), (mistyped, 2)):
        error = _refused(
            lambda m=messages: client.chat.completions.create(
                model="acme-tools", messages=m, max_tokens=4
            )
        )
        assert error.param == f"messages.{at}.tool_call_id", error.body
        assert "answers no call of an earlier assistant message" in error.message
    answered = client.chat.completions.create(
        model="acme-tools", messages=_call(), max_tokens=4
    )  # the call, then its result
    assert answered.choices[0].finish_reason in ("stop", "length")


# -- web search ------------------------------------------------------------------------------


def test_web_search_options_as_an_empty_object_is_refused(client: openai.OpenAI) -> None:
    """Before: ``{}`` was taken for a no-op value and the answer came back without a search;
    for OpenAI an empty ``web_search_options`` asks for a web search with the default
    options. Only null is the no-op."""
    error = _refused(
        lambda: client.chat.completions.create(
            model="acme-support", messages=HELLO, max_tokens=4, web_search_options={}
        )
    )
    assert error.param == "web_search_options", error.body
    assert "web_search_options is not supported by this server yet" in error.message
    reply = client.chat.completions.create(
        model="acme-support", messages=HELLO, max_tokens=4, extra_body={"web_search_options": None}
    )
    assert reply.choices[0].message.content == "reset my password please"


# -- a tool's parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"type": "string"}, "a schema of type 'object', not 'string'"),
        ({"type": "object", "properties": ["city"]}, "properties is an object mapping"),
        ({"type": "object", "required": "city"}, "required is a list of argument names"),
    ],
)
def test_a_chat_tool_whose_parameters_are_no_object_schema_is_a_400(
    client: openai.OpenAI, parameters: dict[str, Any], says: str
) -> None:
    """Before: the Responses API refused such a tool (``tools.N.parameters``) and chat
    completions offered it to the model as it came (a call's arguments are a JSON object
    whatever the schema says); OpenAI refuses it on both."""
    error = _refused(
        lambda: client.chat.completions.create(
            model="acme-tools", messages=HELLO, max_tokens=4,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": parameters}}],
        )
    )  # fmt: skip
    assert error.param == "tools.0.function.parameters", error.body
    assert says in error.message


# -- tool_choice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "says"),
    [
        ("any", "'any' is not a tool_choice: send none, auto, required or"),
        (5, "tool_choice is none, auto, required or"),
        ({"type": "function"}, 'a named function is {"type": "function", "function": {"name"'),
        ({"type": "function", "name": "lookup"}, "not the Responses API's flat shape"),
        ({"type": "allowed_tools", "allowed_tools": {}}, "allowed_tools is not supported"),
        ({"type": "custom", "custom": {"name": "x"}}, "of type 'custom' is not supported"),
    ],
)
def test_a_malformed_chat_tool_choice_is_a_400_saying_what_is_taken(
    client: openai.OpenAI, choice: Any, says: str
) -> None:
    """Before: ``param`` was pydantic's union branch (``tool_choice.NamedToolChoice``, a
    path no request has) and the message "Input should be a valid dictionary", which said
    neither what was wrong nor what is taken. The Responses API already said it."""
    error = _refused(
        lambda: client.chat.completions.create(
            model="acme-tools", messages=HELLO, max_tokens=4, tool_choice=choice,
            tools=[{"type": "function", "function": {"name": "lookup"}}],
        )
    )  # fmt: skip
    assert error.param == "tool_choice", error.body
    assert says in error.message, error.message


def test_a_responses_named_choice_without_its_name_is_a_400_naming_tool_choice(
    client: openai.OpenAI,
) -> None:
    """Before: ``param`` was ``tool_choice.FunctionChoice.name`` (pydantic's union branch)."""
    error = _refused(
        lambda: client.responses.create(
            model="acme-tools", input="hi", max_output_tokens=4,
            tools=[{"type": "function", "name": "lookup", "parameters": None, "strict": None}],
            tool_choice={"type": "function"},  # type: ignore[typeddict-item]
        )
    )  # fmt: skip
    assert error.param == "tool_choice", error.body
    assert 'a named function is {"type": "function", "name": ...}' in error.message
