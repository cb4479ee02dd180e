"""Constrained decoding with xgrammar: a ``Guide`` checked when a request arrives, compiled
for a base's tokenizer, and applied to each guided row's logits as a token mask.

``grammar_of`` turns a guide into an xgrammar ``Grammar`` (no tokenizer needed: the
server checks every guide this way before it queues the request, so a schema the
library cannot compile is the client's 400, whatever the engine). ``Grammars``
compiles guides for one base's tokenizer (cached: frameworks send the same schema
with every request). ``GuideMasks`` is the logits processor of a ``generate``
batch: at each step it feeds each guided row's previous token to its matcher and
masks every token the grammar does not allow next, so the row can only write text
the grammar accepts, and only end (the base's end-of-sequence tokens) once the
grammar is complete.

JSON is written compactly (``{"a": 1, "b": 2}``, no free whitespace): a model under
a grammar that allows any whitespace can spend its whole budget on newlines.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import xgrammar as xgr

from modelyard.errors import ConfigError
from modelyard.serving._types import Guide

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"
_COMPILED_CACHE = 64  # compiled guides kept per base
_LIBRARY_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
# xgrammar (0.2.9) writes a length-bounded string's characters as [^"\\\r\n]: control
# characters pass and escapes do not. JSON's own rule is [^"\\\0-\x1f] (escapes aside).
_LOOSE_CHARACTER = '[^\\"\\\\\\r\\n]'
_JSON_CHARACTER = '[^\\"\\\\\\0-\\x1f]'


def _literal(text: str) -> xgr.Grammar:
    return xgr.Grammar.from_ebnf("root ::= " + _ebnf_string(text))


def _ebnf_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@functools.lru_cache(maxsize=256)
def grammar_of(guide: Guide) -> xgr.Grammar:
    """The grammar of ``guide``; a schema xgrammar cannot compile is a ``ConfigError``
    naming the parameter that carried it."""
    if guide.kind == "json_object":
        return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=False)
    try:
        schema = xgr.Grammar.from_json_schema(guide.schema, any_whitespace=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        why = _LIBRARY_PREFIX.sub("", str(exc)).strip() or type(exc).__name__
        raise ConfigError(
            f"{guide.param}: the JSON schema cannot be used for constrained decoding: {why}",
            hint="Send a JSON Schema object (draft 2020-12 keywords; $ref to $defs inside it).",
            param=guide.param,
        ) from None
    schema = xgr.Grammar.from_ebnf(str(schema).replace(_LOOSE_CHARACTER, _JSON_CHARACTER))
    if guide.kind == "tool_call":
        return xgr.Grammar.concat(_literal(TOOL_CALL_OPEN), schema, _literal(TOOL_CALL_CLOSE))
    return schema


class Grammars:
    """Guides compiled for one base's tokenizer (thread-safe, the latest 64 kept)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._compiled: OrderedDict[Guide, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, guide: Guide) -> xgr.GrammarMatcher:
        """A fresh matcher for one row decoding under ``guide``."""
        with self._lock:
            compiled = self._compiled.get(guide)
            if compiled is None:
                compiled = self._compile(guide)
                self._compiled[guide] = compiled
                while len(self._compiled) > _COMPILED_CACHE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(guide)
        return xgr.GrammarMatcher(compiled)

    def _compile(self, guide: Guide) -> xgr.CompiledGrammar:
        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._eos_ids
            )
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler.compile_grammar(grammar_of(guide))


class GuideMasks:
    """A ``generate`` logits processor: row ``i`` of the batch decodes under ``matchers[i]``
    (None: unconstrained). A row that has ended (its matcher refused the padding that
    follows) is left alone."""

    def __init__(self, matchers: Sequence[xgr.GrammarMatcher | None], vocab_size: int) -> None:
        self._matchers = list(matchers)
        self._vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(len(matchers), vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._started:
            previous = input_ids[:, -1].tolist()
            for i, matcher in enumerate(self._matchers):
                if matcher is not None and not matcher.accept_token(int(previous[i])):
                    self._matchers[i] = None  # ended: what follows is padding
        self._started = True
        rows = []
        for i, matcher in enumerate(self._matchers):
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self._bitmask, i)
                rows.append(i)
        if rows:
            masked = scores.float() if scores.dtype != torch.float32 else scores
            xgr.apply_token_bitmask_inplace(
                masked, self._bitmask.to(masked.device), vocab_size=self._vocab_size, indices=rows
            )
            return masked
        return scores


__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "Grammars", "GuideMasks", "grammar_of"]
