"""``modelyard finetune --gpus N``: the same config on N GPUs of this machine, one process each.

The command starts ``torchrun`` (``python -m torch.distributed.run``, so the torch of this
environment) with N processes on this node; each runs ``modelyard finetune -c CONFIG``.
The Trainer sees the processes and shards the work: DDP for LoRA and QLoRA, FSDP for full
fine-tuning (``training.distributed``, see ``modelyard.training.plan_training``). Rank 0
registers, as under any torchrun.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelyard.errors import ConfigError


def launch_command(
    config_path: Path, gpus: int, *, resume: bool = False, json_out: bool = False
) -> list[str]:
    """The argv that runs ``config_path`` on ``gpus`` GPUs of this machine."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node: a local rendezvous on a free port
        f"--nproc-per-node={gpus}",
        "-m",
        "modelyard",
        "finetune",
        "-c",
        str(config_path.resolve()),
    ]
    if resume:
        command.append("--resume")
    if json_out:
        command.append("--json")
    return command


def check_gpus(gpus: int, visible: int) -> None:
    """Refuse ``--gpus`` beyond the CUDA GPUs this process can see."""
    if gpus < 1:
        raise ConfigError("--gpus must be at least 1", field="gpus")
    if gpus > visible:
        raise ConfigError(
            f"--gpus {gpus} needs {gpus} CUDA GPUs, and this machine has {visible}",
            hint="Lower --gpus, or leave it out to train in this process (on the CPU when "
            "there is no GPU); CUDA_VISIBLE_DEVICES limits which GPUs are seen.",
            field="gpus",
        )


def visible_gpus() -> int:
    """CUDA GPUs this process can see (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch(config_path: Path, gpus: int, *, resume: bool, json_out: bool) -> int:
    """Run the config on ``gpus`` GPUs and wait; the launcher's exit code."""
    check_gpus(gpus, visible_gpus())
    command = launch_command(config_path, gpus, resume=resume, json_out=json_out)
    return subprocess.run(command, check=False).returncode
