"""OpenAI's presence_penalty, frequency_penalty and logit_bias on the transformers engine:
the exact arithmetic on a row's logits (the answer's tokens counted, the prompt's not),
and through a real server with the official SDK on a tiny model. They were refused
('not supported by this server yet'); a parameter is never ignored."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import torch

from modelyard.serving import SamplingParams
from modelyard.serving._batching import LogitShaper, PendingRequest, Row
from modelyard.serving._wire import ChatCompletionRequest
from modelyard.store import ModelVersion
from tinymodels import Rambler


def _row(params: SamplingParams) -> Row:
    version = ModelVersion.__new__(ModelVersion)
    request = PendingRequest(version, [1, 2, 3], params)
    return Row(request, lambda ids: "", frozenset())


def test_penalties_and_bias_follow_openais_formula_on_the_answers_tokens_only() -> None:
    rows = [
        _row(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)),
        _row(SamplingParams()),  # a row without shaping in the same batch: untouched
        _row(SamplingParams(logit_bias=((1, 7.0), (4, -100.0)))),
    ]
    prompt = 3
    # columns 0-2 are the prompt (token 2 three times: it must not count), then the answer
    input_ids = torch.tensor([[2, 2, 2, 1, 1, 3], [2, 2, 2, 1, 1, 3], [2, 2, 2, 1, 1, 3]])
    scores = torch.zeros(3, 6)
    out = LogitShaper(rows, prompt)(input_ids, scores.clone())
    # token 1 twice in the answer: -(0.5 + 2 * 0.25); token 3 once: -(0.5 + 0.25)
    assert out[0].tolist() == [0.0, -1.0, 0.0, -0.75, 0.0, 0.0]
    assert out[1].tolist() == [0.0] * 6
    assert out[2].tolist() == [0.0, 7.0, 0.0, 0.0, -100.0, 0.0]
    # negative penalties raise what was used, as OpenAI allows
    raised = [_row(SamplingParams(frequency_penalty=-1.0))]
    assert LogitShaper(raised, prompt)(input_ids[:1], torch.zeros(1, 6))[0, 1] == 2.0


def test_shaped_requests_never_run_in_continuous_batching() -> None:
    assert SamplingParams().plain and SamplingParams(temperature=0).plain
    for shaped in (
        SamplingParams(temperature=0, presence_penalty=0.1),
        SamplingParams(temperature=0, frequency_penalty=-0.1),
        SamplingParams(temperature=0, logit_bias=((5, 1.0),)),
    ):
        assert shaped.shaped and not shaped.plain


def _letters(tokenizer: Any, count: int) -> list[int]:
    """Token ids that decode to two letters or more (no space), distinct texts."""
    found: dict[str, int] = {}
    for i in range(300, len(tokenizer)):
        text = tokenizer.decode([i])
        if text.isascii() and text.isalpha() and len(text) >= 2 and text not in found:
            found[text] = i
        if len(found) == count:
            break
    return list(found.values())


ASK: dict[str, Any] = {
    "model": "rambler",
    "messages": [{"role": "user", "content": "my vpn is down"}],
    "temperature": 0,
}


def test_a_logit_bias_decides_the_answer(rambler: Rambler) -> None:
    client, tokenizer, _ = rambler
    (x,) = _letters(tokenizer, 1)
    # +100 alone is not enough: an adapter trained to one answer puts tokens it never
    # saw 100 and more below it; every other token at -100 decides it
    assert len(tokenizer) <= 1024  # a bias per token, within the 1024 a request may send
    bias = {str(i): 100 if i == x else -100 for i in range(len(tokenizer))}
    reply = client.chat.completions.create(**ASK, max_tokens=6, logit_bias=bias)
    assert reply.choices[0].message.content == tokenizer.decode([x] * 6).strip()
    assert reply.usage is not None and reply.usage.completion_tokens == 6


def test_the_wire_hands_penalties_and_bias_to_the_engine_as_sent() -> None:
    """What the server reads of a body: the penalties as numbers, the bias sorted by id
    (the same ``shaping`` feeds every route, and the logit-bias test above proves the
    engine applies what it is handed)."""
    body = ChatCompletionRequest.model_validate({
        **ASK, "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"9": 1, "3": -2},
    })  # fmt: skip
    params = body.sampling(256)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -1.0)
    assert params.logit_bias == ((3, -2.0), (9, 1.0)) and params.shaped


def test_a_logit_bias_id_the_tokenizer_lacks_is_a_400_naming_it(
    rambler: Rambler,
) -> None:
    client, tokenizer, _ = rambler
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**ASK, max_tokens=2, logit_bias={"999999": 5})
    assert info.value.param == "logit_bias"
    assert "token id 999999" in info.value.message
    assert f"(ids 0 to {len(tokenizer) - 1})" in info.value.message
