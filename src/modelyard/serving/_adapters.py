"""Base models loaded once and shared; adapters loaded on first use into an LRU of slots.

Each base stays a plain model with a ``MultiLora`` (``_multilora``): the loaded
adapters' matrices sit in ``max_adapters`` stacked slots, and one batch mixes
them by giving each row its slot. An adapter's files come only through
``ArtifactStore.open_verified`` (every byte checked against the manifest); a
tampered artifact is refused, and audited when the cache has a store. The
verified and checked tensors are then kept in host memory by artifact digest
(up to ``host_cache_bytes``, least recently used out), so loading an adapter
again after its eviction is a copy into a slot, without reading or hashing the
files again. A version that fails to load (tampered, unreadable, made for
another base, or using LoRA features this engine does not serve) fails only its
own requests, and is not retried for ``failure_ttl_s`` seconds so that a stream
of bad requests cannot stall the others. A failed load never touches the base:
an adapter is read and checked whole before it is copied into a slot; a copy
that fails (out of memory) leaves its slot empty, fails only the requests of
that adapter, and is tried again by the next request (memory may be free by then).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.errors import ArtifactError, ArtifactIntegrityError, ModelyardError
from modelyard.registry import verified_files
from modelyard.serving._device import Placement
from modelyard.serving._multilora import LoraFormatError, LoraWeights, MultiLora, read_lora
from modelyard.serving._types import AdapterEvent, EngineError
from modelyard.store import ModelVersion, Store

log = logging.getLogger(__name__)

Notify = Callable[[AdapterEvent, str], None]


@dataclass
class LoadedBase:
    """A plain base model, its adapter slots, and what generation needs."""

    source: str
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    pad_token_id: int
    context_length: int | None
    lora: MultiLora | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Loaded:
    source: str
    ref: str
    slot: int


def adapter_name(version: ModelVersion) -> str:
    return f"v{version.id}"


class AdapterCache:
    """Bases (never evicted) and at most ``max_adapters`` adapters, least recently used out.

    ``base`` and ``loaded`` are thread-safe (request threads need tokenizers);
    ``ensure``, ``slots`` and everything that touches the models run on the
    engine's scheduler thread.
    """

    def __init__(
        self,
        artifacts: ArtifactStore,
        *,
        max_adapters: int,
        store: Store | None = None,
        failure_ttl_s: float = 10.0,
        host_cache_bytes: int = 1 << 30,
        notify: Notify | None = None,
        placement: Placement | None = None,
    ) -> None:
        self._artifacts = artifacts
        self._placement = placement
        self._store = store
        self.max_adapters = max_adapters
        self._failure_ttl_s = failure_ttl_s
        self._host_limit = host_cache_bytes
        self._notify = notify or (lambda _event, _ref: None)
        self._lock = threading.RLock()
        self._bases: dict[str, LoadedBase] = {}
        self._adapters: OrderedDict[str, _Loaded] = OrderedDict()  # name -> where it is
        self._failures: dict[int, tuple[float, ModelyardError]] = {}  # version id -> (until, error)
        self._sources = ModelSources(store, artifacts)
        # (digest, base source) -> verified, checked tensors; least recently used first
        self._host: OrderedDict[tuple[str, str], LoraWeights] = OrderedDict()
        self._host_bytes = 0
        self.verified_reads = 0  # adapters read from the artifact store (not host memory)

    # -- bases ----------------------------------------------------------------------------

    def source(self, version: ModelVersion) -> str:
        """Where ``version``'s model loads from (``ModelSources``)."""
        return self._sources(version)

    def base(self, source: str) -> LoadedBase:
        """The loaded base ``source`` (loading it on first use)."""
        with self._lock:
            loaded = self._bases.get(source)
            if loaded is None:
                loaded = self._bases[source] = self._load_base(source, self._placement)
                loaded.lora = MultiLora(loaded.model, self.max_adapters)
            return loaded

    @staticmethod
    def _load_base(source: str, placement: Placement | None) -> LoadedBase:
        # heavy import, only when serving real models
        from modelyard.base import eos_token_ids, load_base

        try:
            model, tokenizer = load_base(source)
        except ModelyardError as exc:  # its place on this server is for the log, not the answer
            log.error("cannot load the base model %s: %s", source, exc.one_line())
            raise EngineError(
                "cannot load the base model on this server",
                hint="The operator finds the details in the server's log.",
            ) from exc
        if placement is not None:
            model = model.to(device=placement.device, dtype=placement.dtype)
        model.eval()
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        context = getattr(model.config, "max_position_embeddings", None)
        return LoadedBase(
            source=source,
            model=model,
            tokenizer=tokenizer,
            eos_ids=eos_token_ids(model, tokenizer),
            pad_token_id=int(pad),
            context_length=int(context) if isinstance(context, int) else None,
        )

    def close(self) -> None:
        """Give the bases' layers their own forward back and drop the host copies."""
        with self._lock:
            for base in self._bases.values():
                if base.lora is not None:
                    base.lora.close()
            self._host.clear()
            self._host_bytes = 0

    # -- adapters -------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Refs of the versions whose adapters are loaded, least recently used first."""
        with self._lock:
            return [entry.ref for entry in self._adapters.values()]

    def is_loaded(self, version: ModelVersion) -> bool:
        if version.kind == "full":
            return True  # no adapter: its weights are the base
        with self._lock:
            return adapter_name(version) in self._adapters

    def host_cached(self) -> int:
        """How many adapters' verified tensors are held in host memory."""
        with self._lock:
            return len(self._host)

    def slots(self, versions: Collection[ModelVersion]) -> list[int]:
        """The slot of each version's loaded adapter (after ``ensure``); full weights take the
        base's empty slot."""
        with self._lock:
            return [
                self.max_adapters if v.kind == "full" else self._adapters[adapter_name(v)].slot
                for v in versions
            ]

    def ensure(
        self, versions: Collection[ModelVersion], *, keep: Collection[str] = ()
    ) -> dict[int, ModelyardError]:
        """Load the adapters of ``versions`` (one per request, all on one base).

        Returns the failures by version id. Each request counts as a cache hit or
        miss (a second request for the same version in a batch is a hit). Neither
        the adapters of ``versions`` nor those named in ``keep`` are evicted by this
        call, so after it the base holds every one that did not fail (as long as
        they number at most ``max_adapters``).
        """
        failures: dict[int, ModelyardError] = {}
        protected = {adapter_name(v) for v in versions} | set(keep)
        for version in versions:
            if version.id not in failures:
                try:
                    self._ensure_one(version, protected)
                except ModelyardError as exc:
                    failures[version.id] = exc
                except Exception as exc:  # one adapter's failure is never its batch's
                    log.exception("loading the adapter of %s failed", version.ref)
                    failures[version.id] = EngineError(
                        f"cannot load the adapter of {version.ref}: {type(exc).__name__}: "
                        f"{_reason(exc)}",
                        hint="Retry later; if it persists, check the server's memory.",
                    )
        return failures

    def _ensure_one(self, version: ModelVersion, protected: Collection[str]) -> None:
        if version.kind == "full":
            self.base(self.source(version))  # its weights are the base: nothing to slot
            return
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
            base = self.base(version.base_model_source)
            weights = self._weights(version, base)
        except ModelyardError as exc:
            with self._lock:
                self._failures[version.id] = (time.monotonic() + self._failure_ttl_s, exc)
            self._notify("load_failure", version.ref)
            log.warning("adapter load failed: %s", exc.one_line())
            raise
        slot = self._free_slot(base, protected)  # full of needed adapters: not a load failure
        assert base.lora is not None
        try:
            base.lora.put(slot, weights)
        except Exception as exc:  # out of memory while copying: this adapter only, not cached
            base.lora.clear(slot)
            self._notify("load_failure", version.ref)
            log.warning("copying the adapter of %s into its slot failed: %s", version.ref, exc)
            raise EngineError(
                f"cannot load the adapter of {version.ref} into its slot: "
                f"{type(exc).__name__}: {_reason(exc)}",
                hint="Retry later; if it persists, lower --max-adapters or free memory.",
            ) from exc
        with self._lock:
            self._failures.pop(version.id, None)
            self._adapters[name] = _Loaded(version.base_model_source, version.ref, slot)
        self._notify("load", version.ref)

    def _weights(self, version: ModelVersion, base: LoadedBase) -> LoraWeights:
        """The adapter's checked tensors: from host memory, or verified from the store."""
        if version.kind != "adapter":
            raise EngineError(
                f"{version.ref} has full weights; this engine serves LoRA adapters on shared bases",
                hint="Serve adapter versions, or register the model as an adapter.",
            )
        key = (version.artifact_digest, base.source)
        with self._lock:
            cached = self._host.get(key)
            if cached is not None:
                self._host.move_to_end(key)
                return cached
        path = self._verified(version)
        try:
            weights = read_lora(path, base.model)
        except Exception as exc:  # safetensors and torch raise many kinds
            raise EngineError(
                f"cannot load the adapter of {version.ref}: {_reason(exc)}",
                hint=(
                    f"Check that {version.ref} was trained on base "
                    f"{version.base_model!r} and that its files are a plain LoRA adapter."
                    if not isinstance(exc, LoraFormatError) or "size mismatch" in str(exc)
                    else "Serve it with an engine that supports this kind of adapter, or "
                    "retrain it as plain LoRA on linear layers."
                ),
                version=version.ref,
            ) from exc
        self.verified_reads += 1
        self._keep_on_host(key, weights)
        return weights

    def _keep_on_host(self, key: tuple[str, str], weights: LoraWeights) -> None:
        size = weights.nbytes
        if size > self._host_limit:
            return
        with self._lock:
            self._host[key] = weights
            self._host_bytes += size
            while self._host_bytes > self._host_limit:
                _, dropped = self._host.popitem(last=False)
                self._host_bytes -= dropped.nbytes

    def _free_slot(self, base: LoadedBase, protected: Collection[str]) -> int:
        """A slot of ``base`` to load into, evicting the least recently used adapters."""
        assert base.lora is not None
        while True:
            with self._lock:
                slot = base.lora.free_slot()
                if slot is not None and len(self._adapters) < self.max_adapters:
                    return slot
                victim = next((n for n in self._adapters if n not in protected), None)
                if victim is None:
                    raise EngineError(
                        f"all {self.max_adapters} adapter slots hold adapters this batch needs",
                        hint="Raise --max-adapters.",
                    )
                entry = self._adapters.pop(victim)
                owner = self._bases.get(entry.source)
                if owner is not None and owner.lora is not None:
                    owner.lora.release(entry.slot)
            self._notify("eviction", entry.ref)

    def _verified(self, version: ModelVersion) -> Any:
        return served_files(self._store, self._artifacts, version)


class ModelSources:
    """Where each version's model loads from: its base's source for an adapter; for full
    weights (a full fine-tune, or a base registered as a version) its own files, verified
    against the manifest on first use like an adapter's (then remembered)."""

    def __init__(self, store: Store | None, artifacts: ArtifactStore) -> None:
        self._store, self._artifacts = store, artifacts
        self._lock = threading.Lock()
        self._full: dict[int, str] = {}  # version id -> its verified full weights' directory

    def __call__(self, version: ModelVersion) -> str:
        if version.kind != "full":
            return version.base_model_source
        with self._lock:
            known = self._full.get(version.id)
        if known is None:
            known = str(served_files(self._store, self._artifacts, version))
            with self._lock:
                self._full[version.id] = known
        return known


def served_files(store: Store | None, artifacts: ArtifactStore, version: ModelVersion) -> Any:
    """The version's verified files for an engine to load, or an ``EngineError`` naming the
    version (a load failure: the plan falls back, a rollout rolls back). Its message is the
    answer of the tenant's request: an artifact store's error (the server's paths, the
    store's location) goes to the server's log, not into it."""
    try:
        return verified_files(store, artifacts, version, by="serve")
    except ArtifactIntegrityError as exc:
        raise EngineError(
            f"refusing to serve {version.ref}: its stored files do not match their manifest "
            f"({exc.message})",
            hint=exc.hint,
            version=version.ref,
        ) from exc
    except ArtifactError as exc:
        log.error("cannot read the files of %s: %s", version.ref, exc.one_line())
        raise EngineError(
            f"cannot read the files of {version.ref} from this server's artifact store",
            hint="The operator finds the details in the server's log.",
            version=version.ref,
        ) from exc


def _reason(exc: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, shortened (torch's load errors span many lines)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
