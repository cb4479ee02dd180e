"""Which inference records become training rows, and why each of the others does not.

``select_rows`` walks records (oldest first, as ``Store.query_records`` gives them)
and keeps the ones that pass the filters and can give their text back: the answer
is the label a person gave in feedback (a correction) when there is one, else the
model's own answer; the prompt is parsed back with the version's template
(``modelyard.data.row_from_prompt``). Every record left out is counted under one
reason (``SKIP_REASONS``, or a filter of ``FILTERS``), so the numbers add up to the
records read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelyard.data import has_redactions, row_from_prompt, template_for
from modelyard.errors import DataError

SKIP_REASONS: dict[str, str] = {
    "hashed": "the tenant keeps only hashes",
    "not_kept": "the tenant keeps no text",
    "redacted": "the text has redaction placeholders",
    "no_answer": "an error or an empty answer, and no label",
    "chat_template": "rendered by the tokenizer's own chat template, which cannot be parsed back",
    "unparsable": "the prompt does not parse in the version's template",
    "format": "the version's template gives no rows of this format",
    "duplicate": "the same row as an earlier record",
    "in_training_data": "already in the training data",
}
"""Why a record that passed the filters gives no row, in the order they are checked."""

FILTERS: dict[str, str] = {
    "shadow": "a shadow copy (mirrored to a candidate, never returned)",
    "min_score": "no feedback score, or one below --min-score",
    "label": "no feedback label among --label",
}
"""The records the filters leave out, by filter."""


@dataclass(frozen=True)
class RecordFilters:
    """The window (``since`` inclusive, ``until`` exclusive) and what a record must have."""

    since: datetime
    until: datetime
    version: int | None = None
    status: str | None = None
    min_score: float | None = None
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "min_score": self.min_score,
            "labels": list(self.labels),
        }


@dataclass
class Selection:
    """The rows and the records they came from (same order), and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    read: int = 0
    filtered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "records_read": self.read,
            "rows": len(self.rows),
            "filtered": dict(self.filtered),
            "skipped": dict(self.skipped),
        }


def row_key(row: Mapping[str, Any], data_format: str) -> str:
    """What training sees of a row: its prompt and response as the format's template renders
    them (``chat`` as ``chat-fallback``), so two rows with the same key train the same."""
    try:
        prompt, response = template_for(data_format).render(row)
    except DataError:  # a row no template renders: compared as it is
        return json.dumps(dict(row), sort_keys=True, ensure_ascii=False)
    return f"{prompt}\0{response}"


def _answer(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The row's answer and whether it is the model's own (not a person's label)."""
    label = (record.get("feedback_label") or "").strip()
    if label:
        return label, False
    response = record.get("response") or ""
    return (response.strip() if record.get("status") == "ok" else ""), True


def _filtered(record: Mapping[str, Any], filters: RecordFilters) -> str | None:
    if record.get("shadow"):
        return "shadow"
    score = record.get("feedback_score")
    corrected = bool((record.get("feedback_label") or "").strip())  # its row is the label
    if (
        filters.min_score is not None
        and not corrected
        and (score is None or score < filters.min_score)
    ):
        return "min_score"
    if filters.labels and record.get("feedback_label") not in filters.labels:
        return "label"
    return None


def _row(
    record: Mapping[str, Any], policy: str | None, template: str, data_format: str
) -> dict[str, Any] | str:
    """The row of one record, or the reason (a ``SKIP_REASONS`` key) it has none."""
    if policy == "hash":
        return "hashed"
    prompt = record.get("prompt")
    if policy == "none" or prompt is None:
        return "not_kept"
    answer, own = _answer(record)
    if not answer:
        return "no_answer"
    if policy == "redacted" and has_redactions(prompt, answer if own else ""):
        # what the redaction replaced is gone; text without a placeholder is as it was sent
        return "redacted"
    try:
        return row_from_prompt(template, prompt, answer, data_format)
    except DataError as exc:
        reason = exc.context.get("reason")
        return reason if reason in SKIP_REASONS else "unparsable"


def select_rows(
    records: Iterable[Mapping[str, Any]],
    *,
    filters: RecordFilters,
    data_format: str,
    templates: Mapping[int | None, str],
    policies: Mapping[str | None, str],
    known: Collection[str] = frozenset(),
    progress: Callable[[int], None] | None = None,
) -> Selection:
    """The rows of ``data_format`` that ``records`` give, after the filters.

    ``templates`` maps a record's ``version_id`` to its version's prompt template,
    ``policies`` a tenant name to its storage policy; ``known`` holds the ``row_key`` of
    every row already trained on. ``progress`` is called with the records done so far.
    """
    out = Selection()
    seen: set[str] = set()
    for record in records:
        out.read += 1
        if progress is not None and out.read % 100 == 0:
            progress(out.read)
        why = _filtered(record, filters)
        if why is not None:
            out.filtered[why] += 1
            continue
        template = templates.get(record.get("version_id"), "")
        row = _row(record, policies.get(record.get("tenant")), template, data_format)
        if isinstance(row, dict):
            key = row_key(row, data_format)
            row = "duplicate" if key in seen else "in_training_data" if key in known else row
            seen.add(key)
        if isinstance(row, str):
            out.skipped[row] += 1
            continue
        out.rows.append(row)
        out.record_ids.append(str(record["id"]))
    if progress is not None:
        progress(out.read)
    return out
