"""Field types of the OpenAI wire shared by its request bodies (chat and text
completions, Responses): a text that must be valid Unicode (and a JSON object whose
texts, keys included, must be: a tool's schema), OpenAI's bounded ``metadata``, and its
``service_tier`` and ``prompt_cache_retention`` names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator


def _utf8(text: str) -> str:
    """``text`` if it can be encoded as UTF-8 (JSON may carry lone surrogates, ``\\ud800``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the text holds a lone surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}), which is not valid Unicode; send UTF-8 text"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


def utf8_json(value: Any, at: str = "") -> Any:
    """``value`` (a JSON value) if every text in it, keys included, is valid Unicode; else
    a ValueError naming where (``properties.city.description``): a tool's schema or a call's
    arguments go into the prompt, and a tokenizer fails on a lone surrogate (a 500)."""
    if isinstance(value, str):
        try:
            _utf8(value)
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}" if at else str(exc)) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            utf8_json(key, at or "a key")
            utf8_json(item, f"{at}.{key}" if at else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            utf8_json(item, f"{at}.{i}" if at else str(i))
    return value


# a JSON object whose texts are all valid Unicode (a JSON schema, say)
JsonObject = Annotated[dict[str, Any], AfterValidator(utf8_json)]

MAX_METADATA = 16  # OpenAI's metadata: 16 pairs, keys of 64 characters, values of 512
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512


def _metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's bounds on ``metadata``, which it refuses past them (400) as this server does."""
    if len(value) > MAX_METADATA:
        raise ValueError(f"metadata has {len(value)} pairs; send at most {MAX_METADATA}")
    for key, text in value.items():
        utf8_json(key, "a key")  # the Responses API echoes metadata
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(
                f"the key {key[:20]!r}... has {len(key)} characters; at most {MAX_METADATA_KEY}"
            )
        if len(text) > MAX_METADATA_VALUE:
            raise ValueError(
                f"the value of {key!r} has {len(text)} characters; at most {MAX_METADATA_VALUE}"
            )
    return value


Metadata = Annotated[dict[str, Text], AfterValidator(_metadata)]
# OpenAI's processing tiers: accepted (every request is served alike here), others refused
ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]
# OpenAI's prompt cache lifetimes: accepted (no effect here), others refused
PromptCacheRetention = Literal["in_memory", "24h"]


__all__ = [
    "MAX_METADATA",
    "JsonObject",
    "Metadata",
    "PromptCacheRetention",
    "ServiceTier",
    "Text",
    "utf8_json",
]
