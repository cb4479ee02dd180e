"""An answer that ended on the end-of-sequence token counts that token, as vLLM and OpenAI
count it: the model computed it like any other, so it is billed work.

The transformers engine said one completion token fewer than the vllm engine for every
answer that ended on its own (the end of sequence is not text, and it counted only the
text's tokens), so a job's usage, cost and budget moved by a token a request when it moved
engine. Now both count every token generated. The text is the same as before; the end of
sequence still shows nowhere in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus
from modelyard.serving import BackgroundServer, TransformersEngine, create_app
from modelyard.store import Store
from tinymodels import QUICK_BASE, ending_adapter, random_adapter
from waiting import until

EOS = 2  # the tiny base's end of sequence
PROMPT = "my laptop will not boot"


@dataclass
class World:
    client: openai.OpenAI
    store: Store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Endpoint ``ender`` (an adapter whose answers end on the end of sequence after one
    token of text) and ``plain`` (a random adapter: its answers run to max_tokens)."""
    tmp = tmp_path_factory.mktemp("eos")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp / "home"))
        env.delenv("MODELYARD_STORE_URL", raising=False)
        env.delenv("MODELYARD_ARTIFACTS", raising=False)
        base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp / "base", **QUICK_BASE)
        artifacts = ArtifactStore(tmp / "artifacts")
        with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
            store.register_base_model("tiny", str(base.path), {})
            store.create_tenant("acme")
            store.create_registered_model("bot", tenant="acme")
            adapters = {
                "ender": ending_adapter(base.path, tmp / "ender"),
                "plain": random_adapter(base.path, tmp / "plain", seed=0),
            }
            for name, directory in adapters.items():
                digest = artifacts.put_dir(directory, kind="adapter").digest
                version = store.create_model_version(
                    "bot", kind="adapter", artifact_digest=digest, base_model="tiny",
                    run_id=None, lineage={"prompt_template": "chat-fallback"}, metrics={},
                )  # fmt: skip
                store.create_endpoint(name, model_ref=version.ref, tenant="acme")
            key = create_api_key(store, "acme")[1]
            engine = TransformersEngine(artifacts, store=store)
            try:
                app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None)
                with (
                    BackgroundServer(app) as server,
                    openai.OpenAI(
                        base_url=server.base_url + "/v1", api_key=key, max_retries=0
                    ) as client,
                ):
                    yield World(client, store)
            finally:
                engine.close()


def _streamed(client: openai.OpenAI, **request: Any) -> tuple[str, str | None, Any]:
    chunks = list(client.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    ))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices
                   and c.choices[0].finish_reason), None)  # fmt: skip
    return text, finish, chunks[-1].usage


def test_an_answer_that_ended_on_its_own_counts_its_end_of_sequence(world: World) -> None:
    client = world.client
    told = []  # usage.completion_tokens of each answer
    # greedy (decoded step by step, rows joining a running batch) and sampled (one generate)
    for sampling in ({"temperature": 0}, {"temperature": 0.7}):
        ask = {"model": "ender", "prompt": PROMPT, **sampling}
        done = client.completions.create(**ask, max_tokens=8)
        text, n = done.choices[0].text, done.usage.completion_tokens if done.usage else 0
        assert done.choices[0].finish_reason == "stop" and text, done
        assert done.usage and done.usage.total_tokens == done.usage.prompt_tokens + n
        # n is the answer's tokens: n - 1 of them are its text, cut by max_tokens there
        cut = client.completions.create(**ask, max_tokens=n - 1)
        assert (cut.choices[0].text, cut.choices[0].finish_reason) == (text, "length")
        assert cut.usage and cut.usage.completion_tokens == n - 1
        exact = client.completions.create(**ask, max_tokens=n)
        assert (exact.choices[0].text, exact.choices[0].finish_reason) == (text, "stop")
        assert exact.usage and exact.usage.completion_tokens == n
        # a streaming client is told the same usage, and sees the same text
        assert _streamed(client, **ask, max_tokens=8) == (text, "stop", done.usage)
        told += [n, n - 1, n, n]
    chat = client.chat.completions.create(
        model="ender", messages=[{"role": "user", "content": PROMPT}], max_tokens=8,
        temperature=0,
    )  # fmt: skip
    assert chat.choices[0].finish_reason == "stop" and chat.choices[0].message.content
    assert chat.usage and chat.usage.completion_tokens == 2  # one token of text, and the end
    told.append(2)

    def recorded() -> list[int] | None:
        rows = world.store.query_records(endpoint="ender", limit=None)
        done = [int(r["completion_tokens"]) for r in rows if r["status"] != "running"]
        return done if len(done) >= 9 else None

    # the records (costs, budgets) count what the client was told
    assert sorted(until("the ender's records", recorded, timeout_s=15)) == sorted(told)


def test_an_answer_that_is_only_the_end_of_sequence_is_one_token(world: World) -> None:
    """A logit bias makes the end of sequence the first token: no text, one token's work;
    with min_tokens 3 it comes after three tokens of text, the text of max_tokens 3."""
    client = world.client
    ask = {"model": "plain", "prompt": PROMPT, "temperature": 0}
    ended = client.completions.create(**ask, max_tokens=8, logit_bias={str(EOS): 100})
    assert (ended.choices[0].text, ended.choices[0].finish_reason) == ("", "stop")
    assert ended.usage and ended.usage.completion_tokens == 1
    three = client.completions.create(**ask, max_tokens=3)
    assert three.choices[0].finish_reason == "length" and three.choices[0].text
    late = client.completions.create(**ask, max_tokens=8, logit_bias={str(EOS): 100},
                                     extra_body={"min_tokens": 3})  # fmt: skip
    assert (late.choices[0].text, late.choices[0].finish_reason) == (three.choices[0].text, "stop")
    assert late.usage and late.usage.completion_tokens == 4


def test_a_stop_string_counts_the_token_that_completed_it(world: World) -> None:
    """As vLLM counts it: the tokens generated up to the one that completed the stop string
    (the text is cut before the stop string)."""
    client = world.client
    ask = {"model": "plain", "prompt": PROMPT, "temperature": 0}
    whole = client.completions.create(**ask, max_tokens=8)
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and len(text) > 3
    first = client.completions.create(**ask, max_tokens=1).choices[0].text
    at = next(i for i in range(len(first), len(text) - 1) if text[i : i + 2].isalnum())
    stop = text[at : at + 2]
    cut = client.completions.create(**ask, max_tokens=8, stop=[stop])
    expected = text[: text.find(stop)].rstrip()
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected, "stop")
    n = cut.usage.completion_tokens if cut.usage else 0
    # the first n tokens' text holds the stop string; the first n - 1 tokens' does not
    assert stop in client.completions.create(**ask, max_tokens=n).choices[0].text
    assert stop not in client.completions.create(**ask, max_tokens=n - 1).choices[0].text


def _entries(client: openai.OpenAI, chat: bool, stream: bool, **ask: Any) -> tuple[Any, ...]:
    """(text, logprob entries, usage) of one answer through the SDK, streamed or not; an
    entry is (token, logprob, bytes (chat), text_offset (completions), alternatives)."""
    streaming: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
    more = streaming if stream else {}
    if chat:
        messages = [{"role": "user", "content": PROMPT}]
        got = client.chat.completions.create(
            **ask, messages=messages, logprobs=True, top_logprobs=2, **more
        )
        pieces = list(got) if stream else [got]
        text = "".join(
            (p.choices[0].delta.content if stream else p.choices[0].message.content) or ""
            for p in pieces if p.choices
        )  # fmt: skip
        entries = [
            (t.token, t.logprob, t.bytes, None, [a.token for a in t.top_logprobs])
            for p in pieces if p.choices and p.choices[0].logprobs
            for t in p.choices[0].logprobs.content or ()
        ]  # fmt: skip
        return text, entries, pieces[-1].usage
    got = client.completions.create(**ask, prompt=PROMPT, logprobs=2, **more)
    pieces = list(got) if stream else [got]
    entries = []
    for p in pieces:
        lp = p.choices[0].logprobs if p.choices else None
        if lp is not None:
            parallel = (lp.tokens, lp.token_logprobs, lp.text_offset, lp.top_logprobs)
            rows = zip(*(x or [] for x in parallel), strict=True)
            entries += [(t, v, None, at, sorted(top or {})) for t, v, at, top in rows]
    return "".join(p.choices[0].text for p in pieces if p.choices), entries, pieces[-1].usage


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_the_end_of_sequence_has_its_log_probability(world: World, chat: bool) -> None:
    """As vLLM gives it: every token counted in completion_tokens has its logprobs entry,
    the end of sequence too (its token as written, ``</s>``, and its bytes; its
    ``text_offset`` the end of the text), though the text never shows it; streamed or not."""
    client = world.client
    for endpoint, bias, texts in (("ender", {}, 1), ("plain", {"logit_bias": {str(EOS): 100}}, 0)):
        ask = {"model": endpoint, "max_tokens": 8, "temperature": 0, **bias}
        seen = []
        for stream in (False, True):
            text, entries, usage = _entries(client, chat, stream, **ask)
            assert usage and len(entries) == usage.completion_tokens, (endpoint, stream, entries)
            *words, (token, logprob, spelt, offset, top) = entries
            assert token == "</s>" and "</s>" not in (text or "")
            assert logprob is not None and logprob <= 0 and 1 <= len(top) <= 2
            if chat:  # bytes: those of the token as written, as vLLM's
                assert spelt == list(b"</s>")
            else:  # where the text ends: after the characters of the tokens before it
                assert offset == sum(len(w[0]) for w in words) == len(text or "")
            assert bool(text) == bool(texts) and len(words) >= texts
            seen.append((text, entries))
        assert seen[0][0] == seen[1][0]
        assert [e[:4] for e in seen[0][1]] == [e[:4] for e in seen[1][1]]  # streamed: the same
