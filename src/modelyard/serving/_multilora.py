"""Mixed-adapter LoRA without peft's sub-batch loop: stacked slots, gathered per row.

``read_lora`` turns a verified peft LoRA directory into ``LoraWeights``: every
``lora_A``/``lora_B`` pair by base module, checked against the base (the
module exists, is a plain ``nn.Linear``, the shapes fit, the rank agrees with
the config), with peft's scaling per module (``lora_alpha / r``, or
``/ sqrt(r)`` with ``use_rslora``; ``rank_pattern`` and ``alpha_pattern`` are
matched as peft matches them). Features that change LoRA's forward (DoRA,
LoRA biases, ``modules_to_save``, fan-in-fan-out weights, embeddings, ...) are
refused with a message naming them.

``MultiLora`` keeps the base model plain and holds, for each adapted linear
layer, the loaded adapters' matrices stacked in ``slots`` (``A``: ``[slots, r,
in]``, ``B``: ``[slots, out, r]``; ranks padded with zeros to the largest, a
layer an adapter does not adapt is zero in its slot). ``route`` gives each row
of the next forward passes its slot, once per batch: a batch on one adapter
runs peft's own two ``linear`` calls on that slot; a mixed batch gathers each
row's matrices once (scaling folded into ``B``) and every step costs two
batched matmuls per layer, whatever the number of adapters (the approach of
S-LoRA and Punica). The layers' ``forward`` is replaced on the module
instances (``close`` restores it), so the module tree and its weights are
untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from modelyard.artifacts import (
    UNSERVABLE_LORA_FIELDS,  # what import refuses is what this cannot run
)

CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."


class LoraFormatError(Exception):
    """An adapter this engine cannot serve (the message says why)."""


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: ``delta(x) = (x @ a.T) @ b.T * scaling``."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's LoRA layers by base module name, checked against one base."""

    layers: Mapping[str, LoraLayer]

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers.values() for t in (layer.a, layer.b)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors_file = path / "adapter_model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = load_file(str(safetensors_file), device="cpu")
        return tensors
    bin_file = path / "adapter_model.bin"
    if bin_file.is_file():
        loaded = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise LoraFormatError("adapter_model.bin does not hold a dict of tensors")
        return {str(k): v for k, v in loaded.items()}
    raise LoraFormatError("no adapter_model.safetensors (or adapter_model.bin) in the adapter")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraFormatError(f"the adapter has no {CONFIG_NAME}") from None
    except (OSError, ValueError) as exc:
        raise LoraFormatError(f"{CONFIG_NAME} is not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LoraFormatError(f"{CONFIG_NAME} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise LoraFormatError(f"peft_type is {config.get('peft_type')!r}; only LORA is served")
    for field in UNSERVABLE_LORA_FIELDS:
        if config.get(field):
            raise LoraFormatError(
                f"{CONFIG_NAME} sets {field}={config[field]!r}; this engine serves plain LoRA "
                "on linear layers"
            )
    if config.get("bias", "none") != "none":
        raise LoraFormatError(
            f"{CONFIG_NAME} sets bias={config['bias']!r}; this engine serves LoRA without biases"
        )
    return config


def _number(config: Mapping[str, Any], key: str) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LoraFormatError(f"{CONFIG_NAME}: {key} is {value!r}, not a number")
    return float(value)


def _patterns(config: Mapping[str, Any], key: str) -> dict[str, float]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise LoraFormatError(f"{CONFIG_NAME}: {key} is not a map of module patterns")
    return {str(k): _number(value, k) for k in value}


def read_lora(path: Path, model: nn.Module) -> LoraWeights:
    """The LoRA layers of the peft adapter in ``path``, checked against ``model`` (the base).

    Raises ``LoraFormatError`` with the reason (a shape that does not fit says
    ``size mismatch``, like peft and torch).
    """
    from peft.utils.other import get_pattern_key

    config = _read_config(path)
    r_default = _number(config, "r")
    alpha_default = _number(config, "lora_alpha")
    rank_pattern = _patterns(config, "rank_pattern")
    alpha_pattern = _patterns(config, "alpha_pattern")
    rslora = bool(config.get("use_rslora"))
    tensors = _load_tensors(path)
    if not tensors:
        raise LoraFormatError("the adapter's weights hold no tensors")
    embedding = next((k for k in sorted(tensors) if ".lora_embedding_" in k), None)
    if embedding is not None:
        module_name = embedding.removeprefix(_PREFIX).partition(".lora_embedding_")[0]
        raise LoraFormatError(
            f"the adapter adapts the embedding {module_name}; this engine applies LoRA to "
            "linear layers only"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise LoraFormatError(
                f"the adapter holds {key}, which is not a LoRA A or B matrix of a linear layer "
                "(this engine serves plain LoRA only)"
            )
    modules = dict(model.named_modules())
    layers: dict[str, LoraLayer] = {}
    for module_name, pair in sorted(pairs.items()):
        module = modules.get(module_name)
        if module is None:
            raise LoraFormatError(f"the adapter adapts {module_name}, which the base does not have")
        if type(module) is not nn.Linear:
            raise LoraFormatError(
                f"the adapter adapts {module_name}, a {type(module).__name__}; this engine "
                "applies LoRA to linear layers only"
            )
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise LoraFormatError(f"the adapter has no {missing} for {module_name}")
        a, b = pair["lora_A"], pair["lora_B"]
        r_key = get_pattern_key(list(rank_pattern), module_name)
        rank = int(rank_pattern.get(r_key, r_default))
        want_a, want_b = (rank, module.in_features), (module.out_features, rank)
        for part, tensor, want in (("lora_A", a, want_a), ("lora_B", b, want_b)):
            if tuple(tensor.shape) != want:
                raise LoraFormatError(
                    f"size mismatch for {module_name}.{part}.weight: the adapter's tensor has "
                    f"shape {list(tensor.shape)}, the base model's layer needs {list(want)}"
                )
        alpha_key = get_pattern_key(list(alpha_pattern), module_name)
        alpha = alpha_pattern.get(alpha_key, alpha_default)
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        dtype = module.weight.dtype
        layers[module_name] = LoraLayer(
            a.to(dtype).contiguous(), b.to(dtype).contiguous(), float(scaling)
        )
    return LoraWeights(layers)


# -- the stacked slots ---------------------------------------------------------------------


class _StackedLinear:
    """The slots of one ``nn.Linear``; its ``forward`` adds each row's LoRA delta."""

    def __init__(self, module: nn.Linear, slots: int) -> None:
        self.module = module
        weight = module.weight
        self.a = torch.zeros(slots, 0, module.in_features, dtype=weight.dtype, device=weight.device)
        self.b = torch.zeros(
            slots, module.out_features, 0, dtype=weight.dtype, device=weight.device
        )
        self.ranks = [0] * slots
        self.scaling = [0.0] * slots
        # set by route(): None (no delta), ("one", a, b, s) or ("rows", a_t, b_t_scaled)
        self.plan: tuple[Any, ...] | None = None
        module.forward = self.forward  # type: ignore[method-assign,assignment]

    def restore(self) -> None:
        self.module.__dict__.pop("forward", None)

    def put(self, slot: int, layer: LoraLayer | None) -> None:
        if layer is None:
            self.ranks[slot], self.scaling[slot] = 0, 0.0
            self.a[slot].zero_()
            self.b[slot].zero_()
            return
        rank = layer.a.shape[0]
        if rank > self.a.shape[1]:  # grow every slot's rank, zero-padded
            slots, old = self.a.shape[0], self.a.shape[1]
            a = self.a.new_zeros(slots, rank, self.a.shape[2])
            b = self.b.new_zeros(slots, self.b.shape[1], rank)
            a[:, :old] = self.a
            b[:, :, :old] = self.b
            self.a, self.b = a, b
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :rank] = layer.a
        self.b[slot, :, :rank] = layer.b
        self.ranks[slot], self.scaling[slot] = rank, layer.scaling

    def route(self, rows: Sequence[int]) -> None:
        first = rows[0]
        if all(s == first for s in rows):
            rank = self.ranks[first]
            if rank == 0:
                self.plan = None
            else:  # one adapter: peft's own two linear calls
                a, b = self.a[first, :rank], self.b[first, :, :rank]
                self.plan = ("one", a, b, self.scaling[first])
            return
        if all(self.ranks[s] == 0 for s in rows):
            self.plan = None
            return
        index = torch.tensor(rows, device=self.a.device)
        scale = torch.tensor([self.scaling[s] for s in rows], dtype=self.a.dtype)
        a_t = self.a.index_select(0, index).transpose(1, 2).contiguous()  # [rows, in, r]
        b_t = (self.b.index_select(0, index) * scale.to(self.b.device)[:, None, None]).transpose(
            1, 2
        )
        self.plan = ("rows", a_t, b_t.contiguous(), len(rows))  # [rows, r, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        out: torch.Tensor = functional.linear(x, module.weight, module.bias)
        plan = self.plan
        if plan is None:
            return out
        if x.dtype != self.a.dtype:
            x = x.to(self.a.dtype)
        if plan[0] == "one":
            _, a, b, scaling = plan
            delta: torch.Tensor = functional.linear(functional.linear(x, a), b)
            summed: torch.Tensor = out + delta * float(scaling)
            return summed
        _, a_t, b_t, rows = plan
        if x.dim() != 3 or x.shape[0] != rows:
            raise RuntimeError(
                f"the LoRA routing was set for {rows} rows, the layer got input {list(x.shape)}"
            )
        mixed: torch.Tensor = torch.baddbmm(out, torch.bmm(x, a_t), b_t)
        return mixed


class MultiLora:
    """``slots`` LoRA adapters stacked on the linear layers of one plain base model, plus
    one slot that always stays empty (``empty``): the rows of requests with no adapter
    (full weights, a base) route there and get the plain layer."""

    def __init__(self, model: nn.Module, slots: int) -> None:
        self.model = model
        self.slots = slots
        self.empty = slots
        self._modules = dict(model.named_modules())
        self._layers: dict[str, _StackedLinear] = {}
        self._held: list[bool] = [False] * slots + [True]

    def free_slot(self) -> int | None:
        return next((i for i, held in enumerate(self._held) if not held), None)

    def put(self, slot: int, weights: LoraWeights) -> None:
        """Copy ``weights`` into ``slot`` (every layer it does not adapt is zero there)."""
        for name in weights.layers:
            if name not in self._layers:
                module = self._modules[name]
                assert isinstance(module, nn.Linear)
                self._layers[name] = _StackedLinear(module, self.slots + 1)
        for name, layer in self._layers.items():
            layer.put(slot, weights.layers.get(name))
        self._held[slot] = True

    def release(self, slot: int) -> None:
        self._held[slot] = False

    def clear(self, slot: int) -> None:
        """Empty ``slot`` after a ``put`` that failed part way (zeroing allocates nothing)."""
        self._held[slot] = False
        for layer in self._layers.values():
            layer.put(slot, None)

    def route(self, rows: Sequence[int]) -> None:
        """Row ``i`` of the next forward passes gets the adapter in slot ``rows[i]``."""
        if not rows:
            raise ValueError("route needs at least one row")
        for layer in self._layers.values():
            layer.route(rows)

    def unroute(self) -> None:
        for layer in self._layers.values():
            layer.plan = None

    def close(self) -> None:
        """Give the layers their own ``forward`` back."""
        for layer in self._layers.values():
            layer.restore()
        self._layers.clear()


__all__ = ["LoraFormatError", "LoraLayer", "LoraWeights", "MultiLora", "read_lora"]
