"""Where and with what a benchmark's numbers were measured: one dict, in every JSON output."""

from __future__ import annotations

import math
import os
import platform
from types import ModuleType
from typing import Any

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
