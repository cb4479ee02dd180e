"""Base models loaded once and shared; adapters loaded on first use into an LRU cache.

One ``PeftModel`` per base holds the loaded adapters by name (``v<version id>``),
so one batch can mix them (peft's ``adapter_names``). An adapter's files come
only through ``ArtifactStore.open_verified`` (every byte checked against the
manifest); a tampered artifact is refused, and audited when the cache has a
store. A version that fails to load (tampered, unreadable, or made for another
base) fails only its own requests, and is not retried for ``failure_ttl_s``
seconds so that a stream of bad requests cannot stall the others. The base is
left as it was: a half-loaded adapter is deleted, or the base is reloaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ModelyardError
from modelyard.serving._types import AdapterEvent, EngineError
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)

Notify = Callable[[AdapterEvent, str], None]


@dataclass
class LoadedBase:
    """A base model (a ``PeftModel`` once it holds an adapter) and what generation needs."""

    source: str
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    pad_token_id: int
    context_length: int | None


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's eos and the model's (may be a list)."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def adapter_name(version: ModelVersion) -> str:
    return f"v{version.id}"


class AdapterCache:
    """Bases (never evicted) and at most ``max_adapters`` adapters, least recently used out.

    ``base`` is thread-safe (request threads need tokenizers); ``ensure`` and
    everything that touches the models run on the engine's scheduler thread.
    """

    def __init__(
        self,
        artifacts: ArtifactStore,
        *,
        max_adapters: int,
        store: Store | None = None,
        failure_ttl_s: float = 10.0,
        notify: Notify | None = None,
    ) -> None:
        self._artifacts = artifacts
        self._store = store
        self.max_adapters = max_adapters
        self._failure_ttl_s = failure_ttl_s
        self._notify = notify or (lambda _event, _ref: None)
        self._lock = threading.RLock()
        self._bases: dict[str, LoadedBase] = {}
        self._adapters: OrderedDict[str, tuple[str, str]] = OrderedDict()  # name -> (base, ref)
        self._failures: dict[int, tuple[float, ModelyardError]] = {}  # version id -> (until, error)
        self._base_drops = 0

    # -- bases ----------------------------------------------------------------------------

    def base(self, source: str) -> LoadedBase:
        """The loaded base ``source`` (loading it on first use)."""
        with self._lock:
            loaded = self._bases.get(source)
            if loaded is None:
                loaded = self._bases[source] = self._load_base(source)
            return loaded

    @staticmethod
    def _load_base(source: str) -> LoadedBase:
        from modelyard.base import load_base  # heavy import, only when serving real models

        try:
            model, tokenizer = load_base(source)
        except ModelyardError as exc:
            raise EngineError(
                f"cannot load the base model {source}: {exc.message}",
                hint="Check that the base model's files are on this server.",
            ) from exc
        model.eval()
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        context = getattr(model.config, "max_position_embeddings", None)
        return LoadedBase(
            source=source,
            model=model,
            tokenizer=tokenizer,
            eos_ids=_eos_ids(model, tokenizer),
            pad_token_id=int(pad),
            context_length=int(context) if isinstance(context, int) else None,
        )

    def _drop_base(self, source: str) -> None:
        """Forget a base whose state is in doubt; it reloads from disk on next use."""
        with self._lock:
            self._base_drops += 1
            self._bases.pop(source, None)
            for name in [n for n, (src, _) in self._adapters.items() if src == source]:
                del self._adapters[name]

    # -- adapters -------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Refs of the versions whose adapters are loaded, least recently used first."""
        with self._lock:
            return [ref for _, ref in self._adapters.values()]

    def ensure(self, versions: Collection[ModelVersion]) -> dict[int, ModelyardError]:
        """Load the adapters of ``versions`` (one per request, all on one base).

        Returns the failures by version id. Each request counts as a cache hit or
        miss (a second request for the same version in a batch is a hit).

        The adapters of ``versions`` are never evicted by this call, so after it the
        base holds every one that did not fail (``len(versions) <= max_adapters``).
        """
        failures: dict[int, ModelyardError] = {}
        pending = list(versions)
        for _ in range(len(pending) + 1):  # a reloaded base drops what it held: go again
            drops = self._base_drops
            for version in pending:
                if version.id not in failures:
                    try:
                        self._ensure_one(version)
                    except ModelyardError as exc:
                        failures[version.id] = exc
            if drops == self._base_drops:
                break
            pending = list({v.id: v for v in pending}.values())
        names = {adapter_name(v) for v in pending if v.id not in failures}
        self._evict(keep=names)
        return failures

    def _ensure_one(self, version: ModelVersion) -> None:
        name = adapter_name(version)
        with self._lock:
            if name in self._adapters:
                self._adapters.move_to_end(name)
                self._notify("hit", version.ref)
                return
            failed = self._failures.get(version.id)
        self._notify("miss", version.ref)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1]
        try:
            self._load(version, name)
        except ModelyardError as exc:
            with self._lock:
                self._failures[version.id] = (time.monotonic() + self._failure_ttl_s, exc)
            self._notify("load_failure", version.ref)
            log.warning("adapter load failed: %s", exc.one_line())
            raise
        with self._lock:
            self._failures.pop(version.id, None)
            self._adapters[name] = (version.base_model_source, version.ref)
        self._notify("load", version.ref)

    def _load(self, version: ModelVersion, name: str) -> None:
        if version.kind != "adapter":
            raise EngineError(
                f"{version.ref} has full weights; this engine serves LoRA adapters on shared bases",
                hint="Serve adapter versions, or register the model as an adapter.",
            )
        path = self._verified(version)
        base = self.base(version.base_model_source)
        from peft import PeftModel

        from modelyard.base._hf import quiet_progress

        bare = not isinstance(base.model, PeftModel)
        try:
            with quiet_progress():
                if bare:
                    model = PeftModel.from_pretrained(
                        base.model, str(path), adapter_name=name, is_trainable=False
                    )
                else:
                    model = base.model
                    model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:  # peft, torch and safetensors raise many kinds
            self._undo_failed_load(base, name, bare)
            raise EngineError(
                f"cannot load the adapter of {version.ref}: {_reason(exc)}",
                hint=(
                    f"Check that {version.ref} was trained on base "
                    f"{version.base_model!r} and that its files are a LoRA adapter."
                ),
                version=version.ref,
            ) from exc
        model.eval()
        base.model = model

    def _verified(self, version: ModelVersion) -> Any:
        try:
            return self._artifacts.open_verified(version.artifact_digest)
        except ArtifactIntegrityError as exc:
            self._audit_refusal(version, exc)
            raise EngineError(
                f"refusing to serve {version.ref}: its stored files do not match their manifest "
                f"({exc.message})",
                hint=exc.hint,
                version=version.ref,
            ) from exc
        except ArtifactError as exc:
            raise EngineError(
                f"cannot read the adapter of {version.ref}: {exc.message}",
                hint=exc.hint or "Check the artifact store this server uses.",
                version=version.ref,
            ) from exc

    def _audit_refusal(self, version: ModelVersion, exc: ArtifactIntegrityError) -> None:
        if self._store is None:
            return
        try:
            self._store.record_audit_event(
                "artifact.verification_failed",
                version.ref,
                {"digest": version.artifact_digest, "reason": exc.message, "by": "serve"},
            )
        except ModelyardError as audit_error:  # the refusal stands even if the audit is down
            log.error("could not audit the refused artifact: %s", audit_error.one_line())

    def _undo_failed_load(self, base: LoadedBase, name: str, bare: bool) -> None:
        """Leave the base as it was before a failed load."""
        if not bare:
            try:
                if name in base.model.peft_config:
                    base.model.delete_adapter(name)
                return
            except Exception:  # a base in doubt is reloaded rather than trusted
                log.exception("cannot remove the half-loaded adapter %s", name)
        # A bare base got LoRA layers injected before the failure: reload it.
        self._drop_base(base.source)

    def _evict(self, keep: Collection[str]) -> None:
        while True:
            with self._lock:
                if len(self._adapters) <= self.max_adapters:
                    return
                victim = next((n for n in self._adapters if n not in keep), None)
                if victim is None:
                    return
                source, ref = self._adapters.pop(victim)
                base = self._bases.get(source)
                newest = next(
                    (n for n, (src, _) in reversed(self._adapters.items()) if src == source), None
                )
            if base is not None:
                if base.model.active_adapter == victim and newest is not None:
                    # peft warns when the active adapter is deleted
                    base.model.set_adapter(newest, inference_mode=True)
                base.model.delete_adapter(victim)
            self._notify("eviction", ref)


def _reason(exc: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, shortened (torch's load errors span many lines)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
