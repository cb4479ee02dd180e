"""Model cards: a Markdown page per version, written from what the registry recorded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelyard.errors import ModelVersionNotFound, NotFound
from modelyard.store import ModelVersion, RegisteredModel, Run, Store

_KIND_LIMITS = {
    "adapter": "An adapter: it only works on top of its exact base model (see lineage).",
    "full": "A full model: it carries the base model's licence and limitations.",
}


_NO_DESCRIPTION = {
    True: "_No description was given (set registry.description in the fine-tune config)._",
    False: "_No description was given (`registry import --description` sets one for a new model)._",
}


def _table(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return "_none recorded_\n"
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list):
        return f"`{json.dumps(value, sort_keys=True)}`"
    return str(value).replace("|", "\\|")


def _cell(value: Any) -> str:
    """A gate table cell: a dash where the verdict has no number (no champion to compare with)."""
    return "—" if value is None else _fmt(value)


def _gates(metrics: Mapping[str, Any]) -> str:
    gates = metrics.get("gates")
    if not isinstance(gates, Mapping) or not gates.get("verdicts"):
        return "_no quality gates were applied_\n"
    lines = ["| gate | observed | bound | margin | verdict |", "|---|---|---|---|---|"]
    for verdict in gates["verdicts"]:
        result = "pass" if verdict.get("passed") else "**FAIL**"
        if verdict.get("observed") is None and verdict.get("reason"):
            result += f": {_fmt(verdict['reason'])}"  # nothing measured: say why it passed
        cells = [_cell(verdict.get(k)) for k in ("observed", "threshold", "margin")]
        lines.append(f"| `{verdict.get('gate')}` | {' | '.join(cells)} | {result} |")
    overall = "all gates passed" if gates.get("passed") else "**at least one gate failed**"
    return "\n".join(lines) + f"\n\nOverall: {overall}.\n"


def _overrides(metrics: Mapping[str, Any]) -> str:
    """Who took this version past its gates, when, why and for what: an auditor reading the
    card of a champion whose gates failed must see that an approver let it through."""
    found = [o for o in metrics.get("gate_overrides") or () if isinstance(o, Mapping)]
    if not found:
        return ""
    lines = ["| when (UTC) | approver | gates | for | reason |", "|---|---|---|---|---|"]
    for o in found:
        gates = str(o.get("gates", "?"))
        failed = [str(f) for f in o.get("failed") or ()]
        if failed:
            gates += ": " + "; ".join(failed)
        cells = (o.get("at", "?"), o.get("actor", "?"), gates, o.get("for", "?"), o.get("reason"))
        lines.append("| " + " | ".join(_text(c) for c in cells) + " |")
    return (
        "\n### Gate overrides\n\n"
        f"**The gates were overridden {len(found)} time(s)** by an approver "
        "(`--override-gates`; audited as `gate.overridden`):\n\n" + "\n".join(lines) + "\n"
    )


def _text(value: Any) -> str:
    """Free text in a table cell: one line, no column breaks."""
    return " ".join(str("?" if value is None else value).split()).replace("|", "\\|")


def _compute(compute: Any) -> str:
    """Where it trained and what that cost: GPU-hours (and their price) only where a GPU ran."""
    if not isinstance(compute, Mapping):
        return "_not recorded (trained before modelyard recorded compute)_\n"
    hours = compute.get("gpu_hours")
    seconds = float(compute.get("seconds") or 0.0)
    processes = int(compute.get("processes") or 1)
    where = f"{compute.get('device', '?')} ({compute.get('device_name', '?')})"
    rows = [
        ("device", where if processes == 1 else f"{processes} x {where}"),
        ("precision", str(compute.get("precision", "?"))),
        ("base weights", str(compute.get("base_dtype", "?"))),
        ("attention", str(compute.get("attention", "?"))),
        ("gradient checkpointing", "on" if compute.get("gradient_checkpointing") else "off"),
        ("distributed", str(compute.get("distributed") or "no (one process)")),
        ("wall time", f"{seconds / 3600:.4f} h ({seconds:.0f} s)"),
    ]
    if hours is None:
        rows.append(("GPU-hours", "none: trained on CPU, no GPU was held"))
        rows.append(("cost", "no GPU cost"))
    else:
        rows.append(("GPU-hours", f"{float(hours):.4f}"))
        price, cost = compute.get("gpu_hour_price"), compute.get("cost")
        rows.append(
            (
                "cost",
                f"{float(cost):.4g} ({float(hours):.4f} GPU-hours at {float(price):.4g} per "
                "GPU-hour)"
                if cost is not None and price is not None
                else "not priced: no MODELYARD_GPU_HOUR_PRICE was set when it trained",
            )
        )
    if compute.get("peak_memory_bytes") is not None:
        rows.append(("peak GPU memory", f"{int(compute['peak_memory_bytes']) / 1024**3:.2f} GiB"))
    return _table(rows)


def model_card(model: RegisteredModel, version: ModelVersion, run: Run | None) -> str:
    """The Markdown card of ``version``: use, data, training, evaluation, limits, lineage."""
    lineage = version.lineage
    config = lineage.get("config") if isinstance(lineage.get("config"), Mapping) else {}
    assert isinstance(config, Mapping)
    dataset = lineage.get("dataset") if isinstance(lineage.get("dataset"), Mapping) else {}
    assert isinstance(dataset, Mapping)
    base = lineage.get("base_model") if isinstance(lineage.get("base_model"), Mapping) else {}
    assert isinstance(base, Mapping)
    registry = config.get("registry", {}) if isinstance(config.get("registry"), Mapping) else {}
    description = model.description or registry.get("description") or ""
    scores = {
        k: v
        for k, v in version.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    aliases = ", ".join(version.aliases) or "none"
    training = config.get("training", {}) if isinstance(config.get("training"), Mapping) else {}
    method = config.get("method", {}) if isinstance(config.get("method"), Mapping) else {}
    parts = [
        f"# {version.ref}\n",
        f"Kind: {version.kind} · status: {version.status} · aliases: {aliases} · "
        f"registered {version.created_at:%Y-%m-%d %H:%M} UTC"
        + (f" · tenant: {model.tenant}" if model.tenant else "")
        + "\n",
        "## Intended use\n",
        (description or _NO_DESCRIPTION[run is not None]) + "\n",
        "## Data\n",
        _table(
            [
                ("dataset", f"{dataset.get('name', '?')} v{dataset.get('version', '?')}"),
                ("format", str(dataset.get("format", "?"))),
                ("sha256", f"`{dataset.get('digest', '?')}`"),
                ("evaluation set sha256", f"`{dataset.get('eval_digest', '?')}`"),
                ("prompt template", str(lineage.get("prompt_template", "?"))),
            ]
            if dataset
            else []
        ),
        "## Training\n",
        _table(
            [(f"method.{k}", _fmt(v)) for k, v in sorted(method.items())]
            + [(f"training.{k}", _fmt(v)) for k, v in sorted(training.items()) if v is not None]
            + ([("run", f"`{run.id}` ({run.status})")] if run else [])
        ),
        "### Compute and cost\n",
        _compute(lineage.get("compute"))
        if lineage.get("run_id")
        else "_imported: not trained here_\n",
        "## Evaluation\n",
        _table([(k, _fmt(v)) for k, v in sorted(scores.items())]),
        "\n### Gates\n",
        _gates(version.metrics) + _overrides(version.metrics),
        "## Limitations\n",
        (
            "- Scores are measured on the held-out rows recorded above, drawn from the same "
            "source as the training data; they say little about other inputs.\n"
            if scores
            else "- No scores are recorded: judge it with `modelyard evaluate` before use.\n"
        )
        + f"- {_KIND_LIMITS[version.kind]}\n"
        "- Outputs are generated text: review them before acting on them.\n",
        "## Lineage\n",
        _table(
            [
                (
                    "base model",
                    f"{base.get('name', version.base_model)} ({base.get('source', '')})",
                ),
                *[
                    (f"base weights `{name}`", f"`{digest}`")
                    for name, digest in sorted(dict(base.get("weights", {})).items())
                ],
                ("artifact sha256", f"`{version.artifact_digest}`"),
                ("parent", str(lineage.get("parent") or "none")),
                ("seed", str(lineage.get("seed", "?"))),
                ("git commit", str(lineage.get("git_commit") or "none")),
                (
                    "environment",
                    _fmt(lineage.get("environment", {})),
                ),
            ]
        ),
    ]
    return "\n".join(parts)


def version_card(store: Store, ref: str) -> tuple[ModelVersion, str]:
    """The version ``ref`` resolves to, and its card (see ``model_card``). An endpoint's
    name given for a model's is a ModelVersionNotFound that names the model it serves."""
    try:
        version = store.resolve_model_ref(ref)
    except ModelVersionNotFound as exc:
        raise _endpoint_instead(store, ref) or exc from None
    model = store.get_registered_model(version.model)
    run = store.get_run(version.run_id) if version.run_id else None
    return version, model_card(model, version, run)


def _endpoint_instead(store: Store, ref: str) -> ModelVersionNotFound | None:
    """When ``ref``'s name is no model but an endpoint's, the error that says which model
    the endpoint serves (``acme-support@champion`` for ``acme-claims@champion``)."""
    name, sep, rest = ref.partition("@") if "@" in ref else ref.partition(":")
    try:
        store.get_registered_model(name)
        return None  # the model exists: the version or alias is what is missing
    except NotFound:
        pass
    try:
        endpoint = store.get_endpoint(name)
    except NotFound:
        return None
    suggested = f"{endpoint.model}{sep}{rest}" if sep else endpoint.model_ref
    return ModelVersionNotFound(
        f"no registered model named {name!r}: {name!r} is an endpoint, serving "
        f"{endpoint.model_ref}",
        hint=f"Give the model's name: `modelyard registry card {suggested}`.",
    )
