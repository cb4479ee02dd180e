"""Entities (frozen dataclasses) as JSON-ready values for the admin API's answers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from modelyard.store import ModelVersion


def jsonable(value: Any) -> Any:
    """Dataclasses, mappings, sequences and datetimes as JSON; a non-finite float is null
    (JSON has none)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def version_json(version: ModelVersion) -> dict[str, Any]:
    """A version with its gate status (passed, failed or not evaluated, and overrides)."""
    out: dict[str, Any] = jsonable(version)
    out["ref"] = version.ref
    out["gates"] = jsonable(version.gates)
    return out


__all__ = ["jsonable", "version_json"]
