"""``modelyard finetune --slurm``: an sbatch script that runs the same config with torchrun.

One task per node; each task starts ``torchrun`` with one process per GPU and
rendezvous on the first node of the allocation. Every process runs the same
``modelyard finetune -c CONFIG``; rank 0 writes to the store, so the store URL
and artifacts path must be reachable from every node (a shared filesystem or
PostgreSQL).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import ConfigError


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 8
    job_name: str = "modelyard-finetune"
    port: int = 29500


def sbatch_script(config_path: Path, options: SlurmOptions, env: dict[str, str]) -> str:
    """The script text; ``env`` holds the modelyard settings every node must share."""
    if options.nodes < 1 or options.gpus_per_node < 1:
        raise ConfigError("--nodes and --gpus-per-node must be at least 1")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --nodes={options.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={options.gpus_per_node}",
        f"#SBATCH --cpus-per-task={options.cpus_per_task}",
        f"#SBATCH --time={options.time}",
        "#SBATCH --output=%x-%j.out",
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    lines += [
        "# Written by `modelyard finetune --slurm`; submit with: sbatch THIS_FILE",
        "set -euo pipefail",
        *(f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())),
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "srun torchrun \\",
        '  --nnodes="$SLURM_NNODES" \\',
        f"  --nproc-per-node={options.gpus_per_node} \\",
        '  --rdzv-id="$SLURM_JOB_ID" \\',
        "  --rdzv-backend=c10d \\",
        f'  --rdzv-endpoint="$HEAD_NODE:{options.port}" \\',
        f"  -m modelyard finetune -c {shlex.quote(str(config_path.resolve()))}",
        "",
    ]
    return "\n".join(lines)
