"""Version tags: the only mutable part of a version (every change is audited by the store)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from modelyard.errors import ConfigError
from modelyard.store import ModelVersion, Store

MAX_TAG_VALUE = 5000
"""The longest tag value, in characters (a label, not a document)."""


def parse_tags(items: Sequence[str], remove: Sequence[str] = ()) -> dict[str, str]:
    """``KEY=VALUE`` texts as a mapping; at least one pair or one key to ``remove``.

    A value is one line of at most ``MAX_TAG_VALUE`` characters: a newline or another
    control character would break every table and export that shows it.
    """
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"tag {item!r} is not KEY=VALUE", hint="e.g. team=claims")
        pairs[key] = value
    return check_tags(pairs, remove)


def check_tags(pairs: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, str]:
    """``pairs`` as tags to set (the rules of ``parse_tags``), or a ConfigError naming the
    tag and why."""
    for key, value in pairs.items():
        if not key or "=" in key:
            raise ConfigError(
                f"tag key {key!r} is empty or holds '='",
                hint="A tag key is a name such as team or ticket.",
                field=key,
            )
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ConfigError(
                f"the value of tag {key!r} holds a newline or another control character",
                hint="A tag value is one line of text.",
                field=key,
            )
        if len(value) > MAX_TAG_VALUE:
            raise ConfigError(
                f"the value of tag {key!r} is {len(value):,} characters long, over the limit "
                f"of {MAX_TAG_VALUE:,}",
                hint="A tag is a label; keep documents in the model's description or lineage.",
                field=key,
            )
    if not pairs and not remove:
        raise ConfigError("no tags given", hint="Pass KEY=VALUE pairs and/or --remove KEY.")
    return dict(pairs)


def tag_version(
    store: Store, ref: str, items: Sequence[str], remove: Sequence[str] = ()
) -> ModelVersion:
    """Set the ``KEY=VALUE`` tags ``items`` and delete the keys ``remove`` on ``ref``.

    A key to remove that the version does not have is a ConfigError naming the tags it
    has (a typo must not pass for a removal).
    """
    return set_tags(store, ref, parse_tags(items, remove), remove)


def set_tags(
    store: Store, ref: str, pairs: Mapping[str, str], remove: Sequence[str] = ()
) -> ModelVersion:
    """``tag_version`` for tags already split into a mapping (the admin API's body)."""
    tags = check_tags(pairs, remove)
    if remove:
        _check_removable(store.resolve_model_ref(ref), remove, tags)
    return store.set_version_tags(ref, tags, remove=list(remove))


def _check_removable(version: ModelVersion, remove: Sequence[str], pairs: dict[str, str]) -> None:
    missing = [key for key in remove if key not in version.tags and key not in pairs]
    if not missing:
        return
    close = difflib.get_close_matches(missing[0], list(version.tags), n=1)
    maybe = f"Did you mean {close[0]!r}? " if close else ""
    has = ", ".join(sorted(version.tags)) or "none"
    raise ConfigError(
        f"{version.ref} has no tag {missing[0]!r} to remove",
        hint=f"{maybe}Its tags: {has}.",
        field="--remove",
    )
