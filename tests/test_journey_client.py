"""The application developer's journey (docs: JOURNEYS.md, journey 3): an OpenAI client
and nothing else, pointed at a tenant's endpoint. Each test is a request such a
developer really sends, and asserts what the client sees: the status, OpenAI's error
body and the answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.exceptions import ContextOverflowError
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, PacedEchoEngine, create_app
from modelyard.store import Store
from tinymodels import rambler_server
from worlds import two_tenant_world


@dataclass
class Served:
    url: str
    store: Store
    keys: dict[str, str]
    clients: ExitStack

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], max_retries=0)
        return self.clients.enter_context(client)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """acme's and globex's endpoints (alpaca versions, as `modelyard finetune` registers
    alpaca data) behind the echo engine."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="alpaca")
        keys = {t: create_api_key(store, t)[1] for t in ("acme", "globex")}
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(server.base_url, store, keys, clients)


@pytest.mark.parametrize("content", ["", "   "])
def test_an_empty_user_message_is_a_400_about_the_message_not_about_training_rows(
    served: Served, content: str
) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="acme-support", messages=[{"role": "user", "content": content}], max_tokens=4
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages.0.content" and error["type"] == "invalid_request_error"
    assert "empty" in error["message"] and "alpaca" in error["message"]
    assert "example" not in error["message"] and "row" not in error["message"]
    with pytest.raises(openai.BadRequestError) as by_responses:  # the Responses API alike
        client.responses.create(model="acme-support", input=content, max_output_tokens=4)
    assert isinstance(by_responses.value.body, dict)
    assert by_responses.value.body["param"] == "input"
    # in the Responses API's own terms: it has no messages[0] (it said "messages[0] (the last
    # user message) is empty", where the instructions would have made it messages[1])
    assert "messages" not in by_responses.value.body["message"]
    assert "the last user message is empty" in by_responses.value.body["message"]
    # with the instruction in a system message, the empty input is fine
    done = client.chat.completions.create(
        model="acme-support",
        messages=[{"role": "system", "content": "say hi"}, {"role": "user", "content": content}],
        max_tokens=4,
    )
    assert done.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("redacted", "customer [EMAIL] called back"),
        ("none", None),
        ("full", "customer jane.doe@example.com called back"),
    ],
)
def test_feedback_text_is_kept_as_the_tenants_storage_policy_keeps_prompts(
    tmp_path: Path, policy: str, kept: str | None
) -> None:
    """A support agent pastes what the customer wrote into the comment and the corrected
    answer into the label: a redacted tenant must not keep the e-mail there either."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="alpaca", policies={"acme": policy})  # type: ignore[dict-item]
        key = create_api_key(store, "acme")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
            done = client.chat.completions.create(
                model="acme-support",
                messages=[{"role": "user", "content": "my e-mail is jane.doe@example.com"}],
                max_tokens=8,
            )
            answer = client.post(
                "/feedback",
                body={
                    "request_id": done.id,
                    "thumbs": "down",
                    "comment": "customer jane.doe@example.com called back",
                    "label": "customer jane.doe@example.com called back",
                },
                cast_to=dict,
            )
            client.close()
        assert answer["comment"] == kept and answer["label"] == kept  # what was kept
        [stored] = store.list_feedback(tenant="acme")
        assert stored.comment == kept and stored.label == kept and stored.score == -1


@pytest.fixture(scope="module")
def rambler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The transformers engine on a tiny base (256-token context): acme's ``rambler``,
    whose answers run to the token limit."""
    with rambler_server(tmp_path_factory.mktemp("journey-tiny")) as (url, _, key):
        yield url, key


def test_a_request_without_max_tokens_is_answered_to_the_end_of_the_context(
    rambler: tuple[str, str],
) -> None:
    """A developer who sends no max_tokens (as most do) gets an answer cut at the context,
    as OpenAI and vLLM give it, never a 400 asking to lower a max_tokens never sent."""
    url, key = rambler
    long = [{"role": "user", "content": "word " * 65}]  # fits, but not with 64 more tokens
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        done = client.chat.completions.create(model="rambler", messages=long)  # type: ignore[arg-type]
        assert done.usage is not None
        assert done.usage.prompt_tokens + 64 > 256, "the prompt must leave less than 64"
        assert done.usage.total_tokens == 256 and done.choices[0].finish_reason == "length"
        answer = client.responses.create(model="rambler", input="word " * 65)
        assert answer.usage is not None and answer.usage.total_tokens == 256
        assert answer.status == "incomplete"
        # a max_tokens the client did send is still refused when it does not fit
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="rambler", messages=long, max_tokens=64)  # type: ignore[arg-type]
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "max_tokens")
        # a prompt that leaves no room at all is refused, naming the prompt
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(
                model="rambler", messages=[{"role": "user", "content": "word " * 400}]
            )
        assert (too_long.value.code, too_long.value.param) == (
            "context_length_exceeded",
            "messages",
        )


def test_a_context_refusal_names_the_parameters_the_client_sent(
    rambler: tuple[str, str],
) -> None:
    """A 400 for the context names what the client sent: ``max_completion_tokens`` (the
    SDK's current name) when it sent that, not a ``max_tokens`` it never sent; and for a
    prompt that alone fills the context with no cap sent, no cap at all (it read "max_tokens
    is 64", a default the client did not choose and that was not why it was refused)."""
    url, key = rambler
    hello = [{"role": "user", "content": "hello there"}]
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="rambler",
                messages=hello,  # type: ignore[arg-type]
                max_completion_tokens=256,
            )
        error = caught.value
        assert (error.code, error.param) == ("context_length_exceeded", "max_completion_tokens")
        assert "max_completion_tokens is 256" in error.message, error.message
        assert "Ask for at most" in error.message and "max_tokens" not in error.message
        long = "word " * 400
        for param, call in (
            ("messages", lambda: client.chat.completions.create(
                model="rambler", messages=[{"role": "user", "content": long}])),
            ("prompt", lambda: client.completions.create(model="rambler", prompt=long)),
            ("input", lambda: client.responses.create(model="rambler", input=long)),
        ):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as caught:
                call()
            error = caught.value
            assert (error.code, error.param) == ("context_length_exceeded", param)
            assert "This model's maximum context length is 256 tokens" in error.message
            assert "max_tokens" not in error.message and "max_output_tokens" not in error.message
            assert "Shorten the prompt" in error.message
    # LangChain raises its ContextOverflowError (which its summarizing middleware catches)
    # where the message says the prompt is too long: the openai SDK's exception text holds
    # the message only, not the code
    chat = ChatOpenAI(base_url=url + "/v1", api_key=SecretStr(key), model="rambler", max_retries=0)
    with pytest.raises(ContextOverflowError):
        chat.invoke(long)


SLOW = "word " * 100  # the paced echo answers it in 100 x 50 ms


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": SLOW}], "n": 2, "max_tokens": 100},
        ),
        ("/completions", {"prompt": SLOW, "max_tokens": 100}),
        ("/responses", {"input": SLOW, "max_output_tokens": 100}),
    ],
)
def test_a_client_that_gives_up_on_a_whole_answer_stops_its_generation(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """An SDK that times out (and retries: max_retries is 2 by default) leaves a whole
    answer nobody will read: it is stopped and recorded ``cancelled``, as a stream is, not
    generated to its end, charged and recorded ``ok`` once per retry."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        key = create_api_key(store, "acme")[1]
        app = create_app(store, PacedEchoEngine(0.05), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server:
            client = openai.OpenAI(
                base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=0.5
            )
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                client.post(
                    path,
                    body={"model": "acme-support", **body},
                    cast_to=dict,
                )
            client.close()
            want = 2 if "n" in body else 1
            deadline = time.monotonic() + 10
            while True:
                records = store.list_inference_records(endpoint="acme-support")
                if len(records) == want and all(r.status != "running" for r in records):
                    break
                assert time.monotonic() < deadline, [r.status for r in records]
                time.sleep(0.05)
        assert [r.status for r in records] == ["cancelled"] * want
        assert all((r.completion_tokens or 0) < 100 for r in records)
        assert time.monotonic() - started < 5  # stopped, not run to its 5 s end


def test_every_answer_names_its_id_in_x_request_id_as_openai_does(served: Served) -> None:
    """The SDKs read ``x-request-id`` into ``_request_id`` (what OpenAI asks people to log);
    here it is the id feedback is sent against, the record's."""
    client = served.client()
    messages: Any = [{"role": "user", "content": "vpn is down"}]
    done = client.chat.completions.create(model="acme-support", messages=messages)
    assert done._request_id == done.id
    text = client.completions.create(model="acme-support", prompt="vpn is down")
    assert text._request_id == text.id
    answer = client.responses.create(model="acme-support", input="vpn is down")
    assert answer._request_id == answer.id
    for n in (1, 2):
        raw = client.chat.completions.with_raw_response.create(
            model="acme-support", messages=messages, stream=True, n=n
        )
        ids = {chunk.id for chunk in raw.parse()}
        assert ids == {raw.headers["x-request-id"]}
    with client.responses.with_streaming_response.create(
        model="acme-support", input="vpn is down", stream=True
    ) as streamed:
        assert streamed.headers["x-request-id"].startswith("cmpl-")
    client.post("/feedback", body={"request_id": done._request_id, "thumbs": "up"}, cast_to=dict)


@pytest.mark.parametrize(("field", "size", "bound"), [("label", 501, 500), ("comment", 4001, 4000)])
def test_a_feedback_text_too_long_says_how_many_characters(
    served: Served, field: str, size: int, bound: int
) -> None:
    client = served.client()
    done = client.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": "vpn is down"}]
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            "/feedback",
            body={"request_id": done.id, "thumbs": "up", field: "x" * size},
            cast_to=dict,
        )
    assert caught.value.param == field
    assert f"at most {bound} characters, not {size}" in caught.value.message
    assert "items" not in caught.value.message


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ("Basic Zm9vOmJhcg==", "scheme 'Basic'"),
        ("Token myk_x", "scheme 'Token'"),
        ("Bearer", "no key after 'Bearer'"),
    ],
)
def test_an_authorization_header_of_another_kind_says_so(
    served: Served, header: str, said: str
) -> None:
    """A client configured with the wrong auth scheme sent a header: "missing API key" sent
    its developer looking for a header that is there."""
    reply = httpx.get(served.url + "/v1/models", headers={"Authorization": header})
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert error["type"] == "authentication_error" and said in error["message"]
    assert "Bearer <key>" in error["message"] and "missing" not in error["message"]


def test_a_path_the_router_does_not_relay_is_a_404_in_openais_error_body(tmp_path: Path) -> None:
    """A base_url without /v1 (a usual slip) sent through `modelyard route`: the SDK gets an
    error it can read, saying what the router serves, not FastAPI's {"detail": ...}."""
    from modelyard.routing import create_route_app

    with (
        Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store,
        BackgroundServer(create_route_app(store)) as router,
    ):
        client = openai.OpenAI(base_url=router.base_url, api_key="myk_x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(
                model="acme-support", messages=[{"role": "user", "content": "hi"}]
            )
        client.close()
        admin = httpx.get(router.base_url + "/admin/v1/tenants")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "invalid_request_error"
    assert "Invalid URL (POST /chat/completions)" in caught.value.message
    assert "/v1/" in caught.value.message
    assert admin.status_code == 404 and "replica" in admin.json()["error"]["message"]
