"""Structured outputs, tools and logprobs on the transformers engine, through real clients
(the openai SDK, langchain-openai, litellm) against a server with a tiny model (issue 14).

A tiny model's content is poor; what is asserted is the shape a framework relies on:
an answer under a JSON schema always parses and validates, a required tool call is
always a call of an offered function with valid arguments, logprobs are one per token.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.monitoring import update_profiles
from modelyard.registry import UpstreamSpec, register_upstream
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    EngineSet,
    TransformersEngine,
    UpstreamEngine,
    create_app,
)
from modelyard.store import Store
from tinymodels import QUICK_BASE, random_adapter

pytestmark = pytest.mark.slow
CORPUS = [
    "the printer on floor two is broken again",
    "please reset my password for the billing portal",
    'the ticket {"team": "it", "priority": 2} was closed',
    "the weather in Paris is sunny and the weather in Oslo is cold",
] * 30


class Ticket(BaseModel):
    team: Literal["it", "hr", "facilities"]
    priority: int = Field(ge=1, le=5)
    summary: str = Field(max_length=24)
    urgent: bool


@dataclass
class Served:
    url: str
    store: Store
    key: str
    base: Path | None = None  # the tiny base (its tokenizer)
    clients: ExitStack = field(default_factory=ExitStack)  # closed with the server

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0)
        return self.clients.enter_context(client)

    def post(self, route: str, body: dict[str, object]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.post(self.url + route, json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("structured")
    # tools' JSON schemas make long prompts in a 512-token vocabulary
    base = create_tiny_base(CORPUS, tmp / "base", **QUICK_BASE, max_positions=2048).path
    chat_base = _with_chat_template(base, tmp / "chat-base")
    artifacts = ArtifactStore(tmp / "artifacts")
    digest = artifacts.put_dir(random_adapter(base, tmp / "a", seed=1), kind="adapter").digest
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        store.register_base_model("tiny", str(base), {})
        store.register_base_model("tiny-chat", str(chat_base), {})
        store.create_tenant("acme")
        store.create_registered_model("bot", tenant="acme")
        for template in ("chat-fallback", "alpaca"):
            store.create_model_version(
                "bot", kind="adapter", artifact_digest=digest, base_model="tiny", run_id=None,
                lineage={"prompt_template": template}, metrics={},
            )  # fmt: skip
        store.create_model_version(
            "bot", kind="adapter", artifact_digest=digest, base_model="tiny-chat", run_id=None,
            lineage={"prompt_template": "chat"}, metrics={},
        )  # fmt: skip
        store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
        store.create_endpoint("helpdesk-chat", model_ref="bot:3", tenant="acme")
        store.create_endpoint("helpdesk-records", model_ref="bot:1", tenant="acme")
        store.create_endpoint("helpdesk-alpaca", model_ref="bot:2", tenant="acme")
        store.create_endpoint("acme-support", model_ref="bot:1", tenant="acme")  # the docs'
        _, key = create_api_key(store, "acme")
        engine = TransformersEngine(artifacts, batch_window_ms=2, store=store)
        app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
        try:
            with BackgroundServer(app) as server, ExitStack() as clients:
                yield Served(server.base_url, store, key, base, clients)
        finally:
            engine.close()


# A chat template in the style of Qwen 2.5's: tools in the system turn, calls in <tool_call>
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for tool in tools %}\n"
    "{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _with_chat_template(base: Path, out: Path) -> Path:
    """A copy of ``base`` whose tokenizer has ``CHAT_TEMPLATE``."""
    shutil.copytree(base, out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "file a ticket: printer broken"}]


def test_a_json_schema_answer_always_parses_into_the_pydantic_model(served: Served) -> None:
    client = served.client()
    for seed in range(4):  # sampled: every draw must validate, not one lucky one
        done = client.beta.chat.completions.parse(
            model="helpdesk", messages=MESSAGES, response_format=Ticket, seed=seed,
            max_tokens=120,
        )  # fmt: skip
        choice = done.choices[0]
        assert choice.finish_reason == "stop", choice
        ticket = choice.message.parsed
        assert isinstance(ticket, Ticket) and 1 <= ticket.priority <= 5, choice.message.content


def test_the_structured_outputs_example_of_the_docs_runs(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    marker = "<!-- this example runs in tests/test_structured.py -->\n```python\n"
    example = text[text.index(marker) + len(marker) :].split("```", 1)[0]
    code = compile(example, "docs/serving.md", "exec", dont_inherit=True)  # no __future__
    exec(code, {"client": served.client()})
    team, priority, urgent = capsys.readouterr().out.split()
    assert team in ("it", "hr", "facilities") and 1 <= int(priority) <= 5
    assert urgent in ("True", "False")


def test_the_responses_api_parses_into_the_pydantic_model(served: Served) -> None:
    done = served.client().responses.parse(
        model="helpdesk", input="file a ticket: printer broken", text_format=Ticket,
        max_output_tokens=120,
    )  # fmt: skip
    assert done.status == "completed" and isinstance(done.output_parsed, Ticket)
    assert done.text.format.type == "json_schema"  # echoed


def test_json_object_streams_one_json_object(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="helpdesk", messages=MESSAGES, response_format={"type": "json_object"},
        max_tokens=200, temperature=0, stream=True,
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    parsed = json.loads(text)  # a greedy tiny model may write {} or nest: an object either way
    assert isinstance(parsed, dict), text


def test_a_schema_the_library_cannot_compile_is_a_400_naming_it(served: Served) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    r = served.post("/v1/chat/completions", {"model": "helpdesk", "messages": MESSAGES,
                                             "response_format": bad})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert "Type should be a string" in error["message"] and "[" not in error["message"][:2]
    half = {"model": "helpdesk", "messages": MESSAGES, "response_format": {"type": "json_schema"}}
    r = served.post("/v1/chat/completions", half)
    assert r.status_code == 400 and "json_schema" in r.json()["error"]["message"], r.text


def test_chat_logprobs_one_per_token_with_the_alternatives(served: Served) -> None:
    done = served.client().chat.completions.create(
        model="helpdesk", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=3,
    )  # fmt: skip
    choice = done.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert done.usage is not None and len(tokens) == done.usage.completion_tokens
    for token in tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert math.isclose(token.logprob, token.top_logprobs[0].logprob, abs_tol=1e-5)
        assert token.bytes == list(token.token.encode())
    # the concatenated tokens are the answer (up to the whitespace answers are stripped of)
    assert "".join(t.token for t in tokens).strip() == choice.message.content


def test_streamed_logprobs_come_with_the_text_they_made(served: Served) -> None:
    client = served.client()
    whole = client.chat.completions.create(
        model="helpdesk", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model="helpdesk",
            messages=MESSAGES,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs
              for t in c.choices[0].logprobs.content or []]  # fmt: skip
    assert whole.choices[0].logprobs and whole.choices[0].logprobs.content
    assert [(t.token, round(t.logprob, 4)) for t in tokens] == [
        (t.token, round(t.logprob, 4)) for t in whole.choices[0].logprobs.content
    ]
    legacy = list(
        client.completions.create(
            model="helpdesk",
            prompt="the printer",
            max_tokens=5,
            temperature=0,
            logprobs=1,
            stream=True,
        )
    )
    offsets = [o for c in legacy if c.choices[0].logprobs
               for o in c.choices[0].logprobs.text_offset or []]  # fmt: skip
    assert len(offsets) == 5 and offsets == sorted(offsets) and offsets[0] == 0


def test_a_prompt_of_token_ids_runs_as_sent(served: Served) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(served.base)("the printer")["input_ids"]
    client = served.client()
    as_text = client.completions.create(model="helpdesk", prompt="the printer", max_tokens=4,
                                        temperature=0)  # fmt: skip
    as_ids = client.completions.create(model="helpdesk", prompt=ids, max_tokens=4, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage and as_ids.usage.prompt_tokens == len(ids)
    both = client.completions.create(model="helpdesk", prompt=[ids, ids[:2]], max_tokens=2)
    assert [c.index for c in both.choices] == [0, 1]
    for prompt, says in (([ids[0], 99999], "token id 99999"), ([[]], "at least one id")):
        r = served.post("/v1/completions", {"model": "helpdesk", "prompt": prompt})
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_completion_logprobs_in_the_legacy_shape(served: Served) -> None:
    done = served.client().completions.create(
        model="helpdesk", prompt="the printer", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert logprobs.top_logprobs and all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == 0


def test_logprobs_the_server_cannot_answer_are_400_naming_them(served: Served) -> None:
    cases = [
        ({"top_logprobs": 2}, "top_logprobs: top_logprobs needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ]
    for extra, says in cases:
        body = {"model": "helpdesk", "messages": MESSAGES, **extra}
        r = served.post("/v1/chat/completions", body)
        assert r.status_code == 400 and says in r.json()["error"]["message"], (extra, r.text)


# -- tools ------------------------------------------------------------------------------------


class Weather(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    unit: Literal["celsius", "fahrenheit"]


class Ticketing(BaseModel):
    team: Literal["it", "hr"]
    priority: int = Field(ge=1, le=3)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": Weather.model_json_schema()}},
    {"type": "function", "function": {"name": "open_ticket",
                                      "parameters": Ticketing.model_json_schema()}},
]  # fmt: skip
ARGUMENTS = {"get_weather": Weather, "open_ticket": Ticketing}


def test_a_required_tool_call_is_a_call_of_an_offered_function_and_its_result_is_taken(
    served: Served,
) -> None:
    client = served.client()
    question = [{"role": "user", "content": "weather in Oslo?"}]
    for seed in range(3):
        done = client.chat.completions.create(
            model="helpdesk", messages=question, tools=TOOLS, tool_choice="required", seed=seed,
            max_tokens=200,
        )  # fmt: skip
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        ARGUMENTS[call.function.name].model_validate_json(call.function.arguments)
    # the call and its result go back; the model answers
    turn = choice.message.model_dump(exclude_none=True)
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": -3}'}
    answer = client.chat.completions.create(
        model="helpdesk", messages=[*question, turn, result], tools=TOOLS, max_tokens=8
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_named_tool_choice_calls_that_function_streamed_as_deltas(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="helpdesk", messages=[{"role": "user", "content": "printer broken"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "open_ticket"}}, max_tokens=200,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function and calls[0].function.name == "open_ticket"
    Ticketing.model_validate_json(calls[0].function.arguments or "")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and chunks[-1].usage is not None


def test_a_chat_template_that_takes_tools_renders_them_and_the_calls(served: Served) -> None:
    client = served.client()
    question = [{"role": "user", "content": "weather in Oslo?"}]
    done = client.chat.completions.create(
        model="helpdesk-chat", messages=question, tools=TOOLS, tool_choice="required",
        max_tokens=200,
    )  # fmt: skip
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    turn = done.choices[0].message.model_dump(exclude_none=True)
    result = {"role": "tool", "tool_call_id": call.id, "content": "-3 C"}
    client.chat.completions.create(
        model="helpdesk-chat", messages=[*question, turn, result], tools=TOOLS, max_tokens=2
    )
    deadline = time.monotonic() + 10
    while served.store.count_inference_records(endpoint="helpdesk-chat") < 2:
        assert time.monotonic() < deadline, "both requests are recorded"
        time.sleep(0.05)
    first, second = reversed(served.store.query_records(endpoint="helpdesk-chat", limit=2))
    assert "<tools>" in first["prompt"] and '"name": "get_weather"' in first["prompt"]
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    # the second prompt holds the call, rendered by the template from its JSON arguments
    assert f'"name": "{call.function.name}", "arguments": {{' in second["prompt"]
    assert "<|im_start|>tool\n-3 C<|im_end|>" in second["prompt"]


def test_tools_the_server_cannot_honour_are_400_naming_them(served: Served) -> None:
    named = {"type": "function", "function": {"name": "nope"}}
    cases = [
        ("helpdesk-alpaca", {"tools": TOOLS}, "tools", "prompt template 'alpaca'"),
        ("helpdesk", {"tools": TOOLS, "tool_choice": named}, "tool_choice", "not among the tools"),
        ("helpdesk", {"tool_choice": "required"}, "tool_choice", "no tools are offered"),
        ("helpdesk", {"tools": [TOOLS[0], TOOLS[0]]}, "tools", "same name"),
    ]
    for model, extra, param, says in cases:
        r = served.post("/v1/chat/completions", {"model": model, "messages": MESSAGES, **extra})
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert says in error["message"], (extra, error)
        if param:
            assert error["param"] == param
    r = served.post("/v1/completions", {"model": "helpdesk", "prompt": "x", "tools": TOOLS})
    assert r.status_code == 400 and "chat/completions" in r.json()["error"]["message"]


# -- frameworks, unchanged ----------------------------------------------------------------------


def test_langchain_structured_output_tools_and_the_legacy_completions_class(
    served: Served,
) -> None:
    from langchain_core.messages import AIMessage
    from langchain_openai import ChatOpenAI, OpenAI

    # each on an HTTP client of the test's, closed at its end (their own would be left open:
    # ChatOpenAI's cached for the process, OpenAI's until the garbage collector finds it)
    with openai.DefaultHttpxClient() as chat_http, openai.DefaultHttpxClient() as legacy_http:
        chat = ChatOpenAI(model="helpdesk", base_url=served.url + "/v1", api_key=served.key,
                          max_retries=0, max_tokens=200, temperature=0.7,
                          http_client=chat_http)  # fmt: skip
        ticket = chat.with_structured_output(Ticket).invoke("file a ticket: printer broken")
        assert isinstance(ticket, Ticket)
        called = chat.bind_tools([Weather, Ticketing], tool_choice="required").invoke("weather?")
        assert isinstance(called, AIMessage) and len(called.tool_calls) == 1
        call = called.tool_calls[0]
        schema = {"Weather": Weather, "Ticketing": Ticketing}[call["name"]]
        schema.model_validate(call["args"])
        legacy = OpenAI(model="helpdesk", base_url=served.url + "/v1", api_key=served.key,
                        max_retries=0, max_tokens=4, temperature=0,
                        http_client=legacy_http)  # fmt: skip
        assert isinstance(legacy.invoke("the printer"), str)
        assert len(legacy.generate(["the printer", "reset my"]).generations) == 2  # a prompt list


# litellm runs in a process of its own: importing it installs logging filters of its own
# (secret redaction) in every logger of the process, which other tests' logs would then show
_LITELLM = """
import json, os, sys
import litellm

common = {"model": "openai/helpdesk", "api_base": os.environ["URL"], "api_key": os.environ["KEY"]}
messages = [{"role": "user", "content": "file a ticket: printer broken"}]
done = litellm.completion(messages=messages, max_tokens=4, **common)
assert done.choices[0].message.content is not None and done.usage.completion_tokens <= 4
streamed = litellm.completion(messages=messages, max_tokens=4, stream=True, **common)
assert "".join(c.choices[0].delta.content or "" for c in streamed)
called = litellm.completion(messages=messages, tools=json.loads(os.environ["TOOLS"]),
                            tool_choice="required", max_tokens=200, **common)
call = called.choices[0].message.tool_calls[0]
print(json.dumps({"name": call.function.name, "arguments": call.function.arguments}))
"""


def test_litellm_completion_streaming_and_tools(served: Served) -> None:
    env = {
        **os.environ,
        "URL": served.url + "/v1",
        "KEY": served.key,
        "TOOLS": json.dumps(TOOLS),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }  # fmt: skip  (no fetch from the internet)
    r = subprocess.run([sys.executable, "-c", _LITELLM], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    call = json.loads(r.stdout.strip().splitlines()[-1])
    ARGUMENTS[call["name"]].model_validate_json(call["arguments"])


# -- through a gateway: the upstream engine passes them on ---------------------------------------


@pytest.fixture(scope="module")
def gateway(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A second modelyard whose ``acme-gw`` is an upstream version: the served world's
    ``helpdesk``, reached over its OpenAI API with acme's key."""
    tmp = tmp_path_factory.mktemp("gateway")
    with pytest.MonkeyPatch.context() as env, Store.open(f"sqlite:///{tmp / 'gw.db'}") as store:
        env.setenv("HELPDESK_KEY", served.key)
        artifacts = ArtifactStore(tmp / "artifacts")
        store.create_tenant("acme")
        spec = UpstreamSpec(base_url=served.url + "/v1", model="helpdesk",
                            api_key_env="HELPDESK_KEY")  # fmt: skip
        version = register_upstream(store, artifacts, spec, name="gw-bot", tenant="acme")
        store.create_endpoint("acme-gw", model_ref=version.ref, tenant="acme")
        _, key = create_api_key(store, "acme")
        engine = EngineSet(EchoEngine(), UpstreamEngine(artifacts, store=store))
        app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
        try:
            with BackgroundServer(app) as server, ExitStack() as clients:
                yield Served(server.base_url, store, key, clients=clients)
        finally:
            engine.close()


def test_structured_outputs_tools_and_logprobs_pass_through_a_gateway(gateway: Served) -> None:
    client = gateway.client()
    done = client.beta.chat.completions.parse(
        model="acme-gw", messages=MESSAGES, response_format=Ticket, max_tokens=120
    )
    assert isinstance(done.choices[0].message.parsed, Ticket)
    for stream in (False, True):
        named = {"type": "function", "function": {"name": "get_weather"}}
        asked = {"model": "acme-gw", "messages": MESSAGES, "tools": TOOLS, "max_tokens": 200,
                 "tool_choice": named}  # fmt: skip
        if stream:
            chunks = list(client.chat.completions.create(**asked, stream=True))  # type: ignore[call-overload]
            calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
            arguments = calls[0].function.arguments
        else:
            answer = client.chat.completions.create(**asked)  # type: ignore[call-overload]
            assert answer.choices[0].finish_reason == "tool_calls"
            calls = answer.choices[0].message.tool_calls
            arguments = calls[0].function.arguments
        assert len(calls) == 1 and calls[0].function.name == "get_weather", stream
        Weather.model_validate_json(arguments)
    scored = client.chat.completions.create(
        model="acme-gw", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    tokens = scored.choices[0].logprobs.content  # type: ignore[union-attr]
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)
    r = gateway.post("/v1/completions", {"model": "acme-gw", "prompt": "x",
                                         "response_format": {"type": "json_object"}})  # fmt: skip
    assert r.status_code == 400 and "no structured outputs" in r.json()["error"]["message"]


# -- records and profiles ------------------------------------------------------------------------


def test_records_say_what_constrained_answers_did_and_profiles_count_it(
    served: Served, tmp_path: Path
) -> None:
    client = served.client()
    ask = {"model": "helpdesk-records", "messages": MESSAGES}
    client.chat.completions.create(**ask, tools=TOOLS, tool_choice="required", max_tokens=200)  # type: ignore[call-overload]
    client.chat.completions.create(**ask, response_format={"type": "json_object"}, max_tokens=3)  # type: ignore[call-overload]
    client.chat.completions.create(**ask, max_tokens=3)  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while served.store.count_inference_records(endpoint="helpdesk-records") < 3:
        assert time.monotonic() < deadline, "the records are written"
        time.sleep(0.05)
    rows = served.store.query_records(endpoint="helpdesk-records", newest_first=False)
    assert [(r["tool_calls"], r["format_ok"]) for r in rows] == [
        (1, True),  # a required call, made
        (None, False),  # JSON cut short at 3 tokens
        (None, None),  # nothing asked
    ]
    assert "<tool_call>" in rows[0]["response"]  # stored as written (storage policy: full)
    update_profiles(served.store, now=datetime.now(UTC) + timedelta(minutes=10))
    [hour] = served.store.list_profiles(window="hour", endpoint="helpdesk-records")
    assert (hour.tool_calls, hour.format_checked, hour.format_failures) == (1, 2, 1)
