"""Judges: models that score other models' answers on a rubric.

A judge is defined once in the store (``Store.put_judge``, ``modelyard judges
add``): a rubric (``correctness`` against a reference, ``faithfulness`` to a
context, ``relevance`` to the question, ``safety``, or a ``custom`` prompt), an
OpenAI-compatible target (an endpoint on a modelyard server or an upstream
provider) and where its key comes from. ``run_judge`` scores answers on it,
taking what that revision already scored from the store and keeping each new
call (score, answer, tokens, cost). Its mean score is the metric
``judge.NAME`` wherever metrics are named: ``evaluate``, gates
(``judge.correctness >= 4.0``), rollout guards and alert rules.
"""

from modelyard.judges._answers import (
    JudgeSource,
    answer_inputs,
    check_judged_rows,
    judge_source,
    question_of,
    split_metrics,
)
from modelyard.judges._define import check_definition
from modelyard.judges._records import (
    LIVE_FIELDS,
    RefusedClient,
    check_live,
    judge_records,
    question_from_prompt,
    record_inputs,
    version_templates,
)
from modelyard.judges._rubrics import FIELDS, RUBRICS, SCALE, JudgeInput, render, required_fields
from modelyard.judges._run import JudgeRun, api_key, make_client, parse_score, run_judge
from modelyard.metric_names import JUDGE_PREFIX as METRIC_PREFIX
from modelyard.metric_names import judge_name

__all__ = [
    "FIELDS",
    "LIVE_FIELDS",
    "METRIC_PREFIX",
    "RUBRICS",
    "SCALE",
    "JudgeInput",
    "JudgeRun",
    "JudgeSource",
    "RefusedClient",
    "answer_inputs",
    "api_key",
    "check_definition",
    "check_judged_rows",
    "check_live",
    "judge_name",
    "judge_records",
    "judge_source",
    "make_client",
    "parse_score",
    "question_from_prompt",
    "question_of",
    "record_inputs",
    "render",
    "required_fields",
    "run_judge",
    "split_metrics",
    "version_templates",
]
