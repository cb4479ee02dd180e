"""Canonical JSON and times: the exact bytes an audit hash covers.

Canonical JSON is ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8; NaN and infinities are refused, and so is a
payload key that is not a string (JSON would make ``1`` and ``"1"`` the same key). Times are
ISO-8601 in UTC with microseconds, e.g. ``2026-01-31T12:00:00.000000+00:00``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import PurePath
from typing import Any

from modelyard.errors import ConfigError


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (sorted keys, no spaces, real Unicode)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_time(value: datetime) -> str:
    """An aware datetime as ISO-8601 UTC with microseconds."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in an audit event; use an aware UTC datetime")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"audit payload field {where} is not a finite number: {value!r}")
        return value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):  # str(k) made 1 and "1" one key: two payloads, one hash
                raise ConfigError(
                    f"audit payload field {where} has a key of type {type(k).__name__} "
                    f"({k!r}): keys must be strings",
                    hint="Convert the key to a string before auditing, e.g. str(version).",
                )
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise ConfigError(
        f"audit payload field {where} holds a {type(value).__name__}, which is not JSON",
        hint="Pass strings, numbers, booleans, lists and mappings in audit payloads.",
    )


def normalize_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload exactly as it will read back from the store's JSON column."""
    plain = _plain(dict(payload or {}), "payload")
    result: dict[str, Any] = json.loads(canonical_json(plain))
    return result
