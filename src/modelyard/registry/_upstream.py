"""Upstream versions: a registered version whose answers come from another OpenAI-compatible
server (an external provider, an existing vLLM fleet, another modelyard).

``UpstreamSpec`` is what such a version holds, as ``upstream.json`` in its
artifact (content-addressed and verified like weights, so the spec a version
was approved with is the one that serves): the base URL, the upstream's model
name, a *reference* to its key (an environment variable or a file, read by the
serving process; the key itself is never stored, logged or returned),
timeouts, retries, a concurrency cap, extra headers and prices per 1,000
tokens. ``register_upstream`` registers one: the upstream model becomes the
version's base model (``<model>@<host>``, no weights), and its prices that
base's token prices, so records, profiles and costs treat it like any version.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ConfigError, UpstreamError
from modelyard.registry._lineage import lineage_record
from modelyard.registry._orphans import (
    check_model_owner,
    discard_unreferenced,
    drop_if_empty,
    ensure_model,
)
from modelyard.store import ModelVersion, Store

SPEC_FILE = "upstream.json"
SPEC_FORMAT = "modelyard.upstream/1"
UPSTREAM_TEMPLATE = "upstream"  # the prompt template of an upstream: its own chat template
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


def _price_ok(price: float | None) -> bool:
    return price is None or (math.isfinite(price) and price >= 0)


@dataclass(frozen=True)
class UpstreamSpec:
    """Where an upstream version's tokens come from, and how to ask (see the module doc)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    api_key_file: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2
    max_concurrency: int = 16
    input_per_1k: float | None = None
    output_per_1k: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # What a chat request calls the answer's token cap: OpenAI's o-series and gpt-5 models
    # refuse max_tokens and take max_completion_tokens, which other servers may not know.
    max_tokens_field: str = "max_tokens"

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        checks = (
            ("base_url", parts.scheme in ("http", "https") and bool(parts.netloc),
             "an http:// or https:// URL, such as https://api.openai.com/v1"),
            ("model", bool(self.model.strip()), "the upstream's model name"),
            ("api_key_env", self.api_key_env is None or self.api_key_env.isidentifier(),
             "the name of an environment variable"),
            ("timeout_s", math.isfinite(self.timeout_s) and self.timeout_s > 0, "above 0"),
            ("connect_timeout_s", math.isfinite(self.connect_timeout_s)
             and self.connect_timeout_s > 0, "above 0"),
            ("max_retries", 0 <= self.max_retries <= 10, "from 0 to 10"),
            ("max_concurrency", 1 <= self.max_concurrency <= 1024, "from 1 to 1024"),
            ("input_per_1k", _price_ok(self.input_per_1k), "0 or more (a finite number)"),
            ("output_per_1k", _price_ok(self.output_per_1k), "0 or more (a finite number)"),
            ("max_tokens_field", self.max_tokens_field in MAX_TOKENS_FIELDS,
             " or ".join(MAX_TOKENS_FIELDS)),
        )  # fmt: skip
        for name, ok, allowed in checks:
            if not ok:
                value = getattr(self, name)  # field and allowed: the CLI names its option
                raise ConfigError(f"upstream {name} is {value!r}; use {allowed}", field=name,
                                  value=value, allowed=allowed)  # fmt: skip
        if self.api_key_env and self.api_key_file:
            raise ConfigError("an upstream takes its key from an environment variable or a file, "
                              "not both")  # fmt: skip
        if any(k.lower() == "authorization" for k in self.headers):
            raise ConfigError(
                "an upstream's Authorization header comes from its key reference "
                "(api_key_env or api_key_file), never from stored headers"
            )

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def credential(self) -> str:
        """Where the key comes from, for messages (the reference, never the key)."""
        if self.api_key_env:
            return f"the environment variable {self.api_key_env}"
        if self.api_key_file:
            return f"the file {self.api_key_file}"
        return "no key"

    def api_key(self) -> str | None:
        """The key, read now from its reference (a missing one is the operator's mistake)."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "").strip()
            if not value:
                raise UpstreamError(
                    f"the upstream key {self.api_key_env} is not set in this process's environment",
                    hint=f"Set {self.api_key_env} in the environment of the process that asks "
                    "the upstream (`modelyard serve`, `batch run` or `stream run`).",
                )
            return value
        if self.api_key_file:
            try:
                value = Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UpstreamError(
                    f"the upstream key file {self.api_key_file} cannot be read: "
                    f"{exc.strerror or exc}"
                ) from None
            if not value:
                raise UpstreamError(f"the upstream key file {self.api_key_file} is empty")
            return value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "base_url": self.base_url,
            "model": self.model,
            "api_key": {"env": self.api_key_env} if self.api_key_env
            else {"file": self.api_key_file} if self.api_key_file else None,
            "timeout_s": self.timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "max_retries": self.max_retries,
            "max_concurrency": self.max_concurrency,
            "price": {"input_per_1k": self.input_per_1k, "output_per_1k": self.output_per_1k},
            "headers": dict(self.headers),
            "max_tokens_field": self.max_tokens_field,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpstreamSpec:
        if data.get("format") != SPEC_FORMAT:
            raise ConfigError(
                f"not an upstream spec of format {SPEC_FORMAT}: {data.get('format')!r}"
            )
        key = data.get("api_key") or {}
        price = data.get("price") or {}
        return cls(
            base_url=str(data["base_url"]),
            model=str(data["model"]),
            api_key_env=key.get("env"),
            api_key_file=key.get("file"),
            timeout_s=float(data["timeout_s"]),
            connect_timeout_s=float(data["connect_timeout_s"]),
            max_retries=int(data["max_retries"]),
            max_concurrency=int(data["max_concurrency"]),
            input_per_1k=price.get("input_per_1k"),
            output_per_1k=price.get("output_per_1k"),
            headers=dict(data.get("headers") or {}),
            max_tokens_field=str(data.get("max_tokens_field", "max_tokens")),  # older specs
        )

    @classmethod
    def read(cls, directory: Path) -> UpstreamSpec:
        try:
            return cls.from_json(json.loads((directory / SPEC_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"{directory / SPEC_FILE} is not a readable upstream spec: {exc}"
            ) from None


def upstream_base_name(spec: UpstreamSpec) -> str:
    """The default base model name of an upstream: ``<model>@<host>``."""
    return f"{spec.model}@{spec.host}"


_SECRET_PARAMS = frozenset(
    {"key", "api_key", "api-key", "apikey", "token", "access_token", "secret", "password",
     "sig", "signature", "code"}
)  # fmt: skip
"""Query parameters that carry a credential (``api-version`` and the like are fine)."""


def _refuse_credentials(spec: UpstreamSpec) -> None:
    """A key in the URL would be stored for good (the spec artifact, the lineage and the
    audit chain are immutable) and printed: refused before anything is written."""
    parts = urlsplit(spec.base_url)
    secret = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)
              if k.lower() in _SECRET_PARAMS]  # fmt: skip
    if parts.username is None and parts.password is None and not secret:
        return
    where = f"the query parameter {secret[0]!r}" if secret else "user:password@"
    raise ConfigError(
        f"the upstream --base-url holds a credential ({where}); it would be stored in the "
        "registry and the audit log for good",
        hint="Take it out of the URL and name where `serve` reads the key: --api-key-env VAR "
        "or --api-key-file PATH.",
        field="--base-url",
    )


def register_upstream(
    store: Store,
    artifacts: ArtifactStore,
    spec: UpstreamSpec,
    *,
    name: str,
    base: str | None = None,
    tenant: str | None = None,
    description: str = "",
) -> ModelVersion:
    """Register ``spec`` as a new version of ``name`` (created when missing), on the base
    ``base`` (default ``upstream_base_name``), with the spec's prices as that base's."""
    _refuse_credentials(spec)
    check_model_owner(store, name, tenant, description=description)
    base_name = base or upstream_base_name(spec)
    base_model = store.register_base_model(base_name, spec.url, {})
    if spec.input_per_1k is not None or spec.output_per_1k is not None:
        store.set_token_price(base_name, input_per_1k=spec.input_per_1k or 0.0,
                              output_per_1k=spec.output_per_1k or 0.0)  # fmt: skip
    with artifacts.staging("upstream") as tmp:
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")  # fmt: skip
        blob = artifacts.put_dir(tmp, kind="upstream")
    created = False
    try:
        created = ensure_model(store, name, tenant=tenant, description=description)
        lineage = lineage_record(base_model, UPSTREAM_TEMPLATE)
        lineage["upstream"] = spec.to_json()
        return store.create_model_version(
            name, kind="upstream", artifact_digest=blob.digest, base_model=base_name,
            run_id=None, lineage=lineage, metrics={},
        )  # fmt: skip
    except BaseException:
        discard_unreferenced(store, artifacts, blob.digest)
        if created:
            drop_if_empty(store, name, reason="the upstream was not registered")
        raise


__all__ = [
    "SPEC_FILE",
    "SPEC_FORMAT",
    "UPSTREAM_TEMPLATE",
    "UpstreamSpec",
    "register_upstream",
    "upstream_base_name",
]
