"""What a process that answers a job's rows builds for itself, from plain values.

``modelyard batch run`` builds its engine in its own process; on a cluster
(``_ray``) each worker builds its own, on its own machine, from values the
driver sends, never the driver's objects:

- ``EngineSpec``: which engine (transformers, vllm, or the echo fake), its
  device, dtype and sizes (vllm: the options of the vLLM server it starts); the
  CLI builds its own engine from the same spec, so both paths load a model the
  same way;
- ``WorkerSpec``: the settings the driver resolved (the store's URL, where
  artifacts live, the home, the actor, the access policy) and the server
  limits, so a worker opens the same store and artifacts wherever it runs. The
  audit key is not sent: a worker reads it where the driver does
  (``MODELYARD_AUDIT_KEY`` in its environment, or the key file at the same
  path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore, artifacts_from_settings
from modelyard.audit import AccessPolicy, AuditKeySource
from modelyard.errors import ConfigError
from modelyard.serving import Engine, ServerLimits, VLLMOptions
from modelyard.settings import Settings
from modelyard.store import Store

ENGINES: tuple[str, ...] = ("transformers", "vllm", "echo")


@dataclass(frozen=True)
class EngineSpec:
    """How to build a job's engine: ``kind`` transformers (embedded), vllm (a vLLM server
    it starts with ``vllm``'s options, logging to ``log_dir``, stopped with the engine) or
    echo (a fake that answers with the prompt's last line, ``echo_delay_ms`` before each
    word)."""

    kind: str = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 16
    max_adapters: int = 8
    max_queue: int = 256
    echo_delay_ms: float = 0.0
    vllm: VLLMOptions | None = None
    log_dir: str = ""
    request_timeout_s: float = 600.0  # vllm: how long one request to vLLM may take

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ConfigError(f"unknown --engine {self.kind!r}: use transformers, vllm or echo")
        if self.echo_delay_ms and self.kind != "echo":
            raise ConfigError("--echo-delay-ms works only with --engine echo")
        if (self.kind == "vllm") != (self.vllm is not None):
            raise ConfigError("the vLLM options go with --engine vllm, and only with it")

    def build(self, store: Store, open_artifacts: Callable[[], ArtifactStore]) -> Engine:
        """The engine, as ``serve`` builds it: versions of kind ``upstream`` answer from
        their server, every other one from this engine."""
        from modelyard.serving import (
            EchoEngine,
            EngineSet,
            PacedEchoEngine,
            TransformersEngine,
            UpstreamEngine,
            placement,
        )

        local: Engine
        if self.vllm is not None:
            from modelyard.serving import VLLMEngine

            local = VLLMEngine(
                open_artifacts(), self.vllm, store=store, max_adapters=self.max_adapters,
                max_queue=self.max_queue, log_dir=Path(self.log_dir),
                request_timeout_s=self.request_timeout_s,
            )  # fmt: skip
        elif self.kind == "transformers":
            local = TransformersEngine(
                open_artifacts(), max_adapters=self.max_adapters,
                max_batch_size=self.max_batch_size, max_queue=self.max_queue, store=store,
                placement=placement(self.device, self.dtype),
            )  # fmt: skip
        elif self.echo_delay_ms:
            local = PacedEchoEngine(self.echo_delay_ms / 1000)
        else:
            local = EchoEngine()
        return EngineSet(local, UpstreamEngine(open_artifacts(), store=store))


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to answer rows as the driver would: the driver's resolved
    ``settings`` (no secret among them), its ``engine`` and its server ``limits``."""

    settings: Mapping[str, Any]
    engine: EngineSpec = field(default_factory=EngineSpec)
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        actor: str,
        engine: EngineSpec,
        limits: ServerLimits,
    ) -> WorkerSpec:
        """The spec of a driver with ``settings``, acting as ``actor``: every location made
        absolute, so a worker started in another directory opens the same store."""
        values: dict[str, Any] = {
            "home": str(settings.home.resolve()),
            "store_url": settings.resolved_store_url,
            "artifacts": settings.artifacts_location,
            "audit_key_file": str(settings.audit_key_path),
            "actor": actor,
            "protected_aliases": settings.protected_aliases,
            "segregation_of_duties": settings.segregation_of_duties,
            "default_role": settings.default_role,
        }
        if settings.artifacts_on_s3:
            values["artifacts_cache"] = str(settings.artifacts_cache_dir)
        return cls(values, engine, limits)

    def open(self) -> tuple[Store, Engine]:
        """The store (not migrated: the driver did it) and the engine, opened here."""
        settings = Settings(**self.settings)
        store = Store.open(
            settings.resolved_store_url,
            migrate=False,
            actor=settings.resolved_actor,
            audit_key=AuditKeySource.from_settings(settings),
            policy=AccessPolicy.from_settings(settings),
        )
        try:
            engine = self.engine.build(store, lambda: artifacts_from_settings(settings))
        except BaseException:
            store.close()
            raise
        return store, engine


__all__ = ["ENGINES", "EngineSpec", "WorkerSpec"]
