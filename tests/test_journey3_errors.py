"""Journey 3 (an application developer with only an OpenAI client): what the client sees
when a request goes wrong. Every answer, an error included, carries ``x-request-id`` (the
SDK's ``exc.request_id``, what a developer quotes to the operator); a bug in the server
is OpenAI's 500 body, not plain text; the 404 for an unknown route lists what this
server serves; and parameters OpenAI bounds are refused here as OpenAI refuses them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import LocalArtifactStore
from modelyard.errors import EngineError
from modelyard.serving import (
    BackgroundServer,
    EchoEngine,
    PacedEchoEngine,
    ServerLimits,
    TokenStream,
    create_app,
)
from modelyard.store import Store
from worlds import two_tenant_world

MESSAGES: list[Any] = [{"role": "user", "content": "vpn is down"}]


@dataclass
class Served:
    url: str
    key: str
    clients: ExitStack

    def client(self, key: str | None = None) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0)
        return self.clients.enter_context(client)


class BuggyEngine(EchoEngine):
    """An engine with a bug: rendering a chat prompt raises an unexpected error."""

    def render_chat(self, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError("a bug in the engine")


def _serve(tmp_path: Path, engine: EchoEngine) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="alpaca")
        key = create_api_key(store, "acme")[1]
        app = create_app(
            store,
            engine,
            refresh_seconds=0.2,
            heartbeat_s=None,
            limits=ServerLimits(max_body_bytes=16_384),
            artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        )
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(server.base_url, key, clients)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, EchoEngine())


@pytest.fixture
def buggy(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, BuggyEngine())


def _refused(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_every_refusal_carries_an_x_request_id_as_openai_sends_it(served: Served) -> None:
    client = served.client()
    chat = client.chat.completions.create
    refusals = {
        404: lambda: chat(model="no-such-model", messages=MESSAGES),
        400: lambda: chat(model="acme-support", messages=[]),
        401: lambda: served.client("myk_bad").models.list(),
        413: lambda: chat(
            model="acme-support", messages=[{"role": "user", "content": "x" * 20_000}]
        ),
    }
    seen = set()
    for status, call in refusals.items():
        exc = _refused(call)
        assert exc.status_code == status
        # a refusal kept as a record (a sample of them) names it; the others get an id
        assert exc.request_id is not None and exc.request_id.startswith(("req_", "cmpl-"))
        seen.add(exc.request_id)
    assert len(seen) == len(refusals)  # one id per request
    missing = _refused(lambda: client.files.retrieve("file-nope"))
    assert missing.status_code == 404 and missing.request_id is not None
    answered = chat(model="acme-support", messages=MESSAGES, max_tokens=4)
    assert answered._request_id == answered.id  # an answer still names its record


def test_a_bug_in_the_server_is_openais_500_body_with_an_id_in_the_log(
    buggy: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="modelyard.serving._http_errors"):
        exc = _refused(
            lambda: buggy.client().chat.completions.create(
                model="acme-support", messages=MESSAGES, max_tokens=4
            )
        )
    assert isinstance(exc, openai.InternalServerError)
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "server_error" and exc.body["code"] == "server_error"
    assert exc.request_id is not None and exc.request_id in exc.body["message"]
    assert "a bug in the engine" not in exc.body["message"]  # details are for the log
    assert any(exc.request_id in r.getMessage() for r in caplog.records)


def test_an_unknown_route_lists_the_routes_this_server_serves(served: Served) -> None:
    reply = httpx.post(
        served.url + "/v1/embeddings",
        json={"model": "acme-support", "input": "x"},
        headers={"Authorization": f"Bearer {served.key}"},
    )
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] is None
    message = error["message"]
    assert message.startswith("Invalid URL (POST /v1/embeddings)")
    for route in ("/v1/chat/completions", "/v1/responses", "/v1/files", "/v1/batches"):
        assert route in message
    assert "files" not in message.split(";", 1)[1]  # never "files ... are not served"


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "at most 512"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "at most 64"),
        ({"service_tier": "platinum"}, "service_tier", "'auto'"),
    ],
)
def test_parameters_openai_bounds_are_refused_as_openai_refuses_them(
    served: Served, extra: dict[str, Any], param: str, words: str
) -> None:
    client = served.client()
    for call in (
        lambda: client.chat.completions.create(
            model="acme-support", messages=MESSAGES, max_tokens=4, extra_body=extra
        ),
        lambda: client.responses.create(model="acme-support", input="hi", extra_body=extra),
    ):
        exc = _refused(call)
        assert exc.status_code == 400
        assert isinstance(exc.body, dict)
        assert exc.body["param"] == param and words in exc.body["message"], exc.body
    fine = {"metadata": {f"k{i}": "v" * 512 for i in range(16)}, "service_tier": "auto"}
    client.chat.completions.create(
        model="acme-support", messages=MESSAGES, max_tokens=4, extra_body=fine
    )


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "text"}], "messages.0.content.0.text"),
        ([{"text": "hi"}], "messages.0.content.0.type"),
        (["hi"], "messages.0.content.0"),  # a text, not a part
    ],
)
def test_a_malformed_content_part_names_the_part_and_what_it_lacks(
    served: Served, content: Any, param: str
) -> None:
    exc = _refused(
        lambda: served.client().chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": content}]
        )
    )
    assert exc.status_code == 400 and isinstance(exc.body, dict)
    assert exc.body["param"] == param, exc.body
    assert "not an array" not in exc.body["message"]
    assert "TextPart" not in exc.body["message"]  # no name of the server's own code


@pytest.mark.parametrize(
    "sent",
    [
        {"json": {"purpose": "batch", "file": "{}"}},
        {"data": {"purpose": "batch"}},  # a form without its file part
    ],
)
def test_an_upload_not_sent_as_multipart_says_how_to_send_it(
    served: Served, sent: dict[str, Any]
) -> None:
    reply = httpx.post(
        served.url + "/v1/files", headers={"Authorization": f"Bearer {served.key}"}, **sent
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "multipart/form-data" in error["message"], error  # not "purpose is missing"


@pytest.mark.parametrize("route", ["completions", "responses"])
def test_a_whole_answer_that_times_out_names_its_record(tmp_path: Path, route: str) -> None:
    """A request admitted and then past --request-timeout-s is a 504 whose x-request-id is
    the inference record the store keeps (status timeout), for the operator to find."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        key = create_api_key(store, "acme")[1]
        limits = ServerLimits(request_timeout_s=0.3)
        app = create_app(
            store, PacedEchoEngine(0.1), limits=limits, refresh_seconds=0.2, heartbeat_s=None
        )
        with BackgroundServer(app) as server:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            slow = " ".join(["word"] * 40)
            call = {
                "completions": lambda: client.completions.create(
                    model="acme-support", prompt=slow, max_tokens=60
                ),
                "responses": lambda: client.responses.create(
                    model="acme-support", input=slow, max_output_tokens=60
                ),
            }[route]
            exc = _refused(call)
            client.close()
            assert exc.status_code == 504 and exc.request_id is not None
            deadline = time.monotonic() + 10
            while True:
                records = store.list_inference_records(endpoint="acme-support")
                if records and records[0].status != "running":
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert [(r.id, r.status) for r in records] == [(exc.request_id, "timeout")]


def test_a_key_refusal_tells_a_developer_whom_to_ask(served: Served) -> None:
    """An application developer holds no CLI: a 401 or 403 says to ask the operator, the
    command they would run given in passing (it said only 'Create a key with ...')."""
    bad = _refused(lambda: served.client("myk_bad").models.list())
    assert bad.status_code == 401 and "Ask the platform's operator for an API key" in bad.message


class FailingEngine(EchoEngine):
    """An engine whose adapter cannot load: each request's stream fails before a token."""

    def stream(self, version: Any, prompt: str, params: Any) -> TokenStream:
        self.refuse_unsupported(params)
        failing = TokenStream()
        failing.fail(EngineError(f"refusing to serve {version.ref}: its adapter failed"))
        return failing


def _records(store: Store) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        records = store.list_inference_records(endpoint="acme-support")
        if records and all(r.status != "running" for r in records):
            return records
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
@pytest.mark.parametrize("failure", ["timeout", "engine"])
def test_a_stream_that_fails_before_its_first_token_names_its_record(
    tmp_path: Path, route: str, failure: str
) -> None:
    """A streamed request admitted and failing before its first token (past
    --request-timeout-s, an adapter that cannot load) is an ordinary 504 or 503 whose
    x-request-id is the inference record the store keeps, as a whole answer's is: the id
    the developer quotes is the one the operator finds (it was a fresh req_ id)."""
    engine = PacedEchoEngine(0.5) if failure == "timeout" else FailingEngine()
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        key = create_api_key(store, "acme")[1]
        limits = ServerLimits(request_timeout_s=0.2)
        app = create_app(store, engine, limits=limits, refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            call = {
                "chat": lambda: client.chat.completions.create(
                    model="acme-support", messages=MESSAGES, max_tokens=8, stream=True
                ),
                "completions": lambda: client.completions.create(
                    model="acme-support", prompt="vpn is down", max_tokens=8, stream=True
                ),
                "responses": lambda: client.responses.create(
                    model="acme-support", input="vpn is down", max_output_tokens=8, stream=True
                ),
            }[route]
            exc = _refused(call)
            client.close()
            assert exc.status_code == (504 if failure == "timeout" else 503), exc.body
            records = _records(store)
        status = "timeout" if failure == "timeout" else "error"
        assert [(r.id, r.status) for r in records] == [(exc.request_id, status)]


class RefusingEngine(EchoEngine):
    """An engine that refuses every request at submission (a full queue, say): a 503
    before any token, recorded as a failure."""

    def stream(self, version: Any, prompt: str, params: Any) -> TokenStream:
        raise EngineError("the engine's queue is full", retry_after=1)

    def answer(self, version: Any, prompt: str, params: Any) -> TokenStream:
        return self.stream(version, prompt, params)


def test_a_refusal_kept_as_a_record_names_it_and_one_not_kept_gets_an_id(tmp_path: Path) -> None:
    """A request refused before the engine starts (an engine refusing at submission: a
    503; a 400 the server keeps a sample of) is stored under an inference record's id, and
    its x-request-id is that id, as an answer's is: the id a developer quotes is the one the
    operator finds (it was a fresh req_ id the store did not know). A refusal past the
    sample (refusals_stored_per_minute) is not stored and gets a req_ id."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        key = create_api_key(store, "acme")[1]
        limits = ServerLimits(refusals_stored_per_minute=2, max_prompt_chars=50)
        app = create_app(store, RefusingEngine(), limits=limits, refresh_seconds=0.2,
                         heartbeat_s=None)  # fmt: skip
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            full = [
                _refused(lambda s=stream: client.chat.completions.create(
                    model="acme-support", messages=MESSAGES, max_tokens=8, stream=s)
                ) for stream in (False, True)
            ] + [_refused(lambda: client.responses.create(
                model="acme-support", input="vpn is down", max_output_tokens=8))]  # fmt: skip
            long = [
                _refused(lambda: client.completions.create(
                    model="acme-support", prompt="x" * 60, max_tokens=8))
                for _ in range(3)
            ]  # fmt: skip
        assert [e.status_code for e in full] == [503, 503, 503]
        assert [e.status_code for e in long] == [400, 400, 400]
        stored = {r.id: r for r in _all_records(store, len(full) + 2)}
        for exc in full:
            assert exc.request_id in stored and stored[exc.request_id].http_status == 503
        kept, past = long[:2], long[2]  # two refusals a minute are kept
        for exc in kept:
            assert exc.request_id in stored and stored[exc.request_id].http_status == 400
        assert past.request_id is not None and past.request_id.startswith("req_")


def _all_records(store: Store, count: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        records = store.list_inference_records(limit=1000)
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, records
        time.sleep(0.05)


def test_a_base_url_without_v1_is_told_so(served: Served) -> None:
    """The most common slip with an OpenAI client: a base_url without /v1. The 404 says
    the route is served under /v1 and how the base_url should end (it listed every route)."""
    client = openai.OpenAI(base_url=served.url, api_key=served.key, max_retries=0)
    with client:
        missing = _refused(lambda: client.chat.completions.create(model="acme-support",
                                                                  messages=MESSAGES))  # fmt: skip
        models = _refused(lambda: client.models.list())
    assert missing.status_code == 404 and models.status_code == 404
    assert "this server serves it as /v1/chat/completions" in missing.message
    assert "base_url ends in /v1" in missing.message and "/v1/models" in models.message
    elsewhere = _refused(lambda: served.client().post("/nothing/here", cast_to=object))
    assert "this server has no such route" in elsewhere.message
