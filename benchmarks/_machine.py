"""Where and with what a benchmark's numbers were measured: one dict, in every JSON output."""

from __future__ import annotations

import gc
import math
import os
import platform
import sys
from types import ModuleType
from typing import Any, NoReturn

import torch


def machine(*libraries: ModuleType) -> dict[str, Any]:
    """The platform, CPUs, torch's threads and device, the load now, and the versions of
    Python, torch and ``libraries`` (by their module names)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for library in libraries:
        info[library.__name__] = library.__version__
    return info


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity; write them as null (in nested dicts and lists too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def leave(code: int | None) -> NoReturn:
    """``sys.exit(code)`` without the collections the interpreter runs over every object left
    as it tears its modules down: with torch, transformers and peft imported (some 600,000
    objects) they took 2 s of CPU in every benchmark process, after its results were out.
    ``gc.freeze`` puts every object where no collection looks; atexit handlers still run."""
    gc.freeze()
    sys.exit(code)
