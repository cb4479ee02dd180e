"""vLLM's sampling extensions (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
sent by clients migrating from vLLM through the openai SDK's ``extra_body``): checked at the
border (400s naming them), applied by the transformers engine as vLLM applies them (through
a real server, the official SDK and a tiny model), passed on to vLLM, refused by the
upstream and echo engines, and changing nothing at their neutral values. They were refused
as unknown parameters ("not a parameter this server accepts")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from modelyard.access import create_api_key
from modelyard.errors import ConfigError
from modelyard.serving import BackgroundServer, EchoEngine, SamplingParams, create_app
from modelyard.serving._batching import LogitShaper, PendingRequest, Row, visible_text
from modelyard.serving._upstream import UpstreamSpec, request_body
from modelyard.serving._wire import ChatCompletionRequest
from modelyard.store import ModelVersion, Store
from test_upstream import Faults, _client, _gateway
from tinymodels import Rambler
from worlds import two_tenant_world

EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "min_tokens")
NEUTRAL: dict[str, Any] = {"top_k": -1, "min_p": 0, "repetition_penalty": 1, "min_tokens": 0}
SET: dict[str, Any] = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3, "min_tokens": 2}


# -- the border -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The echo engine behind a real server: tenant acme's endpoint ``acme-support``."""
    tmp = tmp_path_factory.mktemp("extensions")
    with Store.open(f"sqlite:///{tmp}/s.db") as store:
        two_tenant_world(store, tenants=("acme",), versions=1)
        _, key = create_api_key(store, "acme")
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server:
            yield server.base_url, key


def _post(echo: tuple[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    url, key = echo
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


CHAT = {"model": "acme-support", "messages": [{"role": "user", "content": "vpn is down"}]}
COMPLETION = {"model": "acme-support", "prompt": "vpn is down"}


@pytest.mark.parametrize(
    ("param", "value", "fragment"),
    [
        ("top_k", -2, "greater than or equal to -1"),
        ("top_k", 2.0, "valid integer"),
        ("top_k", "5", "valid integer"),
        ("top_k", True, "valid integer"),
        ("min_p", 1.5, "less than or equal to 1"),
        ("min_p", -0.1, "greater than or equal to 0"),
        ("min_p", "0.1", "valid number"),
        ("repetition_penalty", 0, "greater than 0"),
        ("repetition_penalty", 2.5, "less than or equal to 2"),
        ("repetition_penalty", [1.1], "valid number"),
        ("min_tokens", -1, "greater than or equal to 0"),
        ("min_tokens", 3.0, "valid integer"),
        ("min_tokens", 9, "min_tokens is 9; it must be from 0 to max_tokens (4)"),
    ],
)
def test_extensions_out_of_range_or_of_the_wrong_type_are_400s_naming_them(
    echo: tuple[str, str], param: str, value: Any, fragment: str
) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        response = _post(echo, path, {**body, "max_tokens": 4, param: value})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and fragment in error["message"], error


def test_min_tokens_above_the_default_token_cap_raises_the_cap_or_is_a_400() -> None:
    """Without max_tokens an answer may have 64 tokens; min_tokens above that asks for
    more (up to the server's cap), and above the cap it is a 400 naming min_tokens."""
    body = ChatCompletionRequest.model_validate({**CHAT, "min_tokens": 100})
    assert body.sampling(256).max_tokens == 100
    with pytest.raises(ConfigError) as info:
        body.sampling(80)
    assert info.value.context["param"] == "min_tokens"
    assert "from 0 to max_tokens (80)" in info.value.message


def test_the_wire_hands_the_extensions_to_the_engine_as_sent() -> None:
    params = ChatCompletionRequest.model_validate({**CHAT, **SET}).sampling(256)
    assert (params.top_k, params.min_p, params.repetition_penalty, params.min_tokens) == (
        5, 0.1, 1.3, 2,
    )  # fmt: skip
    assert params.extended == EXTENSIONS and params.shaped and not params.plain
    neutral = ChatCompletionRequest.model_validate({**CHAT, **NEUTRAL}).sampling(256)
    assert neutral == ChatCompletionRequest.model_validate(CHAT).sampling(256)
    assert neutral.top_k == 0 and not neutral.extended  # -1: no cut, as vLLM reads it


@pytest.mark.parametrize("param", EXTENSIONS)
def test_set_extensions_never_run_in_continuous_batching(param: str) -> None:
    params = SamplingParams(temperature=0, max_tokens=8, **{param: SET[param]})
    assert params.extended == (param,) and params.shaped and not params.plain
    assert SamplingParams(temperature=0, **NEUTRAL).plain


@pytest.mark.parametrize("param", EXTENSIONS)
def test_the_echo_engine_refuses_them_and_takes_their_neutral_values(
    echo: tuple[str, str], param: str
) -> None:
    refused = _post(echo, "/v1/chat/completions", {**CHAT, param: SET[param]})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == param
    assert f"{param} is not supported on the echo engine" in error["message"]
    plain = _post(echo, "/v1/chat/completions", CHAT)
    neutral = _post(echo, "/v1/chat/completions", {**CHAT, param: NEUTRAL[param]})
    assert neutral.status_code == 200, neutral.text
    assert neutral.json()["choices"] == plain.json()["choices"]


# -- upstreams and vLLM -------------------------------------------------------------------


@pytest.mark.parametrize("param", EXTENSIONS)
def test_an_upstream_refuses_them_with_a_400_and_is_sent_no_neutral_value(
    tmp_path: Path, param: str
) -> None:
    """OpenAI and other providers do not take vLLM's extensions: a 400 naming the parameter
    (never dropped); at its neutral value it is accepted and not forwarded."""
    faults = Faults(["ok"])
    with BackgroundServer(faults.app) as server:
        spec = UpstreamSpec(base_url=server.base_url + "/v1", model="gpt-4o-mini")
        for gw in _gateway(tmp_path, spec, None):
            client = _client(gw)
            ask: dict[str, Any] = {
                "model": "acme-support", "messages": [{"role": "user", "content": "hi"}],
            }  # fmt: skip
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(**ask, extra_body={param: SET[param]})
            assert info.value.param == param
            assert f"{param} is not supported on the upstream engine" in info.value.message
            client.chat.completions.create(**ask, extra_body={param: NEUTRAL[param]})
    (sent,) = faults.bodies  # the refused request never reached the upstream
    assert not set(EXTENSIONS) & set(sent)


def test_vllm_is_sent_the_extensions_and_no_neutral_value() -> None:
    spec = UpstreamSpec(base_url="http://vllm/v1", model="m")
    body = request_body(spec, "hi", SamplingParams(max_tokens=8, **SET), False, vllm=True)
    assert {k: body[k] for k in EXTENSIONS} == SET
    plain = request_body(spec, "hi", SamplingParams(max_tokens=8, **NEUTRAL), False, vllm=True)
    assert not set(EXTENSIONS) & set(plain)


# -- the transformers engine: the arithmetic ----------------------------------------------


def _row(params: SamplingParams, prompt: list[int]) -> Row:
    version = ModelVersion.__new__(ModelVersion)
    return Row(PendingRequest(version, prompt, params), lambda ids: "", frozenset())


def test_the_repetition_penalty_is_transformers_own_on_the_prompt_and_the_answer() -> None:
    """Row 0 is left-padded (two pad tokens, id 7, which must not be penalized); row 1 has
    no penalty and is untouched."""
    torch.manual_seed(0)
    rows = [
        _row(SamplingParams(repetition_penalty=1.7), [2, 3]),
        _row(SamplingParams(), [1, 2, 3, 4]),
    ]
    input_ids = torch.tensor([[7, 7, 2, 3, 5, 5], [1, 2, 3, 4, 5, 6]])
    scores = torch.randn(2, 10)
    out = LogitShaper(rows, 4)(input_ids, scores.clone())
    want = RepetitionPenaltyLogitsProcessor(1.7)(input_ids[:1, 2:], scores[:1].clone())
    assert torch.equal(out[0], want[0])
    assert out[0, 7] == scores[0, 7] and out[0, 2] != scores[0, 2]
    assert torch.equal(out[1], scores[1])
    # in vLLM's order: the logit bias first, then the penalty (-2 + 3, halved; not -4 + 3)
    both = [_row(SamplingParams(repetition_penalty=2.0, logit_bias=((1, 3.0),)), [1])]
    assert LogitShaper(both, 1)(torch.tensor([[1]]), torch.full((1, 3), -2.0))[0, 1] == 0.5


def test_min_tokens_rules_out_the_end_of_sequence_until_the_answer_has_them() -> None:
    rows = [_row(SamplingParams(min_tokens=2), [1, 2])]
    shaper = LogitShaper(rows, 2, frozenset({0, 9}))
    for answer, barred in (([], True), ([5], True), ([5, 5], False)):
        out = shaper(torch.tensor([[1, 2, *answer]]), torch.zeros(1, 6))
        assert bool(out[0, 0] == -float("inf")) is barred  # id 9 is past the vocabulary: skipped
        assert out[0, 1:].tolist() == [0.0] * 5


def test_a_stop_string_counts_only_past_the_first_min_tokens_tokens_text() -> None:
    """As vLLM: a stop string that ends within the first min_tokens tokens' text does not end
    the answer, one that ends after it does (the text is cut before it)."""
    assert visible_text("abab!", ["ab"], final=True, after=4) == ("abab!", False)
    assert visible_text("ababab", ["ab"], final=True, after=4) == ("abab", True)
    assert visible_text("xa|b", ["a|b"], final=True, after=3) == ("x", True)  # ends past 3
    assert visible_text("  ab ab", ["ab"], final=True, after=4) == ("ab", True)  # stripped


# -- the transformers engine through a real server ----------------------------------------


ASK: dict[str, Any] = {
    "model": "rambler",
    "messages": [{"role": "user", "content": "my vpn is down"}],
    "temperature": 0,
}


def _letter(tokenizer: Any) -> int:
    """A token id that decodes to two letters or more (no space)."""
    return next(
        i
        for i in range(300, len(tokenizer))
        if (t := tokenizer.decode([i])).isascii() and t.isalpha() and len(t) >= 2
    )


def _only(tokenizer: Any, token: int) -> dict[str, int]:
    """A logit bias that decides every step for ``token``: it +100, every other -100."""
    assert len(tokenizer) <= 1024  # a bias per token, within what a request may send
    return {str(i): 100 if i == token else -100 for i in range(len(tokenizer))}


def test_min_tokens_keeps_an_answer_going_past_the_end_of_sequence(
    rambler: Rambler,
) -> None:
    """A bias makes the end of sequence win every step (the answer is empty); min_tokens 5
    rules it out for five tokens, so the answer has exactly five and then ends. The end of
    sequence counts among the completion tokens (vLLM's and OpenAI's count): 1, then 6."""
    client, tokenizer, _ = rambler
    bias = _only(tokenizer, tokenizer.eos_token_id)
    ended = client.chat.completions.create(**ASK, max_tokens=8, logit_bias=bias)
    assert ended.choices[0].finish_reason == "stop"
    assert ended.choices[0].message.content == ""
    assert ended.usage is not None and ended.usage.completion_tokens == 1
    for stream in (False, True):
        kept = client.chat.completions.create(
            **ASK, max_tokens=8, logit_bias=bias, extra_body={"min_tokens": 5},
            stream=stream, stream_options={"include_usage": True} if stream else None,
        )  # fmt: skip
        if stream:
            chunks = list(kept)
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert reasons[-1] == "stop"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        else:
            assert kept.choices[0].finish_reason == "stop"
            assert kept.usage is not None and kept.usage.completion_tokens == 6


def test_min_tokens_lets_a_stop_string_end_the_answer_only_past_them(
    rambler: Rambler,
) -> None:
    """Every step writes the token x, and x's text is a stop string: it ends the answer at
    once, and with min_tokens 3 it ends it at the fourth x (cut before it), as vLLM does."""
    client, tokenizer, _ = rambler
    x = _letter(tokenizer)
    text = tokenizer.decode([x])
    ask = {**ASK, "max_tokens": 8, "logit_bias": _only(tokenizer, x), "stop": [text]}
    at_once = client.chat.completions.create(**ask)
    assert at_once.choices[0].message.content == ""
    later = client.chat.completions.create(**ask, extra_body={"min_tokens": 3})
    assert later.choices[0].message.content == tokenizer.decode([x] * 3).strip()
    assert later.choices[0].finish_reason == "stop"
    assert later.usage is not None and later.usage.completion_tokens == 4


def test_top_k_1_and_min_p_1_sample_the_greedy_answer(rambler: Rambler) -> None:
    """Sampling hot with top_k 1 (or min_p 1: only tokens as likely as the most likely)
    keeps the most likely token alone: the greedy answer, whatever the seed. Without them,
    some seed samples another answer (so they are applied, not ignored)."""
    client, _, _ = rambler
    greedy = client.chat.completions.create(**ASK, max_tokens=12).choices[0].message.content
    assert greedy
    hot = {**ASK, "max_tokens": 12, "temperature": 2}
    wild = set()
    for seed in range(3):
        for extra in ({"top_k": 1}, {"min_p": 1.0}):
            reply = client.chat.completions.create(**hot, seed=seed, extra_body=extra)
            assert reply.choices[0].message.content == greedy, extra
        wild.add(client.chat.completions.create(**hot, seed=seed).choices[0].message.content)
    assert wild != {greedy}
    # greedy with top_k or min_p: no effect, as in vLLM
    for extra in ({"top_k": 3}, {"min_p": 0.5}):
        reply = client.chat.completions.create(**ASK, max_tokens=12, extra_body=extra)
        assert reply.choices[0].message.content == greedy


def test_a_repetition_penalty_changes_a_looping_answer(
    rambler: Rambler,
) -> None:
    """The rambler repeats its tokens; a strong penalty on them gives another answer (the
    same every time: greedy)."""
    client, tokenizer, _ = rambler
    ask = {**ASK, "max_tokens": 24}
    plain = client.chat.completions.create(**ask).choices[0].message.content
    assert plain is not None
    ids = tokenizer(plain, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) < len(ids)  # the rambler repeats itself
    penalized = client.chat.completions.create(**ask, extra_body={"repetition_penalty": 2.0})
    again = client.chat.completions.create(**ask, extra_body={"repetition_penalty": 2.0})
    assert penalized.choices[0].message.content != plain
    assert penalized.choices[0].message.content == again.choices[0].message.content


def test_min_tokens_with_a_constraint_is_a_400_on_the_transformers_engine(
    rambler: Rambler,
) -> None:
    client, _, _ = rambler
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            **ASK, max_tokens=8, response_format={"type": "json_object"},
            extra_body={"min_tokens": 2},
        )  # fmt: skip
    assert info.value.param == "min_tokens"
    assert "the grammar decides where the answer ends" in info.value.message
