"""``modelyard finetune``: one YAML config from raw rows to a gated, registered model version.

``load_config`` validates the config (unknown keys are named with the nearest
valid one); ``prepare`` loads, splits and checks the data and the base before
any training; ``run_finetune`` trains, evaluates, registers, applies the gates
and moves the alias on a pass. What a version records and how it is loaded
afterwards (lineage, prompt template, verified files) is ``modelyard.registry``'s.
"""

from modelyard.finetune._bases import resolve_base
from modelyard.finetune._cleanup import FinetuneInterrupted
from modelyard.finetune._config import FinetuneConfig, load_config, parse_config
from modelyard.finetune._evaluate import check_evaluation, evaluate_rows, evaluate_version
from modelyard.finetune._launch import check_gpus, launch, launch_command, visible_gpus
from modelyard.finetune._owner import check_alias_on_pass, check_registry
from modelyard.finetune._pipeline import (
    FinetuneOutcome,
    Prepared,
    Reporter,
    check_judges,
    checkpoint_dir,
    prepare,
    rank,
    run_finetune,
)
from modelyard.finetune._slurm import SlurmOptions, sbatch_script

__all__ = [
    "FinetuneConfig",
    "FinetuneInterrupted",
    "FinetuneOutcome",
    "Prepared",
    "Reporter",
    "SlurmOptions",
    "check_alias_on_pass",
    "check_evaluation",
    "check_gpus",
    "check_judges",
    "check_registry",
    "checkpoint_dir",
    "evaluate_rows",
    "evaluate_version",
    "launch",
    "launch_command",
    "load_config",
    "parse_config",
    "prepare",
    "rank",
    "resolve_base",
    "run_finetune",
    "sbatch_script",
    "visible_gpus",
]
