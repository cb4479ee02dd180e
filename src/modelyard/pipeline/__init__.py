"""Closing the loop in one file: production records → dataset → gated fine-tune → rollout.

``load_pipeline`` reads and checks a pipeline YAML (``from_records``, ``finetune``,
``rollout``) before anything runs, each error naming its field; ``check_against_store``
looks up what it names; ``run_pipeline`` runs the stages with the library calls their
own commands make (``curate``, ``finetune``, ``delivery``), stops at the first failure
(no usable records: before training; a failed gate: before the rollout), and writes an
audit event per stage, each naming the previous one, so the chain links the records to
the dataset, the model version and the rollout. See docs/closing-the-loop.md.
"""

from modelyard.pipeline._run import (
    PipelineRun,
    StageResult,
    check_against_store,
    plan_of,
    run_pipeline,
)
from modelyard.pipeline._schema import (
    STAGES,
    Pipeline,
    RecordsPlan,
    RolloutPlan,
    load_pipeline,
    parse_pipeline,
)

__all__ = [
    "STAGES",
    "Pipeline",
    "PipelineRun",
    "RecordsPlan",
    "RolloutPlan",
    "StageResult",
    "check_against_store",
    "load_pipeline",
    "parse_pipeline",
    "plan_of",
    "run_pipeline",
]
