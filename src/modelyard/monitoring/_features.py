"""Per-request drift features, computed on the data plane before the storage policy applies.

A tenant may keep prompts redacted, hashed or not at all; drift still needs to
know how long prompts were and what they were made of, so these numbers are
taken from the raw text at record time and stored beside the record
(``record_features``). Nothing here keeps any of the text itself. A shadow copy's
features are stored too, marked with its record's ``shadow``: drift reads the users'
requests only (``Store.feature_columns``).
"""

from __future__ import annotations

from modelyard.store import RecordFeatures

# The numeric features drift is computed on, in table order: (name, what it is).
FEATURES: tuple[tuple[str, str], ...] = (
    ("prompt_tokens", "prompt length in tokens"),
    ("completion_tokens", "response length in tokens"),
    ("prompt_chars", "prompt length in characters"),
    ("response_chars", "response length in characters"),
    ("prompt_non_ascii", "share of non-ASCII characters in the prompt"),
    ("prompt_digits", "share of digits in the prompt"),
    ("response_non_ascii", "share of non-ASCII characters in the response"),
    ("response_digits", "share of digits in the response"),
    ("unknown_token_rate", "share of prompt tokens unknown to the tokenizer"),
    ("latency_ms", "request latency in milliseconds"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _ in FEATURES)
# Features a dataset row has too (an evaluation dataset as the drift reference).
TEXT_FEATURES: tuple[str, ...] = (
    "prompt_chars",
    "response_chars",
    "prompt_non_ascii",
    "prompt_digits",
    "response_non_ascii",
    "response_digits",
)


def _shares(text: str) -> tuple[float, float]:
    """(non-ASCII share, digit share) of ``text``'s characters; 0 for empty text."""
    n = len(text)
    if n == 0:
        return 0.0, 0.0
    ascii_chars = len(text.encode("ascii", "ignore"))
    digits = sum(1 for c in text if c.isdigit())
    return (n - ascii_chars) / n, digits / n


def text_features(prompt: str | None, response: str | None) -> RecordFeatures:
    """The features of a (prompt, response) pair that need only the text."""
    prompt = prompt or ""
    response = response or ""
    p_non_ascii, p_digits = _shares(prompt)
    r_non_ascii, r_digits = _shares(response)
    return RecordFeatures(
        prompt_chars=len(prompt),
        response_chars=len(response),
        prompt_non_ascii=p_non_ascii,
        prompt_digits=p_digits,
        response_non_ascii=r_non_ascii,
        response_digits=r_digits,
    )


def record_features(
    prompt: str | None,
    response: str | None,
    *,
    unknown_tokens: int | None = None,
    prompt_tokens: int = 0,
    cache_hit: bool | None = None,
) -> RecordFeatures:
    """All features of one request. The engine counts ``unknown_tokens`` while it tokenizes
    the prompt (None: it cannot say, and the rate is unknown); nothing here tokenizes."""
    base = text_features(prompt, response)
    unknown: float | None = None
    if unknown_tokens is not None and prompt_tokens > 0:
        unknown = unknown_tokens / prompt_tokens
    return RecordFeatures(
        prompt_chars=base.prompt_chars,
        response_chars=base.response_chars,
        prompt_non_ascii=base.prompt_non_ascii,
        prompt_digits=base.prompt_digits,
        response_non_ascii=base.response_non_ascii,
        response_digits=base.response_digits,
        unknown_token_rate=unknown,
        cache_hit=cache_hit,
    )
