"""What a run's training cost: its GPU-hours at the configured price per GPU-hour.

The price is ``MODELYARD_GPU_HOUR_PRICE`` (in the unit of your token prices). A run on
CPU held no GPU: its GPU-hours and cost are ``None``, never a made-up number; a GPU run
without a price records its GPU-hours and says that no price was set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.settings import load_settings


def gpu_hour_price() -> float | None:
    """The configured price of one GPU-hour (``None`` when none is set)."""
    return load_settings().gpu_hour_price


def priced(compute: Mapping[str, Any], price: float | None) -> dict[str, Any]:
    """``compute`` (``TrainResult.compute``) with ``gpu_hour_price`` and ``cost`` added."""
    hours = compute.get("gpu_hours")
    cost = round(float(hours) * price, 6) if hours is not None and price is not None else None
    return {**compute, "gpu_hour_price": price if hours is not None else None, "cost": cost}
