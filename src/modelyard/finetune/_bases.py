"""Which base a config's ``base_model`` names: a local directory, a registered base, or a hub id.

A name registered with ``modelyard base create-tiny --name`` (or by an earlier run)
resolves to the directory it was registered from; a local path wins over a name,
and a name over a hub id. A run records its base under the name those weights are
registered with already, so the same weights are never registered twice.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.base import is_local
from modelyard.errors import NotFound
from modelyard.finetune._config import FinetuneConfig
from modelyard.registry import refuse_a_near_base_name
from modelyard.store import Store


def resolve_base(config: FinetuneConfig, store: Store) -> FinetuneConfig:
    """The config with a registered base name replaced by that base's source."""
    ref = config.base_model
    if is_local(ref):
        return config
    try:
        known = store.get_base_model(ref)
    except NotFound:
        refuse_a_near_base_name(store, ref, field="base_model")
        return config
    return config.model_copy(update={"base_model": known.source})


def registered_name(store: Store, ref: str, base_dir: Path) -> str | None:
    """The name these weights are registered under (by source), if any."""
    sources = {ref, str(base_dir.resolve())}
    return next((b.name for b in store.list_base_models() if b.source in sources), None)
