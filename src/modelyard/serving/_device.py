"""Where the transformers engine runs its models: ``--device`` and ``--dtype`` of ``serve``.

``auto`` picks CUDA when torch sees a GPU, else the CPU; the dtype ``auto`` is
bfloat16 on a GPU that supports it, float16 on an older one and float32 on the
CPU. A device torch cannot use here is refused before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelyard.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """A device and a dtype for the engine's models."""

    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The placement ``device`` and ``dtype`` name, checked against this machine."""
    wanted = device.strip().lower()
    if wanted == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            chosen = torch.device(wanted)
        except RuntimeError:
            raise ConfigError(
                f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N", field="device"
            ) from None
        if chosen.type not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device!r} is not served: use auto, cpu, cuda or cuda:N",
                              field="device")  # fmt: skip
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"--device {device}: torch sees no CUDA GPU on this machine",
                    hint="Use --device cpu (or auto), or install a CUDA build of torch.",
                    field="device",
                )
            if chosen.index is not None and chosen.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"--device {device}: this machine has {torch.cuda.device_count()} GPUs",
                    field="device",
                )
    name = dtype.strip().lower()
    if name == "auto":
        if chosen.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return Placement(chosen, torch.bfloat16 if bf16 else torch.float16)
        return Placement(chosen, torch.float32)
    if name not in DTYPES:
        raise ConfigError(
            f"unknown --dtype {dtype!r}: use auto, {', '.join(DTYPES)}", field="dtype"
        )
    if name == "float16" and chosen.type == "cpu":
        raise ConfigError("--dtype float16 is not supported on the CPU",
                          hint="Use float32 or bfloat16 there.", field="dtype")  # fmt: skip
    return Placement(chosen, DTYPES[name])


__all__ = ["DTYPES", "Placement", "placement"]
