"""Judging inference records: what a judge is shown of live traffic.

A record gives the judge its question and its answer, nothing more: live
traffic has no reference answer and no context, so only a judge whose rubric
needs neither can judge it (``check_live``). The question is the record's
prompt parsed back into the row's fields with the version's template (an
alpaca prompt's instruction and input: ``data.parse_prompt``), or the prompt as
it is when it does not parse. Used by online judging (monitoring), rollout
guards on judges and shadow comparisons.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelyard.errors import ConfigError, DataError, ModelyardError
from modelyard.judges._answers import question_of
from modelyard.judges._rubrics import JudgeInput, required_fields
from modelyard.judges._run import JudgeRun, make_client, run_judge
from modelyard.store import JudgeDef, Store

LIVE_FIELDS = ("question", "answer")
"""What a judge can be given of a live record."""


def check_live(judge: JudgeDef, where: str) -> None:
    """A ConfigError when ``judge``'s rubric needs what live records do not have."""
    missing = [f for f in required_fields(judge.rubric, judge.prompt) if f not in LIVE_FIELDS]
    if missing:
        raise ConfigError(
            f"{where}: judge {judge.name!r} ({judge.rubric} rubric) needs a "
            f"{' and a '.join(missing)} for every answer, and live traffic has none",
            hint="Use a judge with the relevance or safety rubric, or a custom prompt that "
            "uses only {question} and {answer}.",
            field="judge",
        )


def question_from_prompt(template: str | None, prompt: str) -> str:
    """The user's words in ``prompt`` (rendered with ``template``), else the prompt itself."""
    if template is None:
        return prompt
    from modelyard.data import parse_prompt

    try:
        fields = parse_prompt(template, prompt)
    except DataError:
        return prompt
    return question_of(fields) or prompt


def version_templates(store: Store, version_ids: Iterable[int | None]) -> dict[int, str]:
    """The prompt template each version trained with, by version id."""
    from modelyard.registry import template_name

    ids = {v for v in version_ids if v is not None}
    versions = store.get_model_versions_by_ids(ids)
    return {vid: template_name(v.lineage) for vid, v in versions.items()}


class RefusedClient:
    """A client whose every call fails with why the judge cannot be called (e.g. its key
    variable is unset where this runs): each record is then a failure kept in the store,
    with the reason, instead of an error that stops the loop calling it."""

    def __init__(self, error: ModelyardError) -> None:
        self.error = error
        self.chat = self
        self.completions = self

    def create(self, **_: Any) -> Any:
        raise self.error

    def close(self) -> None:
        """Nothing to close: no connection was made."""


def record_inputs(
    texts: Mapping[str, tuple[int | None, str, str]],
    templates: Mapping[int, str],
    record_ids: Sequence[str],
) -> list[JudgeInput]:
    """A judge input per record of ``record_ids`` whose text ``texts`` holds, in order."""
    return [
        JudgeInput(
            answer=response.strip(),
            question=question_from_prompt(
                templates.get(version_id) if version_id is not None else None, prompt
            ),
            record_id=record_id,
        )
        for record_id in record_ids
        if record_id in texts
        for version_id, prompt, response in [texts[record_id]]
    ]


def judge_records(
    store: Store, judge: JudgeDef, record_ids: Sequence[str], *, concurrency: int = 4
) -> JudgeRun:
    """Have ``judge`` score the records ``record_ids`` (those with their text kept); every
    call, with or without a score, is kept in the store by record."""
    texts = store.record_texts(record_ids)
    templates = version_templates(store, (v for v, _, _ in texts.values()))
    items = record_inputs(texts, templates, record_ids)
    try:
        client: Any = make_client(judge) if items else None
    except ModelyardError as exc:
        client = RefusedClient(exc)
    try:
        return run_judge(
            judge, items, cache=store, client=client, concurrency=concurrency,
            require_scores=False,
        )  # fmt: skip
    finally:
        if client is not None:
            client.close()  # its connections now, not when the collector finds it
