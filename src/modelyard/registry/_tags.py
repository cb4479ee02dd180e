"""Version tags: the only mutable part of a version (every change is audited by the store)."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.errors import ConfigError
from modelyard.store import ModelVersion, Store


def parse_tags(items: Sequence[str], remove: Sequence[str] = ()) -> dict[str, str]:
    """``KEY=VALUE`` texts as a mapping; at least one pair or one key to ``remove``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"tag {item!r} is not KEY=VALUE", hint="e.g. team=claims")
        pairs[key] = value
    if not pairs and not remove:
        raise ConfigError("no tags given", hint="Pass KEY=VALUE pairs and/or --remove KEY.")
    return pairs


def tag_version(
    store: Store, ref: str, items: Sequence[str], remove: Sequence[str] = ()
) -> ModelVersion:
    """Set the ``KEY=VALUE`` tags ``items`` and delete the keys ``remove`` on ``ref``."""
    pairs = parse_tags(items, remove)
    return store.set_version_tags(ref, pairs, remove=list(remove))
