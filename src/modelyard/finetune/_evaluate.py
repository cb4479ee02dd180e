"""Scoring a model on held-out rows, and re-evaluating any registered version on a file.

An evaluation with gates judges them as a fine-tune run does (a champion gate
scores the model's champion on the same rows) and records the verdicts on the
version with the same store method, so that they govern its promotion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.artifacts import ArtifactStore
from modelyard.data import PromptTemplate, get_format, load_rows
from modelyard.errors import ConfigError, NotFound
from modelyard.evaluation import (
    ANSWER_METRICS,
    EvalReport,
    check_metric_names,
    confusion_matrix,
    evaluate_gates,
    evaluate_model,
    gated_metrics,
    gates_passed,
    parse_gates,
)
from modelyard.judges import JudgeRun, JudgeSource, judge_source, split_metrics
from modelyard.registry import load_version_model, version_format, version_template
from modelyard.store import ModelVersion, Store


def score_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str],
    data_format: str,
    max_new_tokens: int,
    render: Any,
    judges: JudgeSource | None = None,
) -> tuple[dict[str, float], EvalReport, dict[str, JudgeRun]]:
    """``metrics`` of one model on ``rows``: the evaluation's own, then each judge's mean
    score of the answers (``judge.NAME``); also the report and each judge's run."""
    own, judged = split_metrics(metrics)
    if judged and judges is not None:  # before any answer: a row the judge cannot read
        judges.check_rows(rows, data_format)
    asked = own
    if judged and not ANSWER_METRICS.intersection(own):
        asked = [*own, "exact_match"]  # a judge needs the answers; this makes them
    report = evaluate_model(
        model, tokenizer, [dict(r) for r in rows], metrics=asked, format=data_format,
        max_new_tokens=max_new_tokens, render=render,
    )  # fmt: skip
    values = {name: float(report.metrics[name]) for name in own}
    runs: dict[str, JudgeRun] = {}
    if judged:
        if judges is None:
            raise ConfigError("judge metrics need the store that defines the judges")
        runs = judges.score(
            rows, [p.reference for p in report.predictions],
            [p.predicted for p in report.predictions],
        )  # fmt: skip
        for metric, run in runs.items():
            assert run.mean is not None  # run_judge refuses a run without a score
            values[metric] = run.mean
    return {name: values[name] for name in metrics}, report, runs


def evaluate_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str],
    template: PromptTemplate,
    data_format: str,
    max_new_tokens: int,
    judges: JudgeSource | None = None,
) -> dict[str, float]:
    """The configured metrics of one model on ``rows`` (judges' among them)."""
    values, _, _ = score_model(
        model, tokenizer, rows, metrics=metrics, data_format=data_format,
        max_new_tokens=max_new_tokens, render=template.render, judges=judges,
    )  # fmt: skip
    return values


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


def champion_of(store: Store, model: str) -> ModelVersion | None:
    """The version ``model@champion`` names, if any: what champion gates compare with."""
    try:
        return store.resolve_model_ref(f"{model}@champion")
    except NotFound:
        return None


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
    predictions: bool = False,
) -> dict[str, Any]:
    """Score the version ``ref`` on the rows of ``data``, with the template it trained with.

    ``data_format`` defaults to the format the version trained on. The metric names,
    gates and format are checked before the store is read. With ``gates``, a champion
    gate scores the model's champion on the same rows, and the verdicts are recorded
    on the version (``Store.record_gate_verdicts``, audited as ``gate.verdict``), as a
    fine-tune run records them: they decide whether it may take a protected alias or
    a rollout. Returns what ``modelyard evaluate`` prints: the version, row count,
    metrics (and the champion's), gate verdicts, whether every gate passed, and the
    version's gate status as recorded. With ``predictions``, also every row's answer
    (``"predictions"``: the row's fields, ``reference``, ``predicted``, ``matched``) and,
    for classification rows, the ``"confusion_matrix"``.
    """
    names = check_evaluation(metrics, gates, data_format)
    own, _ = split_metrics(names)
    if predictions and not ANSWER_METRICS.intersection(names) and own == names:
        raise ConfigError(
            f"--predictions needs the model's answers, which none of {', '.join(names)} asks for",
            hint=f"Add a metric that generates them: {', '.join(sorted(ANSWER_METRICS))}, or "
            "a judge's judge.NAME.",
            field="metrics",
        )
    judges = judge_source(store, names, where="--metrics")
    parsed = parse_gates(list(gates))
    version = store.resolve_model_ref(ref)
    fmt = data_format or version_format(version)
    rows = load_rows(data, fmt)
    if judges is not None:  # before any model is loaded
        judges.check_rows(rows, fmt, where="--data row")

    def score(target: ModelVersion) -> tuple[dict[str, float], EvalReport, dict[str, JudgeRun]]:
        model, tokenizer = load_version_model(store, artifacts, target)
        return score_model(
            model, tokenizer, rows, metrics=names, data_format=fmt,
            max_new_tokens=max_new_tokens, render=version_template(target, tokenizer).render,
            judges=judges,
        )  # fmt: skip

    values, report, runs = score(version)
    compares = any(g.kind == "not_worse_than" for g in parsed)
    champion = champion_of(store, version.model) if compares else None
    champion_metrics = None
    if champion is not None:
        champion_metrics = values if champion.version == version.version else score(champion)[0]
    verdicts = evaluate_gates(parsed, values, champion_metrics, 0.0)
    result: dict[str, Any] = {
        "model": version.ref,
        "rows": len(rows),
        "metrics": values,
        "champion": None if champion is None else champion.ref,
        "champion_metrics": champion_metrics,
        "verdicts": [v.to_dict() for v in verdicts],
        "passed": gates_passed(verdicts),
        "gate_status": None,
    }
    if runs:
        result["judges"] = {metric: run.summary() for metric, run in runs.items()}
    if predictions:
        result["predictions"] = [
            {**rows[p.index], "reference": p.reference, "predicted": p.predicted,
             "matched": p.matched,
             **{metric: run.scores[p.index] for metric, run in runs.items()}}
            for p in report.predictions
        ]  # fmt: skip
        if fmt == "classification":
            result["confusion_matrix"] = confusion_matrix(
                [p.reference for p in report.predictions],
                [p.predicted for p in report.predictions],
            ).to_dict()
    if parsed:
        source = {
            "by": "evaluate",
            "data": str(data.resolve()),
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "rows": len(rows),
            "champion": result["champion"],
        }
        recorded = store.record_gate_verdicts(
            version.model, version.version, result["verdicts"], result["passed"], source=source
        )
        result["gate_status"] = {"state": recorded.gates.state, "summary": recorded.gates.summary}
    return result
