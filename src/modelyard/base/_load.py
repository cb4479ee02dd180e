"""Load a base model (local directory or hub id) the ordinary Hugging Face way.

Anything ``AutoModelForCausalLM.from_pretrained`` understands is a valid base;
modelyard adds only clear errors (one line, no traceback) and a pad token for
tokenizers that lack one, since batched training and generation need it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.base._hf import quiet_progress
from modelyard.errors import BaseModelNotFound, ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_local(ref: str | Path) -> bool:
    """A Path, an existing path, anything that cannot be a hub id (``./x``, ``/x``, ``~/x``),
    or ``dir/name`` whose ``dir`` is a local directory."""
    if isinstance(ref, Path):
        return True
    path = Path(ref).expanduser()
    if path.exists() or not _HUB_ID.match(ref):
        return True
    # `models/tiny` where ./models exists is a missing local directory, not a hub id:
    # it fails at once instead of after a round trip to the hub.
    return "/" in ref and path.parent.is_dir()


def _local_dir(ref: str | Path) -> Path:
    """Resolve a local ref and check it is a model directory, naming the path if not."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise BaseModelNotFound(f"base model directory {path} does not exist", path=str(path))
    if not (path / "config.json").is_file():
        raise BaseModelNotFound(
            f"{path} is not a Hugging Face model directory (it has no config.json)",
            path=str(path),
        )
    return path


def model_dir(ref: str | Path) -> Path:
    """The local directory of a base: the path itself, or the hub cache snapshot of an id."""
    if is_local(ref):
        return _local_dir(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(ref)))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise BaseModelNotFound(
            f"cannot find base model {ref!r} locally or on the hub",
            hint="Give a local model directory, or download it first (HF_HUB_OFFLINE=1 "
            "uses only the local cache).",
            ref=str(ref),
        ) from exc


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tokenizer(ref: str | Path) -> Any:
    """Load only the tokenizer of a base (cheap; used to tokenize data and by servers)."""
    source, local = _source(ref)
    from transformers import AutoTokenizer  # at use: importing transformers takes seconds

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseModelNotFound(
            f"cannot load the tokenizer of base model {ref}: {_first_line(exc)}", ref=str(ref)
        ) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"the tokenizer of {ref} has neither a pad nor an eos token",
                hint="Use a causal LM base whose tokenizer defines an eos token.",
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _source(ref: str | Path) -> tuple[str, bool]:
    """The string to hand to ``from_pretrained`` and whether it is local (no hub access)."""
    if is_local(ref):
        return str(_local_dir(ref)), True
    return str(ref), False


def load_base(ref: str | Path, options: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a causal LM from a local directory or a hub id.

    Local paths are loaded with ``local_files_only=True`` (never a network call);
    hub ids follow the usual cache/``HF_HUB_OFFLINE`` rules. ``options`` go to
    ``from_pretrained`` (``dtype``, ``attn_implementation``, ``quantization_config``,
    ``device_map``). The model is returned in eval mode. Failures raise
    ``BaseModelNotFound`` with a one-line reason.
    """
    source, local = _source(ref)
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(ref)
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(
                source, local_files_only=local, **dict(options or {})
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BaseModelNotFound(
            f"cannot load base model {ref}: {_first_line(exc)}", ref=str(ref)
        ) from exc
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
