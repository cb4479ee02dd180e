"""Which base a config's ``base_model`` names: a local directory, a registered base, or a hub id.

A name registered with ``modelyard base create-tiny --name`` (or by an earlier run)
resolves to the directory it was registered from; a local path wins over a name,
and a name over a hub id. A run records its base under the name those weights are
registered with already, so the same weights are never registered twice.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from modelyard.base import is_local
from modelyard.errors import BaseModelNotFound, NotFound
from modelyard.finetune._config import FinetuneConfig
from modelyard.store import Store


def resolve_base(config: FinetuneConfig, store: Store) -> FinetuneConfig:
    """The config with a registered base name replaced by that base's source."""
    ref = config.base_model
    if is_local(ref):
        return config
    try:
        known = store.get_base_model(ref)
    except NotFound:
        _refuse_a_near_name(ref, store)
        return config
    return config.model_copy(update={"base_model": known.source})


def _refuse_a_near_name(ref: str, store: Store) -> None:
    """``BaseModelNotFound`` for a name one typo from a registered base (``tinyy`` for
    ``tiny``) that is no hub id in the local cache: the hub would say only that it has no
    such model, and no command lists the registered names. A hub id with an owner
    (``org/name``) or one already downloaded goes on to the hub as before."""
    if "/" in ref:
        return
    names = sorted(b.name for b in store.list_base_models())
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.8)
    if not close:
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return
    raise BaseModelNotFound(
        f"base_model {ref!r} is not a registered base",
        hint=f"Did you mean {close[0]!r}? Registered bases: {', '.join(names)}; or give a "
        "local model directory or a hub model id.",
        field="base_model",
        ref=ref,
    )


def registered_name(store: Store, ref: str, base_dir: Path) -> str | None:
    """The name these weights are registered under (by source), if any."""
    sources = {ref, str(base_dir.resolve())}
    return next((b.name for b in store.list_base_models() if b.source in sources), None)
