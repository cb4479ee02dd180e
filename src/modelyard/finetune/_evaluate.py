"""Scoring a model on held-out rows, and re-evaluating any registered version on a file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.data import PromptTemplate, get_format, load_rows
from modelyard.errors import ConfigError
from modelyard.evaluation import (
    check_metric_names,
    evaluate_gates,
    evaluate_model,
    gated_metrics,
    gates_passed,
    parse_gates,
)
from modelyard.registry import load_version_model, version_format, version_template
from modelyard.store import Store


def evaluate_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str],
    template: PromptTemplate,
    data_format: str,
    max_new_tokens: int,
) -> dict[str, float]:
    """The configured metrics of one model on ``rows``."""
    report = evaluate_model(
        model,
        tokenizer,
        [dict(r) for r in rows],
        metrics=metrics,
        format=data_format,
        max_new_tokens=max_new_tokens,
        render=template.render,
    )
    return {k: float(v) for k, v in report.metrics.items()}


def check_evaluation(
    metrics: Sequence[str], gates: Sequence[str] = (), data_format: str | None = None
) -> list[str]:
    """Check what an evaluation asks for before anything is read: metric names, gates and
    the data format. Returns every metric to compute (those asked for, then those the
    gates need), each once; a ``ConfigError`` names the first bad one."""
    names = [m.strip() for m in metrics if m.strip()]
    if not names:
        raise ConfigError("--metrics names no metric", hint="e.g. --metrics exact_match,token_f1")
    parsed = parse_gates(list(gates))
    names = check_metric_names([*names, *gated_metrics(parsed)])
    if data_format is not None:
        get_format(data_format)
    return names


def evaluate_version(
    store: Store,
    artifacts: ArtifactStore,
    ref: str,
    data: Path,
    *,
    metrics: Sequence[str],
    gates: Sequence[str] = (),
    data_format: str | None = None,
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """Score the version ``ref`` on the rows of ``data``, with the template it trained with.

    ``data_format`` defaults to the format the version trained on. The metric names,
    gates and format are checked before the store is read. Returns what
    ``modelyard evaluate`` prints: the version, row count, metrics, gate verdicts
    and whether every gate passed.
    """
    names = check_evaluation(metrics, gates, data_format)
    version = store.resolve_model_ref(ref)
    fmt = data_format or version_format(version)
    rows = load_rows(data, fmt)
    model, tokenizer = load_version_model(store, artifacts, version)
    values = evaluate_rows(
        model,
        tokenizer,
        rows,
        metrics=names,
        template=version_template(version, tokenizer),
        data_format=fmt,
        max_new_tokens=max_new_tokens,
    )
    verdicts = evaluate_gates(parse_gates(list(gates)), values, None, 0.0)
    return {
        "model": version.ref,
        "rows": len(rows),
        "metrics": values,
        "verdicts": [v.to_dict() for v in verdicts],
        "passed": gates_passed(verdicts),
    }
