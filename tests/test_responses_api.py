"""The Responses API (``POST /v1/responses``, issue 14) through the official openai SDK.

Whole and streamed answers, message input and ``instructions`` rendered as the chat
route renders them, ``max_output_tokens`` (``incomplete``), refusals naming the
parameter, tenancy (another tenant's endpoint is a 404), records and a failure
mid-stream. The echo engine answers (paced, so streams come word by word); the
last test runs the real transformers engine on a tiny model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.errors import EngineError
from modelyard.serving import (
    BackgroundServer,
    PacedEchoEngine,
    SamplingParams,
    ServerLimits,
    TokenStream,
    create_app,
)
from modelyard.store import InferenceRecord, ModelVersion, Store
from tinymodels import rambler_server
from waiting import until
from worlds import two_tenant_world

BREAK = "break mid-way"  # a prompt the engine fails in the middle of


class Engine(PacedEchoEngine):
    """The echo answer one word at a time; a prompt ending in ``BREAK`` fails after a word."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        if not prompt.rstrip().endswith(BREAK):
            return super().stream(version, prompt, params)
        stream = TokenStream()
        stream.push("break")
        stream.fail(EngineError("the engine lost its device mid-answer"))
        return stream


@dataclass
class Served:
    url: str
    store: Store
    keys: dict[str, str]

    clients: dict[str, openai.OpenAI] = field(default_factory=dict)

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        """The SDK with ``tenant``'s key (one per key, closed with the server)."""
        if tenant not in self.clients:
            self.clients[tenant] = openai.OpenAI(
                base_url=self.url + "/v1", api_key=self.keys[tenant], max_retries=0
            )
        return self.clients[tenant]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def post(self, body: dict[str, Any], tenant: str = "acme") -> httpx.Response:
        return httpx.post(
            self.url + "/v1/responses",
            json={"model": "acme-support", **body},
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
        )

    def record(self, record_id: str, timeout: float = 10) -> InferenceRecord:
        """Records are written asynchronously: wait for this one, finished."""

        def finished() -> InferenceRecord | None:
            for record in self.store.list_inference_records(limit=500):
                if record.id == record_id and record.status != "running":
                    return record
            return None

        return until(f"inference record {record_id}, finished", finished, timeout_s=timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One echo server for the module: each test reads its own records, by id."""
    tmp = tmp_path_factory.mktemp("responses-echo")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        two_tenant_world(store, template="text")  # the answer echoes the last user message
        # a version rendering every message (to see instructions in the prompt)
        store.create_registered_model("acme-chat", tenant="acme")
        store.create_model_version(
            "acme-chat", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
            run_id=None, lineage={"prompt_template": "chat-fallback"}, metrics={},
        )  # fmt: skip
        store.create_endpoint("acme-chat", model_ref="acme-chat:1", tenant="acme")
        keys = {t: create_api_key(store, t)[1] for t in ("acme", "globex")}
        limits = ServerLimits(max_tokens=32, max_prompt_chars=2000)
        app = create_app(store, Engine(0.001), limits=limits, refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server:
            served = Served(server.base_url, store, keys)
            yield served
            served.close()


def test_a_response_answers_whole_and_is_recorded(served: Served) -> None:
    raw = served.client().responses.with_raw_response.create(
        model="acme-support", input="where is my parcel", temperature=0, user="u-1"
    )
    assert raw.headers["x-modelyard-version"] == "acme-bot:1"
    done = raw.parse()
    assert done.output_text == "where is my parcel"
    assert (done.object, done.status, done.model) == ("response", "completed", "acme-support")
    assert done.id.startswith("cmpl-") and done.incomplete_details is None and done.error is None
    [item] = done.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    [part] = item.content
    assert part.type == "output_text" and part.annotations == []
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (4, 4, 8)
    assert done.usage.input_tokens_details.cached_tokens == 0
    assert done.usage.output_tokens_details.reasoning_tokens == 0
    assert done.tools == [] and done.tool_choice == "auto" and done.user == "u-1"
    assert done.parallel_tool_calls is True  # OpenAI's default, echoed
    record = served.record(done.id)
    assert (record.route, record.endpoint_name, record.version) == (
        "responses",
        "acme-support",
        "acme-bot:1",
    )
    assert (record.prompt_tokens, record.completion_tokens) == (4, 4)
    assert (record.status, record.http_status, record.response) == ("ok", 200, done.output_text)
    feedback = served.client().post(
        "/feedback", body={"request_id": done.id, "thumbs": "up"}, cast_to=httpx.Response
    )
    assert feedback.status_code == 200  # the id is the record's, as for chat


def test_message_items_and_an_earlier_answer_sent_back(served: Served) -> None:
    client = served.client()
    first = client.responses.create(
        model="acme-support",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "printer jammed"}]}],
    )
    assert first.output_text == "printer jammed"
    earlier = [item.model_dump(exclude_none=True) for item in first.output]
    then = client.responses.create(
        model="acme-support",
        input=[
            {"type": "message", "role": "developer", "content": "be brief"},
            {"role": "user", "content": "printer jammed"},
            *earlier,
            {"type": "message", "role": "user", "content": "still jammed"},
        ],
    )
    assert then.output_text == "still jammed"


def test_instructions_are_a_system_message_first(served: Served) -> None:
    client = served.client()
    answered = client.responses.create(
        model="acme-chat", instructions="Route the ticket.", input="vpn is down"
    )
    chat = client.chat.completions.create(
        model="acme-chat",
        messages=[
            {"role": "system", "content": "Route the ticket."},
            {"role": "user", "content": "vpn is down"},
        ],
    )
    prompt = served.record(answered.id).prompt
    assert prompt == served.record(chat.id).prompt  # rendered exactly as the chat route does
    assert prompt is not None and prompt.startswith("<|system|>\nRoute the ticket.\n<|user|>")
    assert answered.instructions == "Route the ticket."


def test_a_streamed_response_comes_as_typed_events(served: Served) -> None:
    events = list(
        served.client().responses.create(
            model="acme-support", input="my screen is flickering again", stream=True
        )
    )
    kinds = [e.type for e in events]
    head = ["response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added"]  # fmt: skip
    tail = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"]  # fmt: skip
    assert kinds[:4] == head and kinds[-4:] == tail
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == len(events) - 8 and len(deltas) > 1  # word by word
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and created.response.status == "in_progress"
    assert completed.type == "response.completed"
    done = completed.response
    text = "".join(deltas)
    assert text == "my screen is flickering again" == done.output_text
    text_done = events[-4]
    assert text_done.type == "response.output_text.done" and text_done.text == text
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {done.output[0].id}
    assert done.usage is not None and done.usage.output_tokens == 5
    record = served.record(done.id)
    assert (record.route, record.status, record.response) == ("responses", "ok", text)


def test_max_output_tokens_reached_is_incomplete(served: Served) -> None:
    client = served.client()
    words = "one two three four five six"
    cut = client.responses.create(model="acme-support", input=words, max_output_tokens=3)
    assert (cut.status, cut.output_text) == ("incomplete", "one two three")
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output[0].status == "incomplete" and cut.max_output_tokens == 3
    unset = client.responses.create(model="acme-support", input="hi")
    assert unset.max_output_tokens is None  # echoed as sent, as OpenAI does
    events = list(
        client.responses.create(model="acme-support", input=words, max_output_tokens=3, stream=True)
    )
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.output_text == "one two three"
    assert events[-2].type == "response.output_item.done"


@pytest.mark.parametrize(
    ("extra", "param", "said"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type",
         "tools of type 'web_search' are not supported"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools",
         "prompt template 'text' has no place for tools"),
        ({"previous_response_id": "resp_123"}, "previous_response_id", "keeps no conversation"),
        ({"conversation": "conv_1"}, "conversation", "keeps no conversation"),
        ({"reasoning": {"effort": "high"}}, "reasoning", "not supported"),
        ({"include": ["message.output_text.logprobs"]}, "include", "not supported"),
        ({"tool_choice": "required"}, "tool_choice", "no tools are offered"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}},
         "text.format", "text.format is not supported on the echo engine"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}},
         "text.format", "send name and schema with type json_schema"),
        ({"truncation": "auto"}, "truncation", "not supported"),
        ({"top_k": 3}, "top_k", "not a parameter this server accepts"),
        ({"max_output_tokens": 33}, "max_output_tokens", "above this server's limit of 32"),
        ({"temperature": 0.001}, "temperature", "too small"),
        ({"stream": True, "stream_options": {"include_usage": True}},
         "stream_options.include_usage", "is not a parameter this server accepts"),
    ],
)  # fmt: skip
def test_parameters_that_do_not_map_are_400_naming_them(
    served: Served, extra: dict[str, Any], param: str, said: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().responses.create(model="acme-support", input="hi", extra_body=extra)
    assert caught.value.param == param, caught.value.body
    assert said in caught.value.message


@pytest.mark.parametrize(
    ("input_", "param", "said"),
    [
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
         "input.0.content.0", "image inputs (input_image) are not supported"),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
         "input.0.content.0", "file inputs"),
        ([{"type": "reasoning", "summary": []}],
         "input.0", "input items of type 'reasoning' are not supported"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}],
         "input.1", "role 'tool' is not supported"),
        ([{"role": "user", "content": "hi", "name": "bob"}], "input.0",
         "name is not a field of a message item"),
        ([{"role": "system", "content": "be brief"}], "input",
         "at least one message with role 'user'"),
        ([], "input", "input is an empty list"),
        (7, "input", "input is a text, or a list of message items"),
    ],
)  # fmt: skip
def test_inputs_that_are_not_text_messages_are_400_naming_them(
    served: Served, input_: Any, param: str, said: str
) -> None:
    r = served.post({"input": input_})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (
        param,
        "invalid_request",
        "invalid_request_error",
    )
    assert said in error["message"]


def test_lone_surrogates_and_long_prompts_are_400(served: Served) -> None:
    raw = json.dumps({"model": "acme-support", "input": "broken \ud800 text"})
    r = httpx.post(
        served.url + "/v1/responses",
        content=raw,
        headers={
            "Authorization": f"Bearer {served.keys['acme']}",
            "content-type": "application/json",
        },
    )
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"]
    long = served.post({"input": "word " * 500})  # 2500 characters, the cap is 2000
    assert long.status_code == 400, long.text
    assert long.json()["error"]["param"] == "input"
    assert "--max-prompt-chars" in long.json()["error"]["message"]


def test_no_op_values_and_harmless_parameters_are_accepted(served: Served) -> None:
    done = served.client().responses.create(
        model="acme-support",
        input="reset my password",
        tools=[],
        tool_choice="auto",
        store=True,
        metadata={"ticket": "T-1"},
        text={"format": {"type": "text"}},
        truncation="disabled",
        parallel_tool_calls=True,
        prompt_cache_key="k",
        safety_identifier="s",
        top_p=0.9,
    )
    assert done.output_text == "reset my password"
    assert done.metadata == {"ticket": "T-1"} and done.top_p == 0.9
    # nothing is kept for later: the answer says so, and there is no way to fetch it
    assert done.model_dump()["store"] is False
    assert httpx.get(served.url + f"/v1/responses/{done.id}").status_code in (404, 405)


def test_another_tenants_endpoint_is_a_404_and_a_key_is_needed(served: Served) -> None:
    client = served.client()
    for name in ("globex-support", "no-such-endpoint"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=name, input="hi")
        assert caught.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):  # before the stream starts: a plain error
            client.responses.create(model=name, input="hi", stream=True)
    assert served.client("globex").responses.create(model="globex-support", input="ok").output_text
    r = httpx.post(served.url + "/v1/responses", json={"model": "acme-support", "input": "hi"})
    assert r.status_code == 401


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(served: Served) -> None:
    events = list(served.client().responses.create(model="acme-support", input=BREAK, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    error, failed = events[-2:]
    assert error.type == "error" and failed.type == "response.failed"
    assert error.code == "engine_error" and "lost its device" in error.message
    assert failed.response.status == "failed" and failed.response.error is not None
    assert failed.response.error.code == "server_error"
    assert failed.response.output_text == "break"  # what was sent before it failed
    assert [e.sequence_number for e in events] == list(range(len(events)))
    record = served.record(failed.response.id)
    assert (record.route, record.status, record.http_status) == ("responses", "error", 503)


def test_the_openapi_document_lists_the_route(served: Served) -> None:
    doc = httpx.get(served.url + "/openapi.json").json()
    operation = doc["paths"]["/v1/responses"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = doc["components"]["schemas"][schema.rsplit("/", 1)[-1]]["properties"]
    assert {"model", "input", "instructions", "max_output_tokens", "stream"} <= set(fields)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The transformers engine on a tiny base, endpoint ``rambler``: an adapter that never
    ends an answer (it runs to ``max_output_tokens``), rendering messages with
    ``chat-fallback``."""
    with rambler_server(tmp_path_factory.mktemp("responses")) as (url, store, key):
        served = Served(url, store, {"acme": key})
        yield served
        served.close()


def test_the_transformers_engine_streams_what_it_answers_whole(tiny: Served) -> None:
    client = tiny.client()
    ask: dict[str, Any] = {
        "model": "rambler",
        "instructions": "Route the ticket.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "vpn is down"}]}],
        "max_output_tokens": 6,
        "temperature": 0,
    }
    whole = client.responses.create(**ask)
    assert whole.status == "incomplete" and whole.output_text
    assert whole.usage is not None and whole.usage.output_tokens == 6
    events = list(client.responses.create(**ask, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert "".join(deltas) == last.response.output_text == whole.output_text
    record = tiny.record(last.response.id)
    assert (record.route, record.status, record.completion_tokens) == ("responses", "ok", 6)
    assert record.prompt is not None and record.prompt.startswith("<|system|>\nRoute the ticket.")


def test_the_sdks_stream_helper_and_async_client(served: Served) -> None:
    client = served.client()
    with client.responses.stream(model="acme-support", input="the helper reads events") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == "the helper reads events"

    async def both() -> tuple[str, list[str]]:
        async with openai.AsyncOpenAI(
            base_url=served.url + "/v1", api_key=served.keys["acme"], max_retries=0
        ) as aclient:
            whole = await aclient.responses.create(model="acme-support", input="async whole")
            events = await aclient.responses.create(
                model="acme-support", input="async stream", stream=True
            )
            return whole.output_text, [e.type async for e in events]

    text, kinds = asyncio.run(both())
    assert text == "async whole" and kinds[-1] == "response.completed"


def test_langchain_openai_on_the_responses_api(served: Served) -> None:
    from langchain_openai import ChatOpenAI

    # on an HTTP client of the test's, closed at its end (ChatOpenAI's own is cached, open,
    # for the rest of the process)
    with openai.DefaultHttpxClient() as http:
        llm = ChatOpenAI(
            model="acme-support",
            base_url=served.url + "/v1",
            api_key=served.keys["acme"],
            use_responses_api=True,
            max_retries=0,
            http_client=http,
        )
        answer = llm.invoke("langchain asks politely")
        assert answer.text == "langchain asks politely"
        assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
        pieces = [chunk.text for chunk in llm.stream("streamed through langchain")]
        assert "".join(pieces) == "streamed through langchain" and len(pieces) > 3


def test_the_keys_limits_and_scope_apply(served: Served) -> None:
    _, limited = create_api_key(served.store, "acme", rpm_limit=1)
    _, feedback_only = create_api_key(served.store, "acme", scopes=["feedback"])
    served.keys.update(limited=limited, feedback_only=feedback_only)
    assert served.client("limited").responses.create(model="acme-support", input="one").output_text
    with pytest.raises(openai.RateLimitError) as caught:
        served.client("limited").responses.create(model="acme-support", input="two")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"]
    with pytest.raises(openai.PermissionDeniedError):
        served.client("feedback_only").responses.create(model="acme-support", input="hi")


def test_a_stream_past_the_request_timeout_ends_with_a_timeout_error(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("responses-timeout")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        keys = {"acme": create_api_key(store, "acme")[1]}
        app = create_app(
            store,
            PacedEchoEngine(0.2),  # a word every 0.2 s: 20 words outlast the 1.5 s timeout
            limits=ServerLimits(request_timeout_s=1.5),
            refresh_seconds=0.2,
            heartbeat_s=None,
        )
        with BackgroundServer(app) as server:
            served = Served(server.base_url, store, keys)
            words = " ".join(f"w{i}" for i in range(20))
            try:
                stream = served.client().responses.create(
                    model="acme-support", input=words, stream=True
                )
                error, failed = list(stream)[-2:]
                assert error.type == "error" and error.code == "timeout"
                assert failed.type == "response.failed"
                assert 0 < len(failed.response.output_text.split()) < 20
                assert served.record(failed.response.id).status == "timeout"
            finally:
                served.close()
