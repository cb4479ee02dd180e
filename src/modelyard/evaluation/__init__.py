"""Evaluation: greedy generation, exact match, and loading adapters onto a base.

``generate`` and ``load_adapters`` are also what a server needs: one shared base
with every tenant's adapter attached, selected per prompt with ``adapter_names``.
"""

from modelyard.evaluation._exact_match import EvalResult, evaluate_exact_match
from modelyard.evaluation._generate import BASE_ADAPTER, generate, load_adapter, load_adapters
from modelyard.evaluation._metrics import exact_match, normalize

__all__ = [
    "BASE_ADAPTER",
    "EvalResult",
    "evaluate_exact_match",
    "exact_match",
    "generate",
    "load_adapter",
    "load_adapters",
    "normalize",
]
