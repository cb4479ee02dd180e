"""Function tools on the Responses API (``POST /v1/responses``) through the official openai
SDK and langchain-openai: ``tools``, ``tool_choice``, ``parallel_tool_calls``,
``function_call`` items out (whole and streamed) and ``function_call`` /
``function_call_output`` items back in.

Two servers. A scripted engine answers with the last user message as written (or,
after a tool's result, a sentence quoting it), word by word: what a model writes is
the test's to choose, so ``auto`` calls, text around them and the stream's holding
back are checked exactly. The transformers engine on a tiny base answers
``tool_choice`` ``required`` and named functions under the grammar (``_grammar``), so
those calls are always valid whatever the tiny model would write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types.responses import (
    FunctionTool,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ToolChoiceFunction,
)
from pydantic import BaseModel, Field

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    Generation,
    PacedEchoEngine,
    SamplingParams,
    TokenStream,
    TransformersEngine,
    create_app,
)
from modelyard.store import ModelVersion, Store
from tinymodels import QUICK_BASE, random_adapter
from waiting import until


class Weather(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    unit: Literal["celsius", "fahrenheit"]


class Ticketing(BaseModel):
    team: Literal["it", "hr"]
    priority: int = Field(ge=1, le=3)


TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather in a city",
     "parameters": Weather.model_json_schema(), "strict": True},
    {"type": "function", "name": "open_ticket", "parameters": Ticketing.model_json_schema(),
     "strict": True},
]  # fmt: skip
ARGUMENTS: dict[str, type[BaseModel]] = {"get_weather": Weather, "open_ticket": Ticketing}
OSLO = {"city": "Oslo", "unit": "celsius"}


def call(name: str, arguments: dict[str, Any]) -> str:
    """A call as the model writes it (Hermes' format)."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# -- the scripted server ------------------------------------------------------------------------

_TURN = re.compile(r"<\|(\w+)\|>\n(.*?)\n(?=<\|\w+\|>\n)", re.DOTALL)


class Script(EchoEngine):
    """Answers a ``chat-fallback`` prompt with its last user message as written; after a
    tool's result (the last turn a ``<|tool|>`` one), with ``the tool said: <result>``."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        self.refuse_unsupported(params)
        turns = _TURN.findall(prompt)
        role, said = turns[-1]
        if role != "tool":
            said = next(text for role, text in reversed(turns) if role == "user")
        text = f"the tool said: {said}" if role == "tool" else said
        stream = TokenStream()
        stream.finish(Generation(text, len(prompt.split()), len(text.split()), "stop", 0.0))
        return stream


class Scripted(PacedEchoEngine, Script):
    """``Script``'s answers, one word at a time (``PacedEchoEngine``)."""


@dataclass
class Served:
    url: str
    store: Store
    key: str
    clients: list[Any] = field(default_factory=list)

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0)
        self.clients.append(client)
        return client

    def post(self, body: dict[str, Any], route: str = "/v1/responses") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.post(self.url + route, json=body, headers=headers, timeout=120)

    def row(self, record_id: str) -> dict[str, Any]:
        """The stored record of ``record_id`` (written asynchronously), as a row."""

        def finished() -> dict[str, Any] | None:
            for row in self.store.query_records(limit=500):
                if row["id"] == record_id and row["status"] != "running":
                    return row
            return None

        return until(f"inference record {record_id}", finished, timeout_s=30)


def _serve(store: Store, engine: Any) -> Iterator[Served]:
    key = create_api_key(store, "acme")[1]
    app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
    with BackgroundServer(app) as server:
        served = Served(server.base_url, store, key)
        try:
            yield served
        finally:
            for client in served.clients:
                client.close()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("responses-tools")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        store.register_base_model("tiny", "/models/tiny", {})
        store.create_tenant("acme")
        store.create_registered_model("agent", tenant="acme")
        for template in ("chat-fallback", "text"):
            store.create_model_version(
                "agent", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
                run_id=None, lineage={"prompt_template": template}, metrics={},
            )  # fmt: skip
        store.create_endpoint("agent", model_ref="agent:1", tenant="acme")
        store.create_endpoint("agent-text", model_ref="agent:2", tenant="acme")
        yield from _serve(store, Scripted(0.001))


def test_a_call_the_model_writes_is_a_function_call_item(scripted: Served) -> None:
    written = f"Let me check.\n{call('get_weather', OSLO)}"
    done = scripted.client().responses.create(model="agent", input=written, tools=TOOLS)
    assert done.status == "completed" and done.output_text == "Let me check."
    message, fc = done.output
    assert isinstance(message, ResponseOutputMessage) and message.status == "completed"
    assert isinstance(fc, ResponseFunctionToolCall)
    assert (fc.type, fc.name, fc.status) == ("function_call", "get_weather", "completed")
    assert fc.id and fc.id.startswith("fc_") and fc.call_id.startswith("call_")
    assert json.loads(fc.arguments) == OSLO
    # the request's tools and choice, echoed
    assert [type(t) for t in done.tools] == [FunctionTool, FunctionTool]
    assert (
        done.tools[0].name == "get_weather" and done.tools[0].parameters == TOOLS[0]["parameters"]
    )
    assert done.tool_choice == "auto" and done.parallel_tool_calls is True
    # recorded as the chat route records calls: the prompt offered them, one call made
    row = scripted.row(done.id)
    assert (row["route"], row["tool_calls"], row["format_ok"]) == ("responses", 1, None)
    assert "# Tools" in row["prompt"] and '"name": "get_weather"' in row["prompt"]


def test_several_calls_and_parallel_tool_calls_false(scripted: Served) -> None:
    ticket = {"team": "it", "priority": 2}
    written = f"{call('get_weather', OSLO)}\n{call('open_ticket', ticket)}"
    client = scripted.client()
    both = client.responses.create(model="agent", input=written, tools=TOOLS)
    assert both.output_text == ""  # no message item: calls only
    assert [(o.type, getattr(o, "name", None)) for o in both.output] == [
        ("function_call", "get_weather"),
        ("function_call", "open_ticket"),
    ]
    assert len({o.id for o in both.output}) == 2
    one = client.responses.create(
        model="agent", input=written, tools=TOOLS, parallel_tool_calls=False
    )
    [fc] = one.output
    assert isinstance(fc, ResponseFunctionToolCall) and fc.name == "get_weather"
    assert one.parallel_tool_calls is False


def test_tool_choice_none_offers_no_tools_and_reads_no_calls(scripted: Served) -> None:
    written = call("get_weather", OSLO)
    done = scripted.client().responses.create(
        model="agent", input=written, tools=TOOLS, tool_choice="none"
    )
    [message] = done.output
    assert message.type == "message" and done.output_text == written  # text, as written
    assert done.tool_choice == "none"
    row = scripted.row(done.id)
    assert "# Tools" not in row["prompt"] and row["tool_calls"] is None


def test_the_result_sent_back_gets_a_text_answer_rendered_as_chat_renders_it(
    scripted: Served,
) -> None:
    client = scripted.client()
    question: list[Any] = [{"role": "user", "content": f"Checking.\n{call('get_weather', OSLO)}"}]
    first = client.responses.create(model="agent", input=question, tools=TOOLS)
    fc = first.output[1]
    assert isinstance(fc, ResponseFunctionToolCall)
    # the SDK's way: the answer's output items back into input, then each call's output
    turn = [*question, *(item.model_dump() for item in first.output)]
    turn.append({"type": "function_call_output", "call_id": fc.call_id, "output": "-3 C"})
    second = client.responses.create(model="agent", input=turn, tools=TOOLS)
    assert second.output_text == "the tool said: -3 C"
    [message] = second.output
    assert message.type == "message"
    prompt = scripted.row(second.id)["prompt"]
    assert f"<|assistant|>\nChecking.\n{call('get_weather', OSLO)}\n<|tool|>\n-3 C\n" in prompt
    # the same conversation on the chat route renders the same prompt
    chat = scripted.post(
        {"model": "agent", "tools": [{"type": "function", "function": {
            k: v for k, v in t.items() if k != "type"}} for t in TOOLS],
         "messages": [*question,
                      {"role": "assistant", "content": "Checking.", "tool_calls": [{
                          "id": fc.call_id, "type": "function",
                          "function": {"name": fc.name, "arguments": fc.arguments}}]},
                      {"role": "tool", "tool_call_id": fc.call_id, "content": "-3 C"}]},
        "/v1/chat/completions",
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert scripted.row(chat.json()["id"])["prompt"] == prompt


def test_a_streamed_call_comes_as_its_typed_events_in_order(scripted: Served) -> None:
    written = f"Let me check the weather.\n{call('get_weather', OSLO)}"
    with scripted.client().responses.stream(model="agent", input=written, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1  # as it is written, and nothing of the call
    n = len(deltas)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * n,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in deltas) == "Let me check the weather." == final.output_text
    message, fc = final.output
    assert isinstance(fc, ResponseFunctionToolCall) and json.loads(fc.arguments) == OSLO
    for e in events[2 : n + 7]:  # the message's events
        assert (e.output_index, getattr(e, "item_id", message.id)) == (0, message.id), e
    added, args, args_done, item_done = events[n + 7 : n + 11]
    assert added.type == "response.output_item.added" and added.output_index == 1
    assert added.item.type == "function_call" and added.item.status == "in_progress"
    assert added.item.arguments == "" and added.item.call_id == fc.call_id
    assert args.type == "response.function_call_arguments.delta"
    assert args_done.type == "response.function_call_arguments.done"
    assert (args.item_id, args.output_index, args.delta) == (fc.id, 1, fc.arguments)
    assert (args_done.item_id, args_done.output_index, args_done.arguments) == (
        fc.id, 1, fc.arguments,
    )  # fmt: skip
    assert item_done.type == "response.output_item.done"
    assert item_done.item.type == "function_call" and item_done.item.status == "completed"
    assert (item_done.item.id, item_done.item.arguments) == (fc.id, fc.arguments)
    assert getattr(fc, "parsed_arguments", None) == OSLO  # the helper parses strict tools' calls
    assert scripted.row(final.id)["tool_calls"] == 1


def test_a_streamed_answer_that_only_calls_opens_no_message(scripted: Served) -> None:
    written = call("open_ticket", {"team": "hr", "priority": 1})
    stream = scripted.client().responses.create(
        model="agent", input=written, tools=TOOLS, stream=True
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert all(getattr(e, "output_index", 0) == 0 for e in events)
    done = events[-1]
    assert done.type == "response.completed"
    [fc] = done.response.output
    assert isinstance(fc, ResponseFunctionToolCall) and fc.name == "open_ticket"


TOOL = TOOLS[0]


@pytest.mark.parametrize(
    ("extra", "param", "said"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type",
         "tools of type 'web_search' are not supported"),
        ({"tools": [TOOL, {"type": "code_interpreter", "container": {"type": "auto"}}]},
         "tools.1.type", "'code_interpreter'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools.0",
         "a Responses tool is flat"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools.0.name", "Field required"),
        ({"tools": [{**TOOL, "name": "get weather"}]}, "tools.0.name", "should match pattern"),
        ({"tools": [{**TOOL, "parameters": "city"}]}, "tools.0.parameters",
         "valid dictionary"),
        ({"tools": [{**TOOL, "parameters": {"type": "string"}}]}, "tools.0.parameters",
         "a schema of type 'object', not 'string'"),
        ({"tools": [{**TOOL, "parameters": {"type": "object", "properties": ["city"]}}]},
         "tools.0.parameters", "properties is an object"),
        ({"tools": [{**TOOL, "parameters": {"type": "object", "required": "city"}}]},
         "tools.0.parameters", "required is a list"),
        ({"tools": [TOOL, TOOL]}, "tools", "same name"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice",
         "not among the tools"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice", "named function is {\"type\": \"function\", \"name\": ...}"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice",
         "'web_search_preview' is not supported"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                           "tools": [TOOL]}}, "tool_choice", "allowed_tools"),
        ({"tool_choice": "required"}, "tool_choice", "no tools are offered"),
        ({"tools": [TOOL], "tool_choice": "always"}, "tool_choice", "not a tool_choice"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s_naming_the_field(
    scripted: Served, extra: dict[str, Any], param: str, said: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        scripted.client().responses.create(model="agent", input="hi", extra_body=extra)
    assert caught.value.param == param, caught.value.body
    assert said in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("input_", "param", "said"),
    [
        ([{"role": "user", "content": "hi"},
          {"type": "function_call_output", "call_id": "call_gone", "output": "42"}],
         "input.1.call_id", "'call_gone' answers no function_call earlier in input"),
        ([{"role": "user", "content": "hi"},
          {"type": "function_call_output", "call_id": "call_1", "output": "42"},
          {"type": "function_call", "call_id": "call_1", "name": "get_weather",
           "arguments": "{}"}],
         "input.1.call_id", "answers no function_call earlier"),
        ([{"role": "user", "content": "hi"},
          {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "[1]"}],
         "input.1.arguments", "arguments must be a JSON object as text"),
        ([{"role": "user", "content": "hi"},
          {"type": "function_call", "call_id": "c", "arguments": "{}"}],
         "input.1", "a function_call item needs name"),
        ([{"role": "user", "content": "hi"},
          {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}",
           "extra": 1}], "input.1", "extra is not a field of a function_call item"),
        ([{"role": "user", "content": "hi"},
          {"type": "function_call_output", "call_id": "c",
           "output": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
         "input.1.output.0", "image inputs"),
        ([{"role": "user", "content": "hi"}, {"type": "web_search_call", "id": "ws_1"}],
         "input.1", "input items of type 'web_search_call' are not supported"),
    ],
)  # fmt: skip
def test_items_sent_back_wrong_are_400s_naming_them(
    scripted: Served, input_: Any, param: str, said: str
) -> None:
    r = scripted.post({"model": "agent", "input": input_, "tools": TOOLS})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
    assert said in error["message"], error


def test_what_an_engine_or_template_cannot_honour_is_a_400(scripted: Served) -> None:
    client = scripted.client()
    with pytest.raises(openai.BadRequestError) as caught:  # no grammar on this engine
        client.responses.create(model="agent", input="hi", tools=TOOLS, tool_choice="required")
    assert caught.value.param == "tool_choice" and "echo engine" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # a template with no place for tools
        client.responses.create(model="agent-text", input="hi", tools=TOOLS)
    assert caught.value.param == "tools" and "no place for tools" in caught.value.message


# -- the transformers engine: required and named calls, under the grammar ----------------------

CORPUS = [
    "the printer on floor two is broken again",
    "please reset my password for the billing portal",
    "the weather in Paris is sunny and the weather in Oslo is cold",
] * 30


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("responses-tools-tiny")
    # tools' JSON schemas make long prompts in a 512-token vocabulary
    base = create_tiny_base(CORPUS, tmp / "base", **QUICK_BASE, max_positions=2048).path
    artifacts = ArtifactStore(tmp / "artifacts")
    digest = artifacts.put_dir(random_adapter(base, tmp / "a", seed=1), kind="adapter").digest
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        store.register_base_model("tiny", str(base), {})
        store.create_tenant("acme")
        store.create_registered_model("bot", tenant="acme")
        store.create_model_version(
            "bot", kind="adapter", artifact_digest=digest, base_model="tiny", run_id=None,
            lineage={"prompt_template": "chat-fallback"}, metrics={},
        )  # fmt: skip
        store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
        engine = TransformersEngine(artifacts, batch_window_ms=2, store=store)
        try:
            yield from _serve(store, engine)
        finally:
            engine.close()


@pytest.mark.slow
def test_tool_choice_required_always_calls_an_offered_function(tiny: Served) -> None:
    client = tiny.client()
    for _ in range(3):  # sampled (temperature 1): the grammar makes every answer a call
        done = client.responses.create(
            model="helpdesk", input="weather in Oslo?", tools=TOOLS, tool_choice="required",
            max_output_tokens=200,
        )  # fmt: skip
        assert done.status == "completed" and done.output_text == ""
        [fc] = done.output
        assert isinstance(fc, ResponseFunctionToolCall) and fc.call_id.startswith("call_")
        ARGUMENTS[fc.name].model_validate_json(fc.arguments)
    row = tiny.row(done.id)
    assert (row["tool_calls"], row["format_ok"]) == (1, True)
    # the result goes back; the model answers in text
    turn = [{"role": "user", "content": "weather in Oslo?"}, fc.model_dump()]
    turn.append({"type": "function_call_output", "call_id": fc.call_id, "output": "-3 C"})
    answer = client.responses.create(model="helpdesk", input=turn, tools=TOOLS, tool_choice="none",
                                     max_output_tokens=8)  # fmt: skip
    assert [o.type for o in answer.output] == ["message"] and answer.output_text
    assert "<|tool|>\n-3 C\n" in tiny.row(answer.id)["prompt"]


@pytest.mark.slow
def test_a_named_function_is_called_streamed_through_the_sdk_helper(tiny: Served) -> None:
    named: Any = {"type": "function", "name": "open_ticket"}
    ask: Any = {"model": "helpdesk", "input": "printer broken", "tools": TOOLS,
                "tool_choice": named, "max_output_tokens": 200}  # fmt: skip
    with tiny.client().responses.stream(**ask) as stream:
        events = list(stream)
        final = stream.get_final_response()
    [fc] = final.output
    assert isinstance(fc, ResponseFunctionToolCall) and fc.name == "open_ticket"
    Ticketing.model_validate_json(fc.arguments)
    args = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(e.delta for e in args) == fc.arguments
    assert not [e for e in events if e.type == "response.output_text.delta"]
    assert isinstance(final.tool_choice, ToolChoiceFunction)
    assert final.tool_choice.model_dump() == named


@pytest.mark.slow
def test_langchain_binds_tools_on_the_responses_api(tiny: Served) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    # on an HTTP client of the test's, closed at its end (ChatOpenAI's own is cached, open)
    with openai.DefaultHttpxClient() as http:
        chat = ChatOpenAI(model="helpdesk", base_url=tiny.url + "/v1", api_key=tiny.key,
                          use_responses_api=True, max_retries=0, max_tokens=200,
                          http_client=http)  # fmt: skip
        question = HumanMessage("weather in Oslo?")
        called = chat.bind_tools([Weather, Ticketing], tool_choice="required").invoke([question])
        assert isinstance(called, AIMessage) and len(called.tool_calls) == 1
        tool_call = called.tool_calls[0]
        {"Weather": Weather, "Ticketing": Ticketing}[tool_call["name"]].model_validate(
            tool_call["args"]
        )
        # the call and its result go back, as LangChain writes them (function_call items)
        result = ToolMessage("-3 C", tool_call_id=tool_call["id"])
        answer = chat.bind_tools([Weather, Ticketing], tool_choice="none").invoke(
            [question, called, result], max_tokens=8
        )
        assert isinstance(answer, AIMessage) and not answer.tool_calls and answer.text
    prompt = tiny.row(answer.response_metadata["id"])["prompt"]
    assert f'"name": "{tool_call["name"]}"' in prompt and "<|tool|>\n-3 C\n" in prompt


def test_chat_and_responses_stream_the_same_text_before_a_call(scripted: Served) -> None:
    """Both routes hold text back where a call may begin, by one rule (``streamable``):
    the streamed text is the whole answer's text, without the whitespace before the call
    (a chat stream sent ``"Let me check.\\n"`` and the whole answer said ``"Let me
    check."``)."""
    written = f"Let me check.\n{call('get_weather', OSLO)}"
    client = scripted.client()
    chat = [{"role": "user", "content": written}]
    whole = client.chat.completions.create(model="agent", messages=chat, tools=CHAT_TOOLS)
    assert whole.choices[0].message.content == "Let me check."
    pieces = client.chat.completions.create(
        model="agent", messages=chat, tools=CHAT_TOOLS, stream=True
    )
    streamed, calls = "", []
    for chunk in pieces:
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
    assert streamed == "Let me check." and [c.function.name for c in calls] == ["get_weather"]
    with client.responses.stream(model="agent", input=written, tools=TOOLS) as events:
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Let me check."


CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
    for tool in TOOLS
]
