"""The OpenAI API in depth, through the official openai SDK: model retrieval, the legacy
completions API's prompt lists, and n choices (issue 14)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from modelyard.access import create_api_key
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import two_tenant_world


@dataclass
class Served:
    url: str
    store: Store
    keys: dict[str, str]
    clients: ExitStack  # the openai clients of a test, closed when it ends

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], max_retries=0)
        return self.clients.enter_context(client)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        two_tenant_world(store, template="text")
        keys = {t: create_api_key(store, t)[1] for t in ("acme", "globex")}
        app = create_app(store, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app) as server, ExitStack() as clients:
            yield Served(server.base_url, store, keys, clients)


def test_models_retrieve_answers_only_the_keys_own_endpoints(served: Served) -> None:
    client = served.client()
    model = client.models.retrieve("acme-support")
    assert model.id == "acme-support" and model.object == "model" and model.owned_by == "acme"
    for name in ("globex-support", "no-such-endpoint"):  # another tenant's reads as missing
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(name)
        assert caught.value.code == "model_not_found" and name in str(caught.value)
    r = httpx.get(served.url + "/v1/models/acme-support")
    assert r.status_code == 401  # a key is needed, as for the list


def test_a_list_of_prompts_is_one_choice_each(served: Served) -> None:
    done = served.client().completions.create(
        model="acme-support", prompt=["reset my password", "printer on floor two"], max_tokens=8
    )
    assert [(c.index, c.text) for c in done.choices] == [
        (0, "reset my password"),
        (1, "printer on floor two"),
    ]
    assert done.usage is not None and done.usage.completion_tokens == 3 + 4
    deadline = time.monotonic() + 10
    while served.store.count_inference_records(endpoint="acme-support") < 2:
        assert time.monotonic() < deadline, "each prompt is recorded"
        time.sleep(0.05)
    one = served.client().completions.create(model="acme-support", prompt=["just one"])
    assert [c.text for c in one.choices] == ["just one"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"prompt": [1, 2, 3]}, "token ids are not supported"),
        ({"prompt": [[1, 2], [3]]}, "token ids are not supported"),
        ({"prompt": []}, "the prompt list is empty"),
        ({"prompt": ["x"] * 17}, "send at most 16"),
    ],
)
def test_prompts_the_server_cannot_answer_are_400_naming_them(
    served: Served, body: dict[str, object], said: str
) -> None:
    r = httpx.post(
        served.url + "/v1/completions",
        json={"model": "acme-support", "max_tokens": 4, **body},
        headers={"Authorization": f"Bearer {served.keys['acme']}"},
    )
    assert r.status_code == 400, r.text
    assert said in r.json()["error"]["message"]


def test_n_choices_each_a_request_of_their_own(served: Served) -> None:
    client = served.client()
    chat = client.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": "where is my parcel"}], n=2
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # echo engine
    assert chat.usage is not None and chat.usage.completion_tokens == 2 * 4
    both = client.completions.create(model="acme-support", prompt=["a b", "c"], n=3, seed=7)
    assert [c.text for c in both.choices] == ["a b"] * 3 + ["c"] * 3  # prompt by prompt
    deadline = time.monotonic() + 10
    while served.store.count_inference_records(endpoint="acme-support") < 2 + 6:
        assert time.monotonic() < deadline, "each choice is recorded"
        time.sleep(0.05)


def test_several_choices_stream_as_one_stream_by_index(served: Served) -> None:
    client = served.client()
    chunks = list(
        client.chat.completions.create(
            model="acme-support",
            messages=[{"role": "user", "content": "where is my parcel"}],
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == dict.fromkeys(range(3), "where is my parcel")
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3 * 4
    legacy = client.completions.create(
        model="acme-support", prompt=["a b", "c d e"], max_tokens=8, stream=True
    )
    by_prompt: dict[int, str] = {}
    for chunk in legacy:
        for c in chunk.choices:
            by_prompt[c.index] = by_prompt.get(c.index, "") + c.text
    assert by_prompt == {0: "a b", 1: "c d e"}
    deadline = time.monotonic() + 10
    while served.store.count_inference_records(endpoint="acme-support") < 3 + 2:
        assert time.monotonic() < deadline, "each streamed choice is recorded"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"n": 9}, "ask for 1 to 8 choices"),
        ({"n": 0}, "ask for 1 to 8 choices"),
    ],
)
def test_choices_the_server_cannot_answer_are_400_naming_them(
    served: Served, body: dict[str, object], said: str
) -> None:
    r = httpx.post(
        served.url + "/v1/chat/completions",
        json={"model": "acme-support", "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"Authorization": f"Bearer {served.keys['acme']}"},
    )
    assert r.status_code == 400, r.text
    assert said in r.json()["error"]["message"]
