"""`modelyard finetune --gpus N` and `--slurm` on a machine without GPUs: the commands they
would run, the refusals, and what a CPU run records about its compute and cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import modelyard.finetune as finetune_package
from clihelp import modelyard
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.errors import ConfigError
from modelyard.finetune import _launch as launch_module
from modelyard.finetune import check_gpus, launch_command
from modelyard.store import Store

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpus")
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), root / "base", **QUICK_BASE)
    rows = synthetic_domain("it-support", 40, seed=0)
    for name, part in (("train", rows[:30]), ("eval", rows[30:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    config = {
        "base_model": str(base.path),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "gradient_checkpointing": True},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 4},
        "registry": {"model": "helpdesk"},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def test_the_launch_command_is_torchrun_with_one_process_per_gpu(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    command = launch_command(config, 4, resume=True, json_out=True)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=4" in command
    assert command[command.index("--nproc-per-node=4") + 1 :] == [
        "-m", "modelyard", "finetune", "-c", str(config.resolve()), "--resume", "--json",
    ]  # fmt: skip


def test_more_gpus_than_the_machine_has_are_refused() -> None:
    with pytest.raises(ConfigError, match="--gpus 2 needs 2 CUDA GPUs, and this machine has 0"):
        check_gpus(2, 0)
    check_gpus(2, 8)


def test_gpus_on_a_machine_without_gpus_is_one_clear_line(project: Path, tmp_path: Path) -> None:
    r = modelyard("finetune", "-c", str(project / "config.yaml"), "--gpus", "2", home=tmp_path)
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert "--gpus 2 needs 2 CUDA GPUs, and this machine has 0" in r.err
    assert not (tmp_path / "store.db").exists()


def test_gpus_starts_the_launcher_and_passes_its_exit_code(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two GPUs visible (described here), the command checks the config, then runs
    torchrun with two processes and waits for it."""
    from typer.testing import CliRunner

    from modelyard.cli import app

    ran: list[list[str]] = []

    def run(command: list[str], check: bool) -> Any:
        ran.append(command)
        return SimpleNamespace(returncode=3)

    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(finetune_package, "visible_gpus", lambda: 2)
    monkeypatch.setattr(launch_module, "visible_gpus", lambda: 2)
    monkeypatch.setattr(launch_module, "subprocess", SimpleNamespace(run=run))
    config = project / "config.yaml"
    r = CliRunner().invoke(app, ["finetune", "-c", str(config), "--gpus", "2", "--json"])
    assert r.exit_code == 3, r.output
    assert ran == [launch_command(config, 2, json_out=True)]


def test_slurm_asks_for_gpus_per_node_and_runs_the_same_command(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "job.sbatch"
    r = modelyard(
        "finetune", "-c", str(project / "config.yaml"), "--slurm", "--nodes", "2",
        "--gpus-per-node", "4", "--out", str(out), home=tmp_path / "h",
    )  # fmt: skip
    assert r.code == 0, r.err
    script = out.read_text(encoding="utf-8")
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --nodes=2" in script
    assert "--nproc-per-node=4" in script
    assert f"-m modelyard finetune -c {(project / 'config.yaml').resolve()}" in script


def test_a_cpu_run_records_its_precision_and_no_gpu_cost(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = modelyard(
        "finetune", "-c", str(project / "config.yaml"), "--json", home=home,
        env={"MODELYARD_GPU_HOUR_PRICE": "2.5"},
    )  # fmt: skip
    assert r.code == 0, r.err
    compute = json.loads(r.out)["training"]["compute"]
    assert compute["device"] == "cpu" and compute["precision"] == "fp32"
    assert compute["gradient_checkpointing"] is True
    assert compute["gpu_hours"] is None and compute["cost"] is None
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        (version,) = store.list_model_versions("helpdesk")
        assert version.lineage["compute"]["precision"] == "fp32"
        assert store.get_run(version.run_id or "").metrics["compute"]["device"] == "cpu"
    card = modelyard("registry", "card", "helpdesk:1", home=home)
    assert card.code == 0, card.err
    assert "Compute and cost" in card.out and "no GPU was held" in card.out
