"""Check a PEFT LoRA adapter config (and its weights' header) against its base model.

The base is built on PyTorch's ``meta`` device from its ``config.json`` alone:
no weights are read and no memory is allocated, so even a large base is cheap.
Its ``named_modules()`` give the module names, types and in/out features that
``target_modules`` must select and the adapter's tensors must fit.

Matching follows peft itself: the config is parsed into a ``peft.LoraConfig``
and each module name goes through ``peft``'s ``check_target_module_exists``
(list entries match a full name or a ``.``-separated suffix; a string is a
regex over the full name; ``"all-linear"`` means every linear layer but the
output head). torch, transformers and peft are imported only when an adapter is
checked.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from modelyard.artifacts._safetensors_check import SafetensorsHeader
from modelyard.errors import BaseModelNotFound, UnsafeArtifact

CONFIG_NAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_ALL_LINEAR = "all-linear"
_HINT = (
    "Export the adapter again with peft's save_pretrained from a model built on the "
    "same base, or import it with the base model it was trained on."
)


@dataclass(frozen=True)
class AdapterSummary:
    """What the adapter checks found: the config's essentials and the modules it adapts."""

    peft_type: str
    r: int
    target_modules: tuple[str, ...]  # as configured, sorted (a regex string is one entry)
    matched_modules: tuple[str, ...]  # full names of the base modules it adapts
    base_model_name_or_path: str | None
    tensors_checked: bool  # False when the weights are a pickle (no header to read)


@dataclass(frozen=True)
class _Module:
    kind: str  # linear | embedding | conv | other
    type_name: str
    dims: tuple[int, int] | None  # (in, out) for linear/conv, (num, dim) for embedding


@dataclass(frozen=True)
class _Base:
    modules: Mapping[str, _Module]
    params: Mapping[str, tuple[int, ...]]
    output_head: str | None
    model_type: str


_RANK_HINT = "Train the adapter with a smaller rank, or raise the limit with --max-rank."
MAX_LORA_ALPHA = 65536.0
"""The largest ``lora_alpha`` accepted: scaling is ``alpha / r``; real adapters use 1..1024."""
UNSERVABLE_LORA_FIELDS: tuple[str, ...] = (
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
    "megatron_config",
    "alora_invocation_tokens",
    "use_qalora",
    "velora_config",
    "monteclora_config",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
)
"""Config fields whose non-default value changes LoRA's forward pass: the serving
engine (``serving/_multilora.py``) runs plain LoRA on linear layers only, so an
adapter that sets one is refused at import instead of failing when served."""
_SERVE_HINT = (
    "modelyard serves plain LoRA (optionally rsLoRA) on linear layers: retrain the adapter "
    "without this feature, or merge it into a full model and import that with --kind full."
)


def _refuse(message: str, *, hint: str = _HINT, **context: Any) -> UnsafeArtifact:
    return UnsafeArtifact(message, rule="adapter_config", path=CONFIG_NAME, hint=hint, **context)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_rank(config: Mapping[str, Any], max_rank: int) -> tuple[int, dict[str, int]]:
    r = config.get("r")
    if not _is_int(r) or not 1 <= r <= max_rank:
        raise _refuse(f"{CONFIG_NAME}: rank r={r!r} is outside 1..{max_rank}", hint=_RANK_HINT)
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise _refuse(f"{CONFIG_NAME}: rank_pattern is not a map of module patterns to ranks")
    for key, value in pattern.items():
        if not _is_int(value) or not 1 <= value <= max_rank:
            raise _refuse(
                f"{CONFIG_NAME}: rank_pattern gives {key!r} rank {value!r}, outside 1..{max_rank}",
                hint=_RANK_HINT,
            )
    return r, {str(k): int(v) for k, v in pattern.items()}


def _check_servable(config: Mapping[str, Any]) -> None:
    """Refuse what the server cannot serve, and scalings that are not finite and sane."""
    for field in UNSERVABLE_LORA_FIELDS:
        if config.get(field):
            raise _refuse(
                f"{CONFIG_NAME}: {field}={config[field]!r} is not supported by the server",
                hint=_SERVE_HINT,
                field=field,
            )
    if config.get("bias", "none") != "none":
        raise _refuse(
            f"{CONFIG_NAME}: bias={config['bias']!r} is not supported by the server "
            "(LoRA without biases only)",
            hint=_SERVE_HINT,
            field="bias",
        )
    alphas: list[tuple[str, object]] = [("lora_alpha", config.get("lora_alpha", 8))]
    pattern = config.get("alpha_pattern") or {}
    if not isinstance(pattern, dict):
        raise _refuse(f"{CONFIG_NAME}: alpha_pattern is not a map of module patterns to numbers")
    alphas += [(f"alpha_pattern[{k!r}]", v) for k, v in pattern.items()]
    for where, value in alphas:
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or not 0 < number <= MAX_LORA_ALPHA:
            raise _refuse(
                f"{CONFIG_NAME}: {where} is {value!r}; it must be a finite number in "
                f"(0, {MAX_LORA_ALPHA:g}]",
                hint="lora_alpha scales the adapter's output (scale = alpha / r); export the "
                "adapter again with the alpha it was trained with.",
                field=where,
            )


def _string_list(config: Mapping[str, Any], key: str) -> list[str] | str | None:
    value = config.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _refuse(f"{CONFIG_NAME}: {key} is {value!r}; expected a list of names or a string")


def _check_patterns(config: Mapping[str, Any]) -> None:
    """Every regex peft builds from the config compiles (peft would crash on it otherwise)."""
    patterns: list[tuple[str, str]] = []
    for key in ("target_modules", "exclude_modules"):
        value = config.get(key)
        if isinstance(value, str) and value.lower() != _ALL_LINEAR:
            patterns.append((key, value))
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key)
        if isinstance(value, dict):
            patterns += [(key, rf"(.*\.)?({k})$") for k in value if isinstance(k, str)]
    to_save = config.get("modules_to_save")
    if isinstance(to_save, list):
        patterns += [("modules_to_save", rf"(^|.*\.){m}($|\..*)") for m in to_save]
    layers = config.get("layers_pattern")
    for value in (
        [layers] if isinstance(layers, str) else layers if isinstance(layers, list) else []
    ):
        patterns.append(("layers_pattern", rf"(?:^|.*?\.){value}\.(?P<idx>\d+)\."))
    for key, pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise _refuse(
                f"{CONFIG_NAME}: {key} holds an invalid regular expression ({exc})"
            ) from exc


def _lora_config(config: Mapping[str, Any]) -> Any:
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    known = {k: v for k, v in config.items() if k in fields}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LoraConfig(**known)
    except Exception as exc:  # whatever peft raises on a crafted config is a refusal
        raise _refuse(f"{CONFIG_NAME}: peft rejects the config: {exc}") from exc


def _load_base(base_dir: Path) -> _Base:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    if not (base_dir / "config.json").is_file():
        raise BaseModelNotFound(
            f"base model directory {base_dir} has no config.json", path=str(base_dir)
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(
                str(base_dir), local_files_only=True, trust_remote_code=False
            )
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise BaseModelNotFound(
            f"cannot build base model {base_dir} to check the adapter against: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            path=str(base_dir),
        ) from exc

    modules: dict[str, _Module] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        dims: tuple[int, int] | None = None
        if isinstance(module, torch.nn.Linear):
            kind, dims = "linear", (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            kind, dims = "linear", (int(module.weight.shape[0]), int(module.weight.shape[1]))
        elif isinstance(module, torch.nn.Embedding):
            kind, dims = "embedding", (module.num_embeddings, module.embedding_dim)
        elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            kind, dims = "conv", (module.in_channels, module.out_channels)
        elif isinstance(module, torch.nn.MultiheadAttention):
            kind = "attention"
        else:
            kind = "other"
        modules[name] = _Module(kind=kind, type_name=type(module).__name__, dims=dims)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    params = {
        n: tuple(int(d) for d in p.shape) for n, p in model.named_parameters(remove_duplicate=False)
    }
    return _Base(
        modules=modules,
        params=params,
        output_head=head_name,
        model_type=str(getattr(config, "model_type", "")),
    )


def _names_matching(entry: str, names: Mapping[str, object]) -> list[str]:
    """Names equal to ``entry`` or ending in ``.entry`` (peft's rule for list entries)."""
    return [n for n in names if n == entry or n.endswith(f".{entry}")]


def _short_names(base: _Base) -> str:
    shorts = sorted({n.rsplit(".", 1)[-1] for n, m in base.modules.items() if m.kind != "other"})
    return ", ".join(shorts)


def _resolve_targets(lora: Any, config: Mapping[str, Any], base: _Base) -> set[str]:
    """The base modules the adapter adapts, with every name in the config checked."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = _string_list(config, "target_modules")
    parameters = _string_list(config, "target_parameters")
    if isinstance(targets, str) and targets.lower() == _ALL_LINEAR:
        lora.target_modules = {
            n for n, m in base.modules.items() if m.kind == "linear" and n != base.output_head
        }
    elif targets is None and not parameters:
        default = DEFAULTS.get(base.model_type)
        if not default:
            raise _refuse(
                f"{CONFIG_NAME}: target_modules is not set and peft has no default "
                f"for base model type {base.model_type!r}"
            )
        lora.target_modules = set(default)
    elif isinstance(targets, list):
        for entry in targets:
            if not _names_matching(entry, base.modules):
                raise _refuse(
                    f"{CONFIG_NAME}: target module {entry!r} does not exist in the base model "
                    f"(its adaptable modules: {_short_names(base)})",
                    target=entry,
                )
    to_save = _string_list(config, "modules_to_save")
    for entry in to_save if isinstance(to_save, list) else []:
        if not _names_matching(entry, base.modules):
            raise _refuse(
                f"{CONFIG_NAME}: modules_to_save names {entry!r}, "
                "which does not exist in the base model",
                target=entry,
            )
    for entry in parameters if isinstance(parameters, list) else []:
        if not _names_matching(entry, base.params):
            raise _refuse(
                f"{CONFIG_NAME}: target parameter {entry!r} does not exist in the base model",
                target=entry,
            )

    matched = set()
    try:
        if lora.target_modules is not None:
            matched = {n for n in base.modules if check_target_module_exists(lora, n)}
    except Exception as exc:  # a crafted config must not crash the check
        raise _refuse(f"{CONFIG_NAME}: peft cannot match its modules: {exc}") from exc
    for name in sorted(matched):
        if base.modules[name].kind == "other":
            raise _refuse(
                f"{CONFIG_NAME}: target_modules selects {name}, a "
                f"{base.modules[name].type_name}, which LoRA cannot adapt "
                f"(it adapts linear, embedding and convolution layers: {_short_names(base)})",
                target=name,
            )
    if isinstance(parameters, list):
        for entry in parameters:
            matched.update(p.rsplit(".", 1)[0] for p in _names_matching(entry, base.params))
    if not matched:
        raise _refuse(
            f"{CONFIG_NAME}: target_modules {targets!r} selects no module of the base model "
            f"(its adaptable modules: {_short_names(base)})"
        )
    return matched


def _expected_shape(
    part: str, last: str | None, module: _Module, rank: int
) -> tuple[int, ...] | None:
    """The shape a LoRA tensor must have, or ``None`` where only the rank axis is checked."""
    if module.dims is None:
        return None
    first, second = module.dims
    if module.kind == "linear":
        shapes = {
            ("lora_A", "weight"): (rank, first),
            ("lora_B", "weight"): (second, rank),
            ("lora_B", "bias"): (second,),
            ("lora_magnitude_vector", None): (second,),
            ("lora_magnitude_vector", "weight"): (second,),
        }
        return shapes.get((part, last))
    if module.kind == "embedding":
        shapes = {
            ("lora_embedding_A", None): (rank, first),
            ("lora_embedding_B", None): (second, rank),
            ("lora_magnitude_vector", None): (second,),
            ("lora_magnitude_vector", "weight"): (second,),
        }
        return shapes.get((part, last))
    return None


def _check_lora_tensor(
    key: str, shape: tuple[int, ...], module_name: str, tail: list[str], base: _Base, rank: int
) -> None:
    module = base.modules[module_name]
    part, last = tail[0], (tail[-1] if len(tail) > 1 else None)
    expected = _expected_shape(part, last, module, rank)
    if expected is None and module.kind == "conv" and last == "weight":
        axis = {"lora_A": 0, "lora_B": 1}.get(part)
        if axis is not None and (len(shape) <= axis or shape[axis] != rank):
            raise _refuse(
                f"adapter tensor {key} has shape {list(shape)}, but rank {rank} needs "
                f"dimension {axis} to be {rank}",
                tensor=key,
            )
        return
    if expected is not None and shape != expected:
        raise _refuse(
            f"adapter tensor {key} has shape {list(shape)}, expected {list(expected)} "
            f"(rank {rank}, base {module_name} is {module.type_name} {list(module.dims or ())})",
            tensor=key,
        )


def _check_tensors(
    header: SafetensorsHeader,
    base: _Base,
    matched: set[str],
    r: int,
    rank_pattern: dict[str, int],
    param_owners: set[str],
) -> None:
    from peft.utils.other import get_pattern_key

    if not header.tensors:
        raise _refuse("adapter_model.safetensors holds no tensors")
    for key, info in sorted(header.tensors.items()):
        name = key.removeprefix(_PEFT_PREFIX)
        if ".lora_" in name:
            module_name, _, rest = name.partition(".lora_")
            tail = f"lora_{rest}".split(".")
            if module_name not in base.modules:
                raise _refuse(
                    f"adapter tensor {key} adapts {module_name}, "
                    "which the base model does not have",
                    tensor=key,
                )
            if module_name not in matched:
                raise _refuse(
                    f"adapter tensor {key} adapts {module_name}, which target_modules "
                    "does not select",
                    tensor=key,
                )
            if module_name in param_owners:
                continue  # parameter-targeted LoRA: layouts vary by module; the name was checked
            pattern = get_pattern_key(list(rank_pattern), module_name)
            rank = rank_pattern.get(pattern, r)
            _check_lora_tensor(key, info.shape, module_name, tail, base, rank)
            continue
        plain = name.replace(".base_layer.", ".")
        if plain in base.params:
            if info.shape != base.params[plain]:
                raise _refuse(
                    f"adapter tensor {key} has shape {list(info.shape)}, but the base model's "
                    f"{plain} is {list(base.params[plain])}",
                    tensor=key,
                )
        elif not any(plain.startswith(f"{m}.") for m in base.modules):
            raise _refuse(
                f"adapter tensor {key} belongs to no module of the base model", tensor=key
            )


def check_adapter(
    config: Mapping[str, Any],
    base_dir: Path,
    *,
    max_rank: int,
    header: SafetensorsHeader | None,
) -> AdapterSummary:
    """Check a parsed ``adapter_config.json`` and its weights' header against a base.

    ``header`` is the validated header of ``adapter_model.safetensors`` (``None``
    when the weights are a pickle: then only the config is checked). Raises
    ``UnsafeArtifact`` (rule ``adapter_config``) with the reason, or
    ``BaseModelNotFound`` when the base cannot be built from ``base_dir``.
    """
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _refuse(
            f"{CONFIG_NAME}: peft_type is {peft_type!r}; only LORA adapters can be imported"
        )
    r, rank_pattern = _check_rank(config, max_rank)
    _check_patterns(config)
    _check_servable(config)
    lora = _lora_config(config)
    base = _load_base(Path(base_dir))
    matched = _resolve_targets(lora, config, base)
    parameters = _string_list(config, "target_parameters")
    param_owners = {
        p.rsplit(".", 1)[0]
        for entry in (parameters if isinstance(parameters, list) else [])
        for p in _names_matching(entry, base.params)
    }
    if header is not None:
        _check_tensors(header, base, matched, r, rank_pattern, param_owners)
    targets = _string_list(config, "target_modules")
    configured = (targets,) if isinstance(targets, str) else tuple(sorted(set(targets or ())))
    name_or_path = config.get("base_model_name_or_path")
    return AdapterSummary(
        peft_type="LORA",
        r=r,
        target_modules=configured,
        matched_modules=tuple(sorted(matched)),
        base_model_name_or_path=name_or_path if isinstance(name_or_path, str) else None,
        tensors_checked=header is not None,
    )
