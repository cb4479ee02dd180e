"""Static scan of pickle-based weight files: which globals would loading them import?

Nothing is unpickled. The opcodes are read with ``pickletools.genops`` and the
unpickler's stack and memo are simulated just far enough to know, for every
``GLOBAL``/``INST`` (module and name inline) and ``STACK_GLOBAL`` (module and
name popped from the stack, possibly fetched from the memo), which object the
loader would import. A file passes only when every import is one of
``ALLOWED_PICKLE_GLOBALS`` (what ``torch.save`` writes for a state dict) and
every call (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ``) calls such an import.

Fail closed: a file that cannot be parsed to its last byte, an import whose
module or name is not a known string, an ``EXT*`` (copyreg registry) reference,
or a call on anything but an allowed import is a refusal, never a pass.

Layouts, chosen the way ``torch.load`` chooses them (by the first four bytes):

- a zip (``PK\\x03\\x04``): every ``*.pkl`` entry is scanned (torch's
  ``archive/data.pkl``), each must be exactly one pickle;
- torch's legacy format (first pickle is torch's magic number): the five
  pickles it holds are scanned, the raw storage bytes after them are not;
- anything else: a plain pickle; every byte must belong to a pickle.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelyard.errors import UnsafeArtifact

_TORCH_STORAGES = (
    "BFloat16Storage",
    "BoolStorage",
    "ByteStorage",
    "CharStorage",
    "ComplexDoubleStorage",
    "ComplexFloatStorage",
    "DoubleStorage",
    "FloatStorage",
    "HalfStorage",
    "IntStorage",
    "LongStorage",
    "ShortStorage",
)
_TORCH_DTYPES = (
    "bfloat16",
    "bool",
    "complex64",
    "complex128",
    "float16",
    "float32",
    "float64",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)

#: The only globals a pickle may import: what ``torch.save`` writes for a state
#: dict of tensors (rebuild functions, storage types, dtypes) and nothing else.
ALLOWED_PICKLE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch.storage.UntypedStorage",
        "torch.Size",
        *(f"torch.{name}" for name in _TORCH_STORAGES),
        *(f"torch.{name}" for name in _TORCH_DTYPES),
    }
)

_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys
_MAX_MEMBER_BYTES = 1 << 30  # a data.pkl holds tensor metadata only; 1 GiB is far beyond that

_STRING_OPS = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
    }
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
# opcode name -> position of the called object counted from the top of the stack
_CALL_OPS = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}

_PICKLE_HINT = (
    "Convert the weights to safetensors (safetensors.torch.save_file on the state dict, "
    "in a trusted environment) and import that instead."
)


@dataclass(frozen=True)
class _Global:
    """A value on the simulated stack that is an imported object."""

    name: str


class _Mark:
    """The MARK placeholder on the simulated stack."""


_MARK = _Mark()
_UNKNOWN = object()


class _ParseError(Exception):
    """The opcodes are not a pickle a loader would accept."""


class _Refused(Exception):
    """A construct the scanner refuses outright (message says which)."""


def _global_name(module: str, name: str, proto: int) -> str:
    """``module.name`` as the unpickler resolves it (protocol < 3 maps Python 2 names)."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _as_str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    return None


class _Machine:
    """Just enough of an unpickler to follow strings, imports and the memo."""

    def __init__(self) -> None:
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.proto = 0
        self.imports: list[str] = []
        self.refused: list[str] = []  # imports outside the allow-list, in order

    def pop(self, count: int, op: str) -> list[object]:
        if count > len(self.stack):
            raise _ParseError(f"{op} pops more than the stack holds")
        items = self.stack[len(self.stack) - count :] if count else []
        if any(item is _MARK for item in items):
            raise _ParseError(f"{op} meets a MARK where it needs a value")
        del self.stack[len(self.stack) - count :]
        return items

    def pop_mark(self, op: str) -> list[object]:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                items = self.stack[index + 1 :]
                del self.stack[index:]
                return items
        raise _ParseError(f"{op} finds no MARK on the stack")

    def import_(self, module: object, name: object, op: str) -> _Global:
        mod, nm = _as_str(module), _as_str(name)
        if mod is None or nm is None:
            raise _Refused(f"{op} imports a name that is not a plain string")
        full = _global_name(mod, nm, self.proto)
        self.imports.append(full)
        if full not in ALLOWED_PICKLE_GLOBALS and full not in self.refused:
            self.refused.append(full)
        return _Global(full)

    def check_call(self, target: object, op: str) -> None:
        if not isinstance(target, _Global):
            raise _Refused(f"{op} calls an object that is not an imported global")

    def step(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        name = op.name
        if name == "PROTO":
            self.proto = int(arg) if isinstance(arg, int) else 0
            return
        if name in ("EXT1", "EXT2", "EXT4"):
            raise _Refused(f"{name} imports through the copyreg extension registry")
        if name == "POP":
            if not self.stack:
                raise _ParseError("POP on an empty stack")
            self.stack.pop()  # a MARK may be popped too, as the unpickler does
            return
        if name == "DUP":
            (value,) = self.pop(1, name)
            self.stack += [value, value]
            return
        if name in _PUT_OPS or name == "MEMOIZE":
            if not self.stack or self.stack[-1] is _MARK:
                raise _ParseError(f"{name} with nothing to memoize")
            key = len(self.memo) if name == "MEMOIZE" else int(str(arg))
            self.memo[key] = self.stack[-1]
            return
        if name in _GET_OPS:
            key = int(str(arg))
            if key not in self.memo:
                raise _ParseError(f"{name} of memo entry {key}, which was never stored")
            self.stack.append(self.memo[key])
            return
        if name in _STRING_OPS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            self.stack.append(text if isinstance(text, str) else _UNKNOWN)
            return
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            if name == "INST":
                self.pop_mark(name)
            self.stack.append(self.import_(module, attr, name))
            return
        if name == "STACK_GLOBAL":
            pushed_module, pushed_name = self.pop(2, name)
            self.stack.append(self.import_(pushed_module, pushed_name, name))
            return
        if name == "OBJ":
            items = self.pop_mark(name)
            if not items:
                raise _ParseError("OBJ without a class")
            self.check_call(items[0], name)
            self.stack.append(_UNKNOWN)
            return
        if name in _CALL_OPS:
            depth = _CALL_OPS[name]
            if len(self.stack) < depth:
                raise _ParseError(f"{name} pops more than the stack holds")
            self.check_call(self.stack[-depth], name)
        self._generic(op)

    def _generic(self, op: pickletools.OpcodeInfo) -> None:
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark(op.name)
            self.pop(before.index(pickletools.markobject), op.name)
        else:
            self.pop(len(before), op.name)
        self.stack += [
            _MARK if item is pickletools.markobject else _UNKNOWN for item in op.stack_after
        ]


def _scan_stream(stream: IO[bytes], machine: _Machine) -> list[tuple[str, object]]:
    """Scan one pickle from the stream's position; return its first few ``(opcode, arg)``."""
    machine.stack.clear()
    machine.memo.clear()
    head: list[tuple[str, object]] = []
    for op, arg, _pos in pickletools.genops(stream):
        if len(head) < 4:
            head.append((op.name, arg))
        machine.step(op, arg)
    return head


def _at_eof(stream: IO[bytes]) -> bool:
    here = stream.tell()
    if stream.read(1) == b"":
        return True
    stream.seek(here)
    return False


def _scan_plain(path: Path, machine: _Machine) -> None:
    if tarfile.is_tarfile(path):
        # torch.load unpickles the members of a tar (its oldest format); not supported
        raise _ParseError("it is a tar archive (PyTorch's oldest checkpoint format)")
    with path.open("rb") as stream:
        head = _scan_stream(stream, machine)
        if head == [("PROTO", 2), ("LONG1", _TORCH_LEGACY_MAGIC), ("STOP", None)]:
            for _ in range(_TORCH_LEGACY_PICKLES - 1):
                _scan_stream(stream, machine)
            return  # raw storage bytes follow; torch reads them as data, never as a pickle
        while not _at_eof(stream):
            _scan_stream(stream, machine)


def _scan_zip(path: Path, machine: _Machine) -> list[str]:
    members: list[str] = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".pkl"):
                continue
            if info.file_size > _MAX_MEMBER_BYTES:
                raise _ParseError(f"zip entry {info.filename} is larger than 1 GiB")
            members.append(info.filename)
            with archive.open(info) as member:
                _scan_stream(member, machine)
                if member.read(1) != b"":
                    raise _ParseError(f"zip entry {info.filename} has bytes after its pickle")
    if not members:
        raise _ParseError("it is a zip archive without any .pkl entry")
    return members


def scan_pickle(path: Path, *, display: str | None = None) -> tuple[str, ...]:
    """Scan a pickle-based weights file without loading it; return the globals it imports.

    Raises ``UnsafeArtifact`` with rule ``pickle_global`` when it imports (or
    calls) anything outside ``ALLOWED_PICKLE_GLOBALS``, and rule ``pickle`` when
    it cannot be read or parsed. ``display`` is the name used in messages
    (default: the file name).
    """
    shown = display if display is not None else Path(path).name
    machine = _Machine()
    refusal: str | None = None
    failure: BaseException | None = None
    try:
        with Path(path).open("rb") as stream:
            is_zip = stream.read(4) == _ZIP_MAGIC
        if is_zip:
            _scan_zip(Path(path), machine)
        else:
            _scan_plain(Path(path), machine)
    except _Refused as exc:
        refusal = str(exc)
    except Exception as exc:  # any failure to parse is a refusal, never a pass
        failure = exc
    if machine.refused or refusal is not None:
        reasons = [refusal] if refusal is not None else []
        if machine.refused:
            reasons.insert(
                0, f"it imports {', '.join(machine.refused)}, not on the tensor-rebuild allow-list"
            )
        raise UnsafeArtifact(
            f"{shown}: unsafe pickle: {'; '.join(reasons)}",
            rule="pickle_global",
            path=shown,
            hint=_PICKLE_HINT,
            globals=list(machine.refused),
        )
    if failure is not None:
        raise UnsafeArtifact(
            f"{shown}: cannot be scanned as a pickle ({_reason(failure)})",
            rule="pickle",
            path=shown,
            hint=f"The file is damaged or is not a PyTorch/pickle file. {_PICKLE_HINT}",
        ) from failure
    return tuple(sorted(set(machine.imports)))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
