"""NVML, opened once per process, read on demand (a scrape, a logged training step)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

_GIB = 1024**3


@dataclass(frozen=True)
class GpuReading:
    """One GPU now: its NVML index and name, memory in bytes, utilization as 0..1 (None
    where NVML does not report it: a MIG instance, some virtual GPUs)."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float | None


class _Nvml:
    """The library, initialised on first use; ``None`` once it failed (not tried again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self._tried = False

    def module(self) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                except Exception:  # no package, no driver (NVMLError_LibraryNotFound), no GPU
                    return None
                self._module = pynvml
            return self._module


_NVML = _Nvml()


def gpu_readings() -> list[GpuReading]:
    """Every GPU NVML sees, or ``[]`` without ``nvidia-ml-py``, a driver or a GPU."""
    nvml = _NVML.module()
    if nvml is None:
        return []
    readings = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            try:
                busy: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:  # not supported here (MIG): the memory is still worth it
                busy = None
            readings.append(
                GpuReading(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    utilization=None if busy is None else busy / 100.0,
                )
            )
    except nvml.NVMLError:  # a GPU fell off the bus or the driver went away: report none
        return []
    return readings


def summarize(readings: list[GpuReading]) -> str:
    """``"GPU0 12.3/80.0 GiB 97%"`` per device, for a progress line (empty without GPUs;
    no share where NVML reports none)."""
    return ", ".join(
        f"GPU{r.index} {r.memory_used_bytes / _GIB:.1f}/{r.memory_total_bytes / _GIB:.1f} GiB"
        + ("" if r.utilization is None else f" {r.utilization:.0%}")
        for r in readings
    )
