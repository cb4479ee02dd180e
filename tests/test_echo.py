"""``echo`` on the legacy completions route: the answer repeats the prompt, and with
``logprobs`` the prompt's tokens come with their log probabilities, as an evaluation
harness scores a continuation (lm-evaluation-harness's ``local-completions`` sends token
ids, ``echo: true``, ``logprobs: 1``, ``max_tokens: 1`` and sums ``token_logprobs`` over
the continuation). Checked against the same model run by transformers and peft here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinymodels import Rambler


def _reference(tmp: Path, ids: list[int]) -> list[float]:
    """Each prompt token's log probability after the ones before it, from the base with the
    served adapter, computed here."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tmp / "base")
    with warnings.catch_warnings():  # peft warns about adapting the tied embeddings
        warnings.simplefilter("ignore", UserWarning)
        model = PeftModel.from_pretrained(base, tmp / "chatty").eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[j - 1, ids[j]]) for j in range(1, len(ids))]


ASK: dict[str, Any] = {"model": "rambler", "temperature": 0, "max_tokens": 3}


def test_echo_repeats_the_prompt_before_the_answer(
    rambler: Rambler,
) -> None:
    client, _, _ = rambler
    plain = client.completions.create(prompt="my vpn is down", **ASK)
    echoed = client.completions.create(prompt="my vpn is down", echo=True, **ASK)
    assert echoed.choices[0].text == "my vpn is down" + plain.choices[0].text
    assert echoed.choices[0].logprobs is None  # none asked
    assert echoed.usage == plain.usage  # the prompt is not counted twice


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(
    rambler: Rambler,
) -> None:
    client, _, tmp = rambler
    tokenizer = AutoTokenizer.from_pretrained(tmp / "base")
    context = tokenizer("the printer on floor two", add_special_tokens=False)["input_ids"]
    continuation = tokenizer(" is jammed again", add_special_tokens=False)["input_ids"]
    ids = context + continuation
    # what lm-evaluation-harness sends for one loglikelihood request
    reply = client.completions.create(
        model="rambler", prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert len(lp.tokens) == len(ids) + 1  # the prompt's tokens, then the one generated
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before it
    expected = _reference(tmp, ids)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    ctxlen = len(context)
    score = sum(lp.token_logprobs[ctxlen:-1])  # the harness's loglikelihood
    assert score == pytest.approx(sum(expected[ctxlen - 1 :]), rel=1e-4, abs=1e-3)
    # each prompt token's top alternative is there; greedy: the last is the best
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    generated = lp.top_logprobs[-1]
    assert next(iter(generated.values())) == lp.token_logprobs[-1]
    assert reply.choices[0].text.startswith(tokenizer.decode(ids))
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_a_streamed_echo_sends_each_prompt_first(rambler: Rambler) -> None:
    """As vLLM streams it: each choice's first chunk is its prompt, then the answer."""
    client, _, _ = rambler
    prompts = ["my vpn is down", "the printer on floor two"]
    whole = client.completions.create(prompt=prompts, echo=True, **ASK)
    texts: dict[int, list[str]] = {0: [], 1: []}
    for chunk in client.completions.create(prompt=prompts, echo=True, stream=True, **ASK):
        for choice in chunk.choices:
            texts[choice.index].append(choice.text)
    for i, prompt in enumerate(prompts):
        assert texts[i][0] == prompt
        assert "".join(texts[i]) == whole.choices[i].text


def test_echo_is_refused_where_it_cannot_be_honoured(rambler: Rambler) -> None:
    client, _, _ = rambler
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(prompt="hi", echo=True, stream=True, logprobs=1, **ASK)
    assert info.value.param == "logprobs"
    assert "with echo is not supported with stream: true" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            messages=[{"role": "user", "content": "hi"}], extra_body={"echo": True}, **ASK
        )
    assert info.value.param == "echo" and "echo is for /v1/completions" in info.value.message
