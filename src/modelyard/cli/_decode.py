"""The admin API's JSON back into the frozen dataclasses the store returns.

The API encodes an entity field by field (``admin._encode.jsonable``): datetimes as ISO
text, tuples as lists, mapping keys as strings, nested entities as objects. ``decode``
reverses that from the dataclass's type hints, so a command renders a decoded entity
exactly as it renders the store's; keys the API adds beside the fields (``ref``,
``gates``, ``target_ref``) are derived properties here and are dropped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, TypeVar, Union

from modelyard.errors import ModelyardError

T = TypeVar("T")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(cls: type[T], data: Any) -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``."""
    try:
        return _dataclass(cls, data)  # type: ignore[no-any-return]
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelyardError(
            f"the server's answer is not a {cls.__name__} this CLI can read: {exc}",
            hint="The server may run another modelyard version than this CLI.",
        ) from None


def _dataclass(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise KeyError(f"{cls.__name__}.{f.name} is missing")
        values[f.name] = _value(hints[f.name], data[f.name])
    return cls(**values)


def _value(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or origin is typing.Literal:
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        return _value(kinds[0], data) if len(kinds) == 1 else data
    if data is None:
        return None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(hint, data)
    if hint is datetime:
        return datetime.fromisoformat(data)
    if hint is float:
        return float(data)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], x) for x in data)
        return tuple(_value(a, x) for a, x in zip(args, data, strict=True))
    if origin in (list, Sequence):
        return [_value(args[0], x) for x in data] if args else list(data)
    if origin in (dict, Mapping):
        if not args:
            return dict(data)
        key, value = args
        return {_value(key, k) if key is not str else k: _value(value, v) for k, v in data.items()}
    if hint is int and isinstance(data, str):
        return int(data)
    return data


__all__ = ["decode"]
