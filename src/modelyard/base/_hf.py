"""Small helpers at the border with Hugging Face libraries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' tqdm bars (weight loading/saving) for the duration of a call.

    modelyard's front ends draw their own progress; stray bars on stderr would
    interleave with them. The previous setting is restored afterwards.
    """
    from transformers.utils import logging as hf_logging  # at use: importing it is slow

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
