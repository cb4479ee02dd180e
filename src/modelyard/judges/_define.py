"""Checking a judge's definition before it is stored: each field, with what to do."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from modelyard.errors import ConfigError
from modelyard.judges._rubrics import check_rubric

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TOKENS = (1, 256)


def check_definition(
    *,
    rubric: str,
    prompt: str | None,
    base_url: str,
    model: str,
    api_key_env: str | None,
    max_tokens: int,
) -> None:
    """A ConfigError naming the first field that cannot make a judge."""
    check_rubric(rubric, prompt)
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"url {base_url!r} is not an http(s) URL",
            hint="Give the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.",
            field="url",
        )
    if not model.strip():
        raise ConfigError(
            "model is empty",
            hint="Name the endpoint (on a modelyard server) or the upstream's model.",
            field="model",
        )
    if api_key_env is not None and not _ENV_NAME.fullmatch(api_key_env):
        raise ConfigError(
            f"api key env {api_key_env!r} is not an environment variable's name",
            hint="Give the variable's name (e.g. JUDGE_API_KEY), never the key itself.",
            field="api_key_env",
        )
    low, high = MAX_TOKENS
    if not low <= max_tokens <= high:
        raise ConfigError(
            f"max tokens is {max_tokens}: use {low} to {high}",
            hint="A score needs a few tokens ('Score: 4'); 16 is the default.",
            field="max_tokens",
        )
