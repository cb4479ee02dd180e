"""Field types of the OpenAI wire shared by its request bodies (chat and text
completions, Responses): a text that must be valid Unicode, OpenAI's bounded
``metadata`` and its ``service_tier`` names."""

from __future__ import annotations

from typing import Annotated, Literal

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

MAX_METADATA = 16  # OpenAI's metadata: 16 pairs, keys of 64 characters, values of 512
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512


def _metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's bounds on ``metadata``, which it refuses past them (400) as this server does."""
    if len(value) > MAX_METADATA:
        raise ValueError(f"metadata has {len(value)} pairs; send at most {MAX_METADATA}")
    for key, text in value.items():
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


__all__ = ["MAX_METADATA", "Metadata", "ServiceTier", "Text"]
