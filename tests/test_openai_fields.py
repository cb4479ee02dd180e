"""OpenAI's request fields as the official SDK sends them, each honoured or refused with a
400 naming it, never silently dropped or left to fail inside the engine (a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
