"""``evaluate_model``: generate an answer per row, score the requested metrics, keep a report.

Latency is measured per request, one request at a time: when a latency metric
is asked for, every row is generated alone (batch size 1) after one untimed
warm-up request, and its wall time (tokenize, generate, decode) is its latency.
That is what one client sees from an otherwise idle model. Without latency
metrics, rows are generated in batches, which is much faster; the two modes can
differ slightly in their outputs, since padding changes floating-point sums.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from modelyard.errors import ConfigError, DataError
from modelyard.evaluation._exact_match import _answer_budget
from modelyard.evaluation._generate import generate
from modelyard.evaluation._metrics import (
    accuracy,
    exact_match,
    macro_f1,
    normalize,
    rouge_l,
    token_f1,
)
from modelyard.evaluation._perplexity import max_seq_len_of, perplexity_of_pairs
from modelyard.evaluation._registry import METRICS, check_metric_names
from modelyard.evaluation._render import REFERENCELESS_FORMATS, Render, render_rows, renderer_for

TextMetric = Callable[[Sequence[str], Sequence[str]], float]

_TEXT_METRICS: Mapping[str, TextMetric] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "accuracy": accuracy,
    "macro_f1": macro_f1,
}
_LATENCY_PERCENTILES = {"p50_latency_ms": 50.0, "p95_latency_ms": 95.0}
ANSWER_METRICS = frozenset({*_TEXT_METRICS, *_LATENCY_PERCENTILES})
"""The metrics for which the model generates an answer per row (``predictions``)."""


@dataclass(frozen=True)
class Prediction:
    """One row's outcome: what the model said, what it should have said, and how long it took.

    ``index`` is the row's position in the evaluated rows (0-based); ``matched``
    is exact match after ``normalize``; ``latency_ms`` is set only when the row
    was timed alone (a latency metric was requested).
    """

    index: int
    reference: str
    predicted: str
    matched: bool
    latency_ms: float | None = None


@dataclass(frozen=True)
class EvalReport:
    """The metrics of one model on some rows, with every prediction kept for inspection.

    ``peak_rss_mb`` is the process's peak resident memory so far (``ru_maxrss``,
    which includes anything the process did before the evaluation);
    ``peak_cuda_mb`` is ``torch.cuda.max_memory_allocated`` during the
    evaluation, for a model on a CUDA device. ``latency_mode`` is ``"sequential"``
    when rows were generated one at a time and timed, ``"batched"`` when they
    were generated in batches, ``"none"`` when no metric needed generation.
    """

    metrics: dict[str, float]
    n: int
    predictions: list[Prediction]
    format: str
    max_new_tokens: int
    batch_size: int
    latency_mode: Literal["sequential", "batched", "none"]
    seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy; a non-finite value (an overflowing perplexity) becomes ``None``."""
        data = asdict(self)
        data["metrics"] = {name: _finite_or_none(v) for name, v in self.metrics.items()}
        return data


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _cuda_device(model: Any) -> torch.device | None:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        return device
    return None


def _generate_timed(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int
) -> tuple[list[str], list[float]]:
    """Each prompt generated alone and timed in ms, after one untimed warm-up request."""
    generate(model, tokenizer, prompts[:1], max_new_tokens=max_new_tokens, batch_size=1)
    outputs, latencies = [], []
    for prompt in prompts:
        started = time.perf_counter()
        # generate() ends in .tolist(), which waits for the device: the time is complete.
        outputs.extend(generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens))
        latencies.append((time.perf_counter() - started) * 1000.0)
    return outputs, latencies


def _check_sizes(max_new_tokens: int | None, batch_size: int) -> None:
    if batch_size < 1 or (max_new_tokens is not None and max_new_tokens < 1):
        raise ConfigError(
            f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be at least 1",
            hint="Use positive numbers, or leave max_new_tokens unset for the automatic budget.",
        )


def _scores(
    names: Sequence[str],
    outputs: Sequence[str],
    references: Sequence[str],
    latencies: Sequence[float] | None,
) -> dict[str, float]:
    """The requested text-quality and latency metrics."""
    values: dict[str, float] = {}
    for name in names:
        if name in _TEXT_METRICS:
            values[name] = _TEXT_METRICS[name](outputs, references)
        elif name in _LATENCY_PERCENTILES and latencies is not None:
            values[name] = float(np.percentile(latencies, _LATENCY_PERCENTILES[name]))
    return values


def _check_request(names: Sequence[str], format: str, batch_size: int, budget: int | None) -> None:
    if not names:
        raise ConfigError("no metrics to compute", hint=f"Name some of: {', '.join(METRICS)}.")
    if batch_size < 1 or (budget is not None and budget < 1):
        raise ConfigError(
            f"batch_size ({batch_size}) and max_new_tokens ({budget}) must be at least 1",
            hint="Use positive numbers, or leave max_new_tokens unset for the automatic budget.",
        )
    if format in REFERENCELESS_FORMATS:
        needs_answers = [name for name in names if name in _TEXT_METRICS]
        if needs_answers:
            raise ConfigError(
                f"metric {needs_answers[0]!r} needs reference answers, which {format!r} rows "
                "have not",
                hint="Use perplexity, latency and memory metrics with text rows.",
                metric=needs_answers[0],
            )


def _run_generation(
    names: Sequence[str],
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    budget: int,
    batch_size: int,
) -> tuple[list[str] | None, list[float] | None]:
    """Outputs (None when no metric needs them) and per-request latencies (when asked for)."""
    if any(name in _LATENCY_PERCENTILES for name in names):
        return _generate_timed(model, tokenizer, prompts, budget)
    if any(name in _TEXT_METRICS for name in names):
        return generate(
            model, tokenizer, prompts, max_new_tokens=budget, batch_size=batch_size
        ), None
    return None, None


def _check_room(
    model: Any, tokenizer: Any, prompts: Sequence[str], budget: int, max_seq_len: int | None
) -> None:
    """A DataError naming the first row whose prompt leaves the answer no room in the
    model's context: generated past it, an answer is noise (or the model fails) and would
    be scored as the version's."""
    limit = max_seq_len_of(model, max_seq_len)
    if limit is None:
        return
    for number, prompt in enumerate(prompts, start=1):
        length = len(tokenizer(prompt, verbose=False)["input_ids"])
        if length + budget > limit:
            raise DataError(
                f"row {number}: its prompt is {length} tokens and its answer may take "
                f"{budget} more, over the model's context of {limit} tokens",
                hint="Shorten the row or drop it from the evaluation set (or give fewer "
                "new tokens: --max-new-tokens, evaluation.max_new_tokens).",
                row=number,
            )


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str],
    format: str = "alpaca",
    render: Render | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    max_seq_len: int | None = None,
) -> EvalReport:
    """Greedy-generate an answer for every row and compute ``metrics`` (names in ``METRICS``).

    Rows are ``format`` rows (alpaca, chat, classification or text) rendered to
    ``(prompt, reference)`` by ``render``, by default the training template of
    the format (chat uses the tokenizer's chat template when it has one).
    ``max_new_tokens`` defaults to the longest reference plus a few tokens.
    ``perplexity`` scores the references with the same rendering; ``max_seq_len``
    bounds its rows (default: the model's context). Latency metrics make
    generation sequential (see module docs); with neither text nor latency
    metrics nothing is generated and ``predictions`` is empty.
    ``peak_memory_mb`` is the CUDA peak for a model on CUDA, else the process's
    peak RSS. Unknown names, formats or sizes raise ``ConfigError`` before any
    work; bad rows raise ``DataError`` naming the row.
    """
    names = check_metric_names(metrics)
    _check_request(names, format, batch_size, max_new_tokens)
    pairs = render_rows(rows, renderer_for(format, render, tokenizer))
    prompts = [prompt for prompt, _ in pairs]
    references = [reference for _, reference in pairs]
    started = time.perf_counter()
    cuda = _cuda_device(model)
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)

    values: dict[str, float] = {}
    if "perplexity" in names:  # first: it is cheap, and a too-long row fails before generating
        values["perplexity"] = perplexity_of_pairs(
            model, tokenizer, pairs, batch_size=batch_size, max_seq_len=max_seq_len
        )
    budget = max_new_tokens or _answer_budget(tokenizer, references)
    if any(name in _LATENCY_PERCENTILES or name in _TEXT_METRICS for name in names):
        _check_room(model, tokenizer, prompts, budget, max_seq_len)
    outputs, latencies = _run_generation(names, model, tokenizer, prompts, budget, batch_size)
    if outputs is not None:
        values.update(_scores(names, outputs, references, latencies))
    peak_cuda = torch.cuda.max_memory_allocated(cuda) / 2**20 if cuda is not None else None
    peak_rss = peak_rss_mb()
    if "peak_memory_mb" in names:
        values["peak_memory_mb"] = peak_cuda if peak_cuda is not None else peak_rss

    return EvalReport(
        metrics={name: values[name] for name in names},
        n=len(rows),
        predictions=_predictions(outputs, references, latencies),
        format=format,
        max_new_tokens=budget,
        batch_size=batch_size,
        latency_mode=(
            "sequential" if latencies is not None else "batched" if outputs is not None else "none"
        ),
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss,
        peak_cuda_mb=peak_cuda,
    )


def _predictions(
    outputs: Sequence[str] | None, references: Sequence[str], latencies: Sequence[float] | None
) -> list[Prediction]:
    if outputs is None:
        return []
    return [
        Prediction(
            index=i,
            reference=reference,
            predicted=output,
            matched=normalize(output) == normalize(reference),
            latency_ms=latencies[i] if latencies is not None else None,
        )
        for i, (output, reference) in enumerate(zip(outputs, references, strict=True))
    ]
