"""GPU telemetry: memory and utilization per device, read from NVIDIA's management library.

``gpu_readings`` imports ``pynvml`` (the ``nvidia-ml-py`` package) only when first
called; without the package, the driver or a GPU it returns no readings, so training
progress and the serving ``/metrics`` report GPUs only where there are some.
"""

from modelyard.gpu._nvml import GpuReading, gpu_readings, summarize

__all__ = ["GpuReading", "gpu_readings", "summarize"]
