"""Validate a safetensors header before anything loads the file.

Layout: 8 bytes little-endian header length ``n``, ``n`` bytes of JSON, then the
data section. The JSON maps tensor names to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the data section) plus an
optional ``"__metadata__"`` string map. Only the header is read; tensor bytes
are never touched.

The checks are those the safetensors loader makes, done first so a refusal
names the file and the tensor: a bounded header, strict JSON without duplicate
keys, a known dtype, non-negative integer shapes and offsets, a byte size equal
to the element count times the dtype's width, and tensors that tile the data
section exactly (no overlap, no gap, no trailing bytes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import UnsafeArtifact

#: Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

#: The largest header accepted (the safetensors library's own limit).
MAX_HEADER_BYTES = 100_000_000

_METADATA = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_HINT = (
    "The file is damaged or was not written by a safetensors library; "
    "export it again with safetensors (save_file / save_pretrained)."
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its header describes it (offsets relative to the data section)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors by name and the ``__metadata__`` map."""

    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    data_bytes: int


class _Bad(Exception):
    """A header violation; ``tensor`` names the entry when there is one."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Bad(f"the header names {key!r} twice", key)
        seen[key] = value
    return seen


def _no_constants(token: str) -> Any:
    raise _Bad(f"the header holds the non-JSON constant {token}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, entry: object, data_bytes: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _Bad(f"tensor {name!r} is not an object", name)
    if set(entry) != _ENTRY_KEYS:
        raise _Bad(
            f"tensor {name!r} has keys {sorted(entry)}; expected dtype, shape and data_offsets",
            name,
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _Bad(f"tensor {name!r} has unknown dtype {dtype!r}", name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Bad(f"tensor {name!r} has shape {shape!r}; expected non-negative integers", name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
    ):
        raise _Bad(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]", name)
    begin, end = offsets
    if begin > end:
        raise _Bad(f"tensor {name!r} has data_offsets [{begin}, {end}]: begin is after end", name)
    if end > data_bytes:
        raise _Bad(
            f"tensor {name!r} ends at byte {end}, beyond the data section's {data_bytes} bytes",
            name,
        )
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise _Bad(
            f"tensor {name!r} is {dtype} {shape}, which is {bits / 8:g} bytes, "
            f"but its data_offsets span {end - begin} bytes",
            name,
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tiling(tensors: list[TensorInfo], data_bytes: int) -> None:
    expected, previous = 0, None
    for info in sorted(tensors, key=lambda t: (t.begin, t.end, t.name)):
        if info.begin < expected and previous is not None:
            raise _Bad(
                f"tensor {info.name!r} bytes [{info.begin}, {info.end}) overlap tensor "
                f"{previous.name!r} bytes [{previous.begin}, {previous.end})",
                info.name,
            )
        if info.begin > expected:
            raise _Bad(
                f"bytes [{expected}, {info.begin}) of the data section, before tensor "
                f"{info.name!r}, belong to no tensor",
                info.name,
            )
        expected, previous = info.end, info
    if expected != data_bytes:
        raise _Bad(f"bytes [{expected}, {data_bytes}) of the data section belong to no tensor")


def _parse(path: Path) -> SafetensorsHeader:
    with path.open("rb") as stream:
        size = path.stat().st_size
        if size < 8:
            raise _Bad(f"the file is {size} bytes, too short for a header")
        length = int.from_bytes(stream.read(8), "little")
        if length > MAX_HEADER_BYTES:
            raise _Bad(f"the header length {length} exceeds the limit of {MAX_HEADER_BYTES} bytes")
        if length > size - 8:
            raise _Bad(f"the header length {length} exceeds the file's {size - 8} bytes after it")
        raw = stream.read(length)
    if len(raw) != length:
        raise _Bad("the file ended inside the header")
    if not raw.startswith(b"{"):
        raise _Bad("the header does not start with '{'")
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Bad(f"the header is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _Bad("the header is not a JSON object")
    data_bytes = size - 8 - length
    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Bad("__metadata__ is not a map of strings to strings", _METADATA)
    tensors = [_parse_entry(name, entry, data_bytes) for name, entry in header.items()]
    _check_tiling(tensors, data_bytes)
    return SafetensorsHeader(
        tensors={t.name: t for t in tensors}, metadata=dict(metadata), data_bytes=data_bytes
    )


def read_safetensors_header(path: Path, *, display: str | None = None) -> SafetensorsHeader:
    """Read and validate the header of a ``.safetensors`` file; load no tensor data.

    Raises ``UnsafeArtifact`` (rule ``safetensors_header``) naming the file and,
    where there is one, the tensor. ``display`` is the name used in messages.
    """
    shown = display if display is not None else Path(path).name
    try:
        return _parse(Path(path))
    except _Bad as bad:
        raise UnsafeArtifact(
            f"{shown}: invalid safetensors header: {bad}",
            rule="safetensors_header",
            path=shown,
            hint=_HINT,
            tensor=bad.tensor,
        ) from None
    except OSError as exc:
        raise UnsafeArtifact(
            f"{shown}: cannot read the safetensors header ({exc.strerror or exc})",
            rule="safetensors_header",
            path=shown,
            hint=_HINT,
        ) from exc
