"""What a request asks beyond text, in an upstream's dialect, and what comes back.

modelyard decides structured outputs, tool calls and log probabilities itself on
the transformers engine (``_grammar``, ``_tools``); a request answered by another
server carries them in that server's words instead:

- to a **vLLM** server (the vllm engine, completions of prompts rendered here): the
  guide as the same grammar (``structured_outputs.grammar``), so both engines
  decode under one constraint, and ``logprobs`` as the legacy count;
- to an **OpenAI-compatible upstream** (the gateway, chat as messages):
  ``response_format``, ``tools`` and ``tool_choice`` as OpenAI's, and
  ``logprobs``/``top_logprobs``.

Back, an upstream's ``tool_calls`` are written into the answer's text in the
Hermes format the routes read calls from (``_tools.render_call``), so every engine's
calls reach clients, records and profiles the same way; log probabilities become
``TokenLogprob``s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.errors import ConfigError
from modelyard.serving._tools import render_call
from modelyard.serving._types import Guide, SamplingParams, TokenLogprob


def vllm_extras(params: SamplingParams) -> dict[str, Any]:
    """A vLLM completion's fields for ``params``' guide and logprobs."""
    out: dict[str, Any] = {}
    if params.guide is not None:
        from modelyard.serving._grammar import grammar_of  # xgrammar: only when asked

        out["structured_outputs"] = {"grammar": str(grammar_of(params.guide))}
    if params.logprobs is not None:
        out["logprobs"] = params.logprobs
    if params.prompt_logprobs:  # echo with logprobs: vLLM's own field, by token id
        out["prompt_logprobs"] = params.logprobs
    return out


def openai_extras(
    params: SamplingParams, chat: bool, tools: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """An OpenAI chat request's fields for ``params`` and the offered ``tools``; a
    completion takes only ``logprobs`` (OpenAI's completions have no structured outputs)."""
    out: dict[str, Any] = {}
    guide = params.guide
    if not chat:
        if guide is not None:
            raise ConfigError(
                f"{guide.param.split('.')[0]} on /v1/completions is not supported on the "
                "upstream engine (OpenAI's completions have no structured outputs)",
                hint="Use /v1/chat/completions for structured outputs from an upstream.",
                param=guide.param.split(".")[0],
            )
        if params.logprobs is not None:
            out["logprobs"] = params.logprobs
        return out
    if tools:
        out["tools"] = [{"type": "function", "function": dict(t)} for t in tools]
    if guide is not None and guide.kind == "tool_call":
        out["tool_choice"] = _tool_choice(guide)
    elif guide is not None:
        out["response_format"] = _response_format(guide)
    if params.logprobs is not None:
        out["logprobs"] = True
        out["top_logprobs"] = params.logprobs
    return out


def _response_format(guide: Guide) -> dict[str, Any]:
    if guide.kind == "json_object":
        return {"type": "json_object"}
    schema = json.loads(guide.schema)
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema,
                                                   "strict": True}}  # fmt: skip


def _tool_choice(guide: Guide) -> Any:
    """``required``, or the one function a ``tool_call`` guide allows (``_tools.call_guide``
    writes one choice per function, under ``anyOf`` when there are several)."""
    schema = json.loads(guide.schema)
    if "anyOf" in schema:
        return "required"
    return {"type": "function", "function": {"name": schema["properties"]["name"]["const"]}}


def openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as modelyard renders them (calls with ``arguments`` as objects) in
    OpenAI's shape again (``function.arguments`` as JSON text)."""
    out = []
    for m in messages:
        message = dict(m)
        if m.get("tool_calls"):
            message["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for c in m["tool_calls"]
            ]  # fmt: skip
        out.append(message)
    return out


def calls_as_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """An upstream's ``tool_calls`` (whole) in the Hermes text the routes parse."""
    written = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = function.get("arguments")
        written.append(render_call({"name": function.get("name"), "arguments": arguments}))
    return "\n".join(written)


class CallDeltas:
    """A streamed answer's ``delta.tool_calls``, put together by their ``index``."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas or ():
            call = self._calls.setdefault(int(delta.get("index", 0)), {"function": {}})
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = function["name"]
            call["function"]["arguments"] = call["function"].get("arguments", "") + (
                function.get("arguments") or ""
            )

    def text(self) -> str:
        return calls_as_text([self._calls[i] for i in sorted(self._calls)])


def _chat_token(token: Mapping[str, Any], top: int) -> TokenLogprob:
    alternatives = (token.get("top_logprobs") or [])[:top]
    return TokenLogprob(
        str(token.get("token", "")),
        float(token.get("logprob", 0.0)),
        tuple((str(a.get("token", "")), float(a.get("logprob", 0.0))) for a in alternatives),
    )


def logprobs_of(given: Any, top: int | None, chat: bool) -> tuple[TokenLogprob, ...] | None:
    """A choice's ``logprobs`` as ``TokenLogprob``s with at most ``top`` alternatives each:
    chat's ``content`` list, or a legacy completion's parallel lists (vLLM's include the
    chosen token among the alternatives)."""
    if top is None or not isinstance(given, Mapping):
        return None
    if chat:
        return tuple(_chat_token(t, top) for t in given.get("content") or ())
    tokens, values = given.get("tokens") or [], given.get("token_logprobs") or []
    alternatives = given.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, value, alts in zip(tokens, values, alternatives, strict=False):
        ranked = sorted((alts or {}).items(), key=lambda kv: -float(kv[1]))[:top]
        out.append(TokenLogprob(str(token), float(value), tuple((t, float(v)) for t, v in ranked)))
    return tuple(out)


def prompt_logprobs_of(given: Any, ids: Sequence[int], top: int) -> tuple[TokenLogprob, ...]:
    """vLLM's ``prompt_logprobs`` (per prompt position: None for the first, else token id →
    ``{logprob, rank, decoded_token}``, the prompt's token among them) as ``TokenLogprob``s
    of the prompt ``ids`` with at most ``top`` alternatives each."""
    if not isinstance(given, Sequence) or len(given) != len(ids):
        raise ValueError(f"prompt_logprobs for {len(ids)} prompt tokens expected")
    out = []
    for j, (token, entry) in enumerate(zip(ids, given, strict=True)):
        if j == 0 or not isinstance(entry, Mapping):
            first = entry.get(str(token)) if isinstance(entry, Mapping) else None
            text = str(first.get("decoded_token", "")) if isinstance(first, Mapping) else ""
            out.append(TokenLogprob(text, None))
            continue
        mine = entry[str(token)]
        ranked = sorted(
            (v for v in entry.values() if isinstance(v, Mapping)), key=lambda v: int(v["rank"])
        )
        alternatives = tuple(
            (str(v["decoded_token"]), float(v["logprob"])) for v in ranked if int(v["rank"]) <= top
        )
        out.append(TokenLogprob(str(mine["decoded_token"]), float(mine["logprob"]), alternatives))
    return tuple(out)


__all__ = [
    "CallDeltas",
    "calls_as_text",
    "logprobs_of",
    "openai_extras",
    "openai_messages",
    "prompt_logprobs_of",
    "vllm_extras",
]
