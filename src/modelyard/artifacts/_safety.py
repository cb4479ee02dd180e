"""Import safety checks: decide whether a staged model directory may be stored.

``inspect_artifact`` is pure: it reads the directory (and, for an adapter, the
base model's ``config.json``) and either returns a ``SafetyReport`` or raises
``UnsafeArtifact`` naming the rule and the file. It never imports the
artifact's code, never unpickles and never loads tensor data, and it writes
nothing, so the caller can record the refusal however it likes.

The rules, in the order they are checked (docs/artifact-safety.md):

1. ``path``: only regular files and directories (no symlink, hard link,
   device, FIFO or socket), relative names without control characters.
2. ``file_kind``: every file is of an allowed kind, judged by its name:
   safetensors, JSON, tokenizer files, text/Markdown and chat templates
   (``*.jinja``, as transformers saves them); pickle weights and
   Python files are kinds that need an opt-in (below). Anything else is refused.
3. ``remote_code``: ``*.py`` files, or an ``auto_map``/``custom_pipelines``
   entry in a JSON config, only with ``trust_remote_code``.
4. ``pickle``: pickle weights (``.bin .pt .pth .pkl .ckpt``) only with
   ``allow_pickle``, and then ``pickle_global``: the opcode scan finds nothing
   outside the tensor-rebuild allow-list.
5. content: JSON parses and nests at most ``max_json_depth`` levels
   (``json_depth``), text is UTF-8, ``safetensors_header`` is valid, and a
   sharded checkpoint's ``*.index.json`` names files inside the artifact.
6. layout and ``adapter_config``: an adapter has ``adapter_config.json`` and its
   weights, and fits its base model; a full model has ``config.json`` and weights.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from modelyard.artifacts._adapter_check import AdapterSummary, check_adapter
from modelyard.artifacts._pickle_scan import scan_pickle
from modelyard.artifacts._safetensors_check import SafetensorsHeader, read_safetensors_header
from modelyard.artifacts._staging import ImportLimits, TreeFile, safe_parts, walk_tree
from modelyard.errors import ConfigError, UnsafeArtifact

ArtifactKind = Literal["adapter", "full"]
FileKind = Literal["safetensors", "json", "tokenizer", "text", "pickle", "python"]
SafetyRule = Literal[
    "file_kind",
    "pickle",
    "pickle_global",
    "safetensors_header",
    "path",
    "remote_code",
    "adapter_config",
    "archive",
    "size",
    "file_count",
    "compression_ratio",
    "json_depth",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_TOKENIZER_JSON = frozenset({"tokenizer.json", "vocab.json"})
_TOKENIZER_TEXT = frozenset({"merges.txt", "vocab.txt"})
_SENTENCEPIECE = "tokenizer.model"
_TOKENIZER_NAMES = _TOKENIZER_JSON | _TOKENIZER_TEXT | {_SENTENCEPIECE}
_REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
_MAX_JSON_BYTES = 512 << 20
_CHUNK = 1 << 20

_KIND_HINT = (
    "Remove the file from the artifact. Allowed: *.safetensors, *.json, tokenizer files "
    "(tokenizer.json, tokenizer.model, vocab.json, merges.txt, vocab.txt, *.tiktoken), "
    "text (*.md, *.txt, LICENSE), chat templates (*.jinja); see docs/artifact-safety.md."
)
_REMOTE_HINT = (
    "Such a model runs its own Python code when loaded. Review the code, then import it "
    "with --trust-remote-code; or remove the code and the auto_map entries."
)
_PICKLE_OPT_IN_HINT = (
    "Convert the weights to safetensors and import those, or re-run with --allow-pickle "
    "to admit them after an opcode scan."
)


@dataclass(frozen=True)
class CheckedFile:
    """One file of an artifact that passed its checks."""

    path: str  # POSIX path relative to the artifact root
    kind: FileKind
    size: int
    tensors: int | None = None  # safetensors: how many tensors the header describes
    pickle_globals: tuple[str, ...] = ()  # pickle: the (allowed) globals it imports


@dataclass(frozen=True)
class SafetyReport:
    """What ``inspect_artifact`` checked and found; every file listed passed."""

    root: Path
    kind: ArtifactKind
    files: tuple[CheckedFile, ...]
    remote_code: bool  # code or auto_map admitted under trust_remote_code
    pickle: bool  # pickle weights admitted under allow_pickle
    adapter: AdapterSummary | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for audit records and ``--json`` output."""
        data = asdict(self)
        data["root"] = str(self.root)
        return data


def classify(name: str) -> FileKind | None:
    """The kind of a file judged by its name, or ``None`` when the kind is not allowed."""
    base = name.rsplit("/", 1)[-1]
    lower = base.lower()
    kind: FileKind | None = None
    if lower.endswith(".safetensors"):
        kind = "safetensors"
    elif base in _TOKENIZER_NAMES or lower.endswith(".tiktoken"):
        kind = "tokenizer"
    elif lower.endswith(".json"):
        kind = "json"
    elif lower.endswith((".md", ".txt", ".jinja")) or lower == "license":
        kind = "text"
    elif lower.endswith(PICKLE_SUFFIXES):
        kind = "pickle"
    elif lower.endswith(".py"):
        kind = "python"
    return kind


_CONTENT_HINT = (
    "The file is damaged or is not what its name says: write it again with the library "
    "that made it (transformers' or peft's save_pretrained), or remove it."
)


def _refuse_kind(rel: str, why: str, hint: str = _CONTENT_HINT) -> UnsafeArtifact:
    """A ``file_kind`` refusal; the hint says what fixes this case (default: the content)."""
    return UnsafeArtifact(f"{rel}: {why}", rule="file_kind", path=rel, hint=hint)


def _refuse_depth(rel: str, limit: int) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"{rel}: the JSON nests deeper than the limit of {limit} levels",
        rule="json_depth",
        path=rel,
        hint="Model configs and tokenizer files nest a few levels; rebuild the file, or raise "
        "the limit with --max-json-depth if it really is this deep.",
    )


def _depth(data: Any) -> int:
    """How deeply ``data`` nests lists and objects (iteratively: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest


def _read_json(entry: TreeFile, max_depth: int) -> Any:
    if entry.size > _MAX_JSON_BYTES:
        raise _refuse_kind(
            entry.rel,
            f"a JSON file of {entry.size} bytes is too large (the limit is {_MAX_JSON_BYTES})",
            "Model configs and tokenizer files are far smaller; remove the file.",
        )
    try:
        data = json.loads(entry.path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse_kind(entry.rel, f"is not valid UTF-8 JSON ({exc})") from exc
    except RecursionError:  # nested deeper than the parser's own stack allows
        raise _refuse_depth(entry.rel, max_depth) from None
    if _depth(data) > max_depth:
        raise _refuse_depth(entry.rel, max_depth)
    return data


def _check_utf8(entry: TreeFile) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with entry.path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _refuse_kind(entry.rel, f"is not UTF-8 text ({exc.reason})") from exc


def _check_sentencepiece(entry: TreeFile) -> None:
    with entry.path.open("rb") as stream:
        head = stream.read(4)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and head[1] <= 5):
        raise _refuse_kind(entry.rel, "looks like a pickle or zip, not a sentencepiece model")


def _check_remote_code(entry: TreeFile, data: Any, trust_remote_code: bool) -> bool:
    if not isinstance(data, dict):
        return False
    keys = [k for k in _REMOTE_CODE_KEYS if isinstance(data.get(k), dict)]
    if keys and not trust_remote_code:
        raise UnsafeArtifact(
            f"{entry.rel}: {keys[0]} makes loaders import Python code shipped with the model",
            rule="remote_code",
            path=entry.rel,
            hint=_REMOTE_HINT,
        )
    return bool(keys)


def _check_index(entry: TreeFile, data: Any, files: Mapping[str, FileKind]) -> None:
    """A sharded checkpoint's index may only name weight files inside the artifact."""
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if weight_map is None:
        return
    if not isinstance(weight_map, dict):
        raise _refuse_kind(entry.rel, "weight_map is not a map of tensor names to files")
    folder = entry.rel.rpartition("/")[0]
    for tensor, target in sorted(weight_map.items()):
        if not isinstance(target, str):
            raise _refuse_kind(entry.rel, f"weight_map gives tensor {tensor!r} no file name")
        try:
            parts = safe_parts(target)
        except UnsafeArtifact:
            parts = ()
        rel = "/".join((folder, *parts)) if folder else "/".join(parts)
        if not parts or files.get(rel) not in ("safetensors", "pickle"):
            raise UnsafeArtifact(
                f"{entry.rel}: weight_map sends tensor {tensor!r} to {target!r}, "
                "which is not a weights file of this artifact",
                rule="path",
                path=entry.rel,
                hint="Every shard an index names must be a weights file next to the index.",
            )


def _check_layout(kind: ArtifactKind, files: Mapping[str, FileKind]) -> None:
    if kind == "adapter":
        if "adapter_config.json" not in files:
            raise UnsafeArtifact(
                "the adapter has no adapter_config.json at its root",
                rule="adapter_config",
                path="adapter_config.json",
                hint="Import the directory peft's save_pretrained wrote.",
            )
        if not {"adapter_model.safetensors", "adapter_model.bin"} & set(files):
            raise UnsafeArtifact(
                "the adapter has no adapter_model.safetensors at its root",
                rule="adapter_config",
                path="adapter_model.safetensors",
                hint="Import the directory peft's save_pretrained wrote.",
            )
        return
    if "config.json" not in files:
        adapter = "adapter_config.json" in files
        raise _refuse_kind(
            "config.json",
            "a full model needs config.json at its root",
            "This is a LoRA adapter (it has adapter_config.json): import it with --kind adapter."
            if adapter
            else "Import the directory transformers' save_pretrained wrote (config.json, "
            "weights, tokenizer).",
        )
    if not any(k in ("safetensors", "pickle") for k in files.values()):
        raise _refuse_kind(
            "config.json",
            "a full model needs weights (*.safetensors)",
            "Import the directory transformers' save_pretrained wrote, weights included.",
        )


def _first(files: Mapping[str, FileKind], kind: FileKind) -> str | None:
    return next((rel for rel, k in files.items() if k == kind), None)


def inspect_artifact(
    path: Path,
    *,
    kind: ArtifactKind,
    base_model_dir: Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    max_rank: int = 256,
    max_json_depth: int = ImportLimits.max_json_depth,
) -> SafetyReport:
    """Check a model directory before it is stored; return what was checked.

    ``kind="adapter"`` needs ``base_model_dir`` (a directory holding the base's
    ``config.json``); ``kind="full"`` ignores it. Raises ``UnsafeArtifact``
    whose ``rule`` and ``path`` say which check refused which file, or
    ``ConfigError`` for bad arguments.
    """
    root = Path(path)
    if kind not in ("adapter", "full"):
        raise ConfigError(f"unknown artifact kind {kind!r}", hint="Use 'adapter' or 'full'.")
    if not root.is_dir():
        raise ConfigError(
            f"artifact {root} is not a directory",
            hint="Stage the import first (stage_import) and inspect the staged directory.",
        )
    if kind == "adapter" and base_model_dir is None:
        raise ConfigError(
            "checking an adapter needs its base model directory",
            hint="Pass the base model (a directory with config.json) the adapter was trained on.",
        )
    if max_rank < 1:
        raise ConfigError(f"max_rank must be at least 1, not {max_rank}")
    if max_json_depth < 1:
        raise ConfigError(f"max_json_depth must be at least 1, not {max_json_depth}")

    tree = walk_tree(root)
    if not tree:
        raise _refuse_kind(
            ".",
            "the artifact holds no files",
            "Import the model's directory (the one save_pretrained wrote), not an empty one.",
        )
    kinds: dict[str, FileKind] = {}
    for entry in tree:
        file_kind = classify(entry.rel)
        if file_kind is None:
            raise _refuse_kind(
                entry.rel, "this kind of file is not allowed in a model artifact", _KIND_HINT
            )
        kinds[entry.rel] = file_kind

    python = _first(kinds, "python")
    if python is not None and not trust_remote_code:
        raise UnsafeArtifact(
            f"{python}: the artifact ships Python code",
            rule="remote_code",
            path=python,
            hint=_REMOTE_HINT,
        )
    pickled = _first(kinds, "pickle")
    if pickled is not None and not allow_pickle:
        raise UnsafeArtifact(
            f"{pickled}: pickle-based weights can run code when loaded",
            rule="pickle",
            path=pickled,
            hint=_PICKLE_OPT_IN_HINT,
        )

    checked: list[CheckedFile] = []
    remote_code = python is not None
    headers: dict[str, SafetensorsHeader] = {}
    configs: dict[str, Any] = {}
    for entry in tree:
        file_kind = kinds[entry.rel]
        name = entry.rel.rsplit("/", 1)[-1]
        tensors: int | None = None
        globals_: tuple[str, ...] = ()
        if file_kind == "json" or name in _TOKENIZER_JSON:
            data = _read_json(entry, max_json_depth)
            if file_kind == "json":
                configs[entry.rel] = data
                remote_code |= _check_remote_code(entry, data, trust_remote_code)
        elif file_kind in ("text", "tokenizer") and name != _SENTENCEPIECE:
            _check_utf8(entry)
        elif name == _SENTENCEPIECE:
            _check_sentencepiece(entry)
        elif file_kind == "safetensors":
            headers[entry.rel] = read_safetensors_header(entry.path, display=entry.rel)
            tensors = len(headers[entry.rel].tensors)
        elif file_kind == "pickle":
            globals_ = scan_pickle(entry.path, display=entry.rel)
        checked.append(CheckedFile(entry.rel, file_kind, entry.size, tensors, globals_))

    for rel, data in configs.items():
        if rel.endswith(".index.json"):
            _check_index(next(e for e in tree if e.rel == rel), data, kinds)
    _check_layout(kind, kinds)

    adapter: AdapterSummary | None = None
    if kind == "adapter" and base_model_dir is not None:
        config = configs["adapter_config.json"]
        if not isinstance(config, dict):
            raise UnsafeArtifact(
                "adapter_config.json is not a JSON object",
                rule="adapter_config",
                path="adapter_config.json",
                hint="Import the directory peft's save_pretrained wrote.",
            )
        adapter = check_adapter(
            config,
            Path(base_model_dir),
            max_rank=max_rank,
            header=headers.get("adapter_model.safetensors"),
        )
    return SafetyReport(
        root=root,
        kind=kind,
        files=tuple(checked),
        remote_code=remote_code,
        pickle=pickled is not None,
        adapter=adapter,
    )
