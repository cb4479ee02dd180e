"""Evaluation: metrics, model evaluation reports, quality gates, and adapter loading.

``evaluate_model`` generates an answer per row and computes named metrics
(``METRICS``); ``parse_gates``/``evaluate_gates`` turn gate texts such as
``"exact_match >= 0.85"`` or ``"not_worse_than: champion"`` into verdicts.
``generate`` and ``load_adapters`` are also what a server needs: one shared
base with every tenant's adapter attached, selected per prompt with
``adapter_names`` (``load_adapter`` is ``modelyard.base.load_adapter``, re-exported).
"""

from modelyard.base import load_adapter
from modelyard.evaluation._confusion import ConfusionMatrix, confusion_matrix
from modelyard.evaluation._evaluate import (
    ANSWER_METRICS,
    EvalReport,
    Prediction,
    evaluate_model,
    peak_rss_mb,
)
from modelyard.evaluation._exact_match import EvalResult, evaluate_exact_match
from modelyard.evaluation._gates import (
    ChampionGate,
    Gate,
    GateVerdict,
    ThresholdGate,
    evaluate_gates,
    gated_metrics,
    gates_passed,
    parse_gate,
    parse_gates,
    require_gates,
)
from modelyard.evaluation._generate import BASE_ADAPTER, generate, load_adapters
from modelyard.evaluation._metrics import (
    accuracy,
    exact_match,
    macro_f1,
    normalize,
    rouge_l,
    token_f1,
)
from modelyard.evaluation._perplexity import encode_pair, perplexity, perplexity_of_pairs
from modelyard.evaluation._registry import METRICS, MetricSpec, check_metric_names, metric_spec
from modelyard.evaluation._render import Render, renderer_for
from modelyard.evaluation._table import verdicts_table

__all__ = [
    "ANSWER_METRICS",
    "BASE_ADAPTER",
    "METRICS",
    "ChampionGate",
    "ConfusionMatrix",
    "EvalReport",
    "EvalResult",
    "Gate",
    "GateVerdict",
    "MetricSpec",
    "Prediction",
    "Render",
    "ThresholdGate",
    "accuracy",
    "check_metric_names",
    "confusion_matrix",
    "encode_pair",
    "evaluate_exact_match",
    "evaluate_gates",
    "evaluate_model",
    "exact_match",
    "gated_metrics",
    "gates_passed",
    "generate",
    "load_adapter",
    "load_adapters",
    "macro_f1",
    "metric_spec",
    "normalize",
    "parse_gate",
    "parse_gates",
    "peak_rss_mb",
    "perplexity",
    "perplexity_of_pairs",
    "renderer_for",
    "require_gates",
    "rouge_l",
    "token_f1",
    "verdicts_table",
]
