"""`modelyard finetune` and `modelyard evaluate`, as a data scientist runs them.

Quick tests use a structurally complete but barely trained base; the slow test
is the issue's proof: from `modelyard base create-tiny` to an adapter with exact
match >= 0.9 that beats its base by 0.3, gated and registered, then a worse
version that the gates stop.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from clihelp import modelyard
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, split_rows, synthetic_domain
from modelyard.store import Store

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _store(home: Path) -> Store:
    return Store.open(f"sqlite:///{home / 'store.db'}")


def _nothing_registered(home: Path) -> bool:
    if not (home / "store.db").exists():
        return True
    with _store(home) as store:
        return not store.list_registered_models() and not store.list_datasets()


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    return create_tiny_base(corpus, tmp_path_factory.mktemp("ft") / "base", **QUICK_BASE).path


@pytest.fixture
def project(tmp_path: Path, quick_base: Path) -> Path:
    """A project directory with data and a quick config (3 optimizer steps)."""
    rows = synthetic_domain("it-support", 40, seed=0)
    _write_jsonl(tmp_path / "train.jsonl", rows[:30])
    _write_jsonl(tmp_path / "eval.jsonl", rows[30:])
    config = {
        "base_model": str(quick_base),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "alpaca"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 3, "batch_size": 4, "seed": 0},
        "evaluation": {"metrics": ["exact_match", "token_f1"], "max_new_tokens": 4},
        "registry": {"model": "helpdesk"},
    }
    _write_config(tmp_path / "config.yaml", config)
    return tmp_path


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _edit(project: Path, **sections: dict[str, Any]) -> Path:
    config = yaml.safe_load((project / "config.yaml").read_text(encoding="utf-8"))
    for section, values in sections.items():
        if isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return _write_config(project / "config.yaml", config)


# --- the config is checked before anything runs --------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"trainng": {"seed": 1}}, "unknown config key 'trainng'.*Did you mean 'training'"),
        ({"training": {"learning_rat": 0.1}}, "'training.learning_rat'.*'learning_rate'"),
        ({"method": {"type": "adapter"}}, "method.type"),
        ({"data": {"train": "train.jsonl", "eval_fraction": 1.5}}, "data.eval_fraction"),
        ({"evaluation": {"gates": ["exact_macth >= 0.9"]}}, "exact_macth"),
        ({"evaluation": {"metrics": ["bleu"]}}, "bleu"),
        ({"method": {"type": "qlora"}}, "qlora.*(CUDA|bitsandbytes)"),
        ({"data": {"train": "train.jsonl", "max_seq_len": 100000}}, "max_seq_len 100000"),
        ({"method": {"r": True}}, "'method.r': must be a number, not true"),
        ({"training": {"max_steps": True}}, "'training.max_steps': must be a number, not true"),
        ({"method": {"r": 100000}}, "method.r 100000 is above the base model's hidden size"),
        ({"base_model": "./no-such-base"}, "no-such-base"),
    ],
)
def test_bad_config_fails_before_training_and_registers_nothing(
    project: Path, tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    config = yaml.safe_load((project / "config.yaml").read_text(encoding="utf-8"))
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    _write_config(project / "config.yaml", config)
    home = tmp_path / "home"
    r = modelyard("finetune", "-c", str(project / "config.yaml"), home=home)
    assert r.code == 2 if "no-such-base" not in expected else r.code != 0, r.err
    assert "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert re.search(expected, r.err), r.err
    assert _nothing_registered(home)


def test_bad_rows_are_named_by_their_number_in_data_train_split_or_not(
    project: Path, tmp_path: Path
) -> None:
    """A row too long for max_seq_len, or one the template cannot render, is named by its
    line in data.train, not by its place among the rows left after the held-out split."""
    rows = [json.loads(line) for line in (project / "train.jsonl").read_text().splitlines()]
    train, _ = split_rows(rows, 0.1, seed=0)
    long_row = max(rows.index(row) for row in train) + 1  # a training row, late in the file
    assert train.index(rows[long_row - 1]) + 1 != long_row  # the old numbering would differ
    rows[long_row - 1] = {**rows[long_row - 1], "output": "word " * 400}
    _write_jsonl(project / "train.jsonl", rows)
    _edit(project, data={"train": "train.jsonl", "eval_fraction": 0.1, "format": "alpaca",
                         "max_seq_len": 128})  # fmt: skip
    r = modelyard("finetune", "-c", str(project / "config.yaml"), "--check", home=tmp_path / "h")
    assert r.code == 2 and f"(data.train rows {long_row})" in r.err, r.err

    rows[long_row - 1] = {"instruction": "no output"}
    _write_jsonl(project / "train.jsonl", rows)
    r = modelyard("finetune", "-c", str(project / "config.yaml"), "--check", home=tmp_path / "h")
    assert r.code == 2 and f"data.train row {long_row}:" in r.err, r.err


@pytest.mark.parametrize(
    ("train", "fmt", "expected"),
    [
        ("", "alpaca", "no rows"),
        ('{"text": "no label here"}\n', "classification", "label"),
        ('{"instruction": "x"}\n', "alpaca", "output"),
        ("not json\n", "alpaca", "line 1"),
        (None, "alpaca", "bad.jsonl"),  # no such file
    ],
)
def test_bad_data_fails_before_training(
    project: Path, tmp_path: Path, train: str | None, fmt: str, expected: str
) -> None:
    if train is not None:
        (project / "bad.jsonl").write_text(train, encoding="utf-8")
    _edit(project, data={"train": "bad.jsonl", "eval": "bad.jsonl", "format": fmt})
    home = tmp_path / "home"
    r = modelyard("finetune", "-c", str(project / "config.yaml"), home=home)
    # bad input, as docs/cli.md promises: exit 2, not the 1 of a failed gate
    assert r.code == 2 and "Traceback" not in r.err, (r.code, r.err)
    assert expected in r.err.lower(), r.err
    assert _nothing_registered(home)


def test_missing_config_file(tmp_path: Path) -> None:
    r = modelyard("finetune", "-c", str(tmp_path / "nope.yaml"), home=tmp_path / "home")
    assert r.code == 2 and "does not exist" in r.err


def test_check_validates_without_training(project: Path, tmp_path: Path) -> None:
    r = modelyard(
        "finetune", "-c", str(project / "config.yaml"), "--check", "--json", home=tmp_path / "h"
    )
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["train_rows"] == 30 and summary["eval_rows"] == 10
    assert summary["template"] == "alpaca"


def test_slurm_writes_a_torchrun_sbatch_script(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "job.sbatch"
    r = modelyard(
        "finetune", "-c", str(project / "config.yaml"), "--slurm", "--nodes", "4",
        "--gpus-per-node", "8", "--partition", "gpu", "--out", str(out), home=tmp_path / "h",
    )  # fmt: skip
    assert r.code == 0, r.err
    script = out.read_text(encoding="utf-8")
    assert "#SBATCH --nodes=4" in script and "#SBATCH --partition=gpu" in script
    assert "--nproc-per-node=8" in script and "-m modelyard finetune -c" in script
    assert "MODELYARD_STORE_URL=" in script
    checked = subprocess.run(["bash", "-n", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # four nodes and the home's SQLite file: a node elsewhere would not see it
    said = " ".join(r.err.split())
    assert "warning: the job registers into the SQLite file sqlite:///" in said
    assert "filesystem every node shares (else set MODELYARD_STORE_URL to PostgreSQL)" in said
    one = modelyard(
        "finetune", "-c", str(project / "config.yaml"), "--slurm", "--out", str(out),
        home=tmp_path / "h",
    )  # fmt: skip
    assert one.code == 0 and "warning" not in one.err, one.err


def test_evaluate_will_not_write_its_predictions_over_its_data(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "eval.jsonl", synthetic_domain("it-support", 2, seed=0))
    before = data.read_bytes()
    r = modelyard("evaluate", "--model", "helpdesk:1", "--data", str(data),
                  "--predictions", str(data), home=tmp_path / "home")  # fmt: skip
    assert r.code == 2 and "is the --data file" in r.err and "Traceback" not in r.err, r.err
    assert data.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gate", "exact_match >> 0.9"], "gate 'exact_match >> 0.9'"),
        (["--gate", "exact_macth >= 0.9"], "exact_macth"),
        (["--metrics", " , "], "--metrics names no metric"),
        (["--metrics", "bleu"], "unknown metric 'bleu'"),
        (["--format", "alpacca"], "unknown dataset format 'alpacca'"),
    ],
)
def test_evaluate_checks_its_arguments_before_touching_the_store(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    data = _write_jsonl(tmp_path / "eval.jsonl", synthetic_domain("it-support", 2, seed=0))
    home = tmp_path / "home"
    r = modelyard("evaluate", "--model", "helpdesk:1", "--data", str(data), *args, home=home)
    assert r.code == 2, r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert expected in r.err, r.err
    # A typo leaves the fresh home as it was: no store file, nothing created.
    assert not (home / "store.db").exists() and not home.exists()


# --- runs ---------------------------------------------------------------------------


def test_finetune_registers_a_version_with_lineage_and_a_reproducible_adapter(
    project: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = modelyard("finetune", "-c", str(project / "config.yaml"), "--json", home=home)
    assert first.code == 0, first.err
    second = modelyard("finetune", "-c", str(project / "config.yaml"), "--json", home=home)
    assert second.code == 0, second.err
    a, b = json.loads(first.out), json.loads(second.out)
    assert (a["ref"], b["ref"]) == ("helpdesk:1", "helpdesk:2")
    assert set(a["metrics"]) >= {"exact_match", "token_f1"}
    with _store(home) as store:
        v1, v2 = store.list_model_versions("helpdesk")
        # Same config, data and seed: byte-identical adapter, hence the same artifact.
        assert v1.artifact_digest == v2.artifact_digest
        train = (project / "train.jsonl").read_text(encoding="utf-8").splitlines()
        canonical = "".join(json.dumps(json.loads(x), sort_keys=True) + "\n" for x in train)
        assert v1.lineage["dataset"]["digest"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert v1.lineage["prompt_template"] == "alpaca"
        assert v1.lineage["config"]["training"]["max_steps"] == 3
        assert v1.lineage["environment"]["packages"]["peft"]
        run = store.get_run(v1.run_id or "")
        assert run.status == "finished"
        assert [int(e["step"]) for e in run.metrics["history"] if "loss" in e] == [1, 2, 3]
        datasets = store.list_datasets("train")
        assert len(datasets) == 1 and datasets[0].report["rows"] == 30
    # Training leaves no scratch behind: runs and checkpoints are cleaned up.
    assert not any((home / "runs").glob("*")) if (home / "runs").exists() else True


@pytest.mark.slow
def test_finetune_under_torchrun_with_two_cpu_processes(project: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    home = tmp_path / "home"
    proc = subprocess.run(
        [torchrun, "--nproc-per-node=2", "--master-port=29533", "-m", "modelyard",
         "finetune", "-c", str(project / "config.yaml"), "--json"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**_clean_env(), "MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout)
    assert outcome["ref"] == "helpdesk:1"
    with _store(home) as store:
        assert [v.ref for v in store.list_model_versions("helpdesk")] == ["helpdesk:1"]


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}


# --- the proof: tiny base -> gated champion -> a worse version stopped ------------------


@pytest.mark.slow
def test_adapter_beats_base_and_gates_stop_a_worse_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(domain_corpus(DOMAINS, 2000, seed=0)) + "\n", encoding="utf-8")
    r = modelyard(
        "base", "create-tiny", "--corpus", str(corpus), "--out", str(tmp_path / "base"), home=home
    )
    assert r.code == 0, r.err
    rows = synthetic_domain("insurance-claims", 490, seed=0)
    _write_jsonl(tmp_path / "claims.jsonl", rows[:400])
    _write_jsonl(tmp_path / "claims-eval.jsonl", rows[400:])
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {
        "base_model": "./base",
        "data": {"train": "claims.jsonl", "eval": "claims-eval.jsonl", "format": "alpaca"},
        "method": {"type": "lora", "r": 8, "alpha": 32, "target_modules": "all-linear"},
        "training": {"epochs": 5, "learning_rate": 0.003, "seed": 0},
        "evaluation": {
            "metrics": ["exact_match", "token_f1"],
            "gates": ["exact_match >= 0.9", "not_worse_than: champion"],
            "max_new_tokens": 8,
        },
        "registry": {"model": "claims-router", "alias_on_pass": "champion"},
        "tracking": {"mlflow_uri": mlflow_uri, "experiment": "claims"},
    }
    _write_config(tmp_path / "good.yaml", config)
    r = modelyard("finetune", "-c", str(tmp_path / "good.yaml"), "--json", home=home, timeout=900)
    assert r.code == 0, r.err[-3000:]
    good = json.loads(r.out)
    assert good["metrics"]["exact_match"] >= 0.9, good
    assert good["metrics"]["exact_match"] >= good["base_metrics"]["exact_match"] + 0.3, good
    assert good["passed"] and good["alias"] == "champion"

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_uri).get_run(good["mlflow_run_id"])
    assert run.data.params["training.seed"] == "0"
    assert run.data.metrics["eval_exact_match"] == pytest.approx(good["metrics"]["exact_match"])
    assert run.data.tags["modelyard.run_id"] == good["run_id"]

    # Far too little training: registered with its verdicts, but the champion stays.
    config["training"] = {"max_steps": 2, "learning_rate": 0.003, "seed": 0}
    del config["tracking"]
    _write_config(tmp_path / "bad.yaml", config)
    r = modelyard("finetune", "-c", str(tmp_path / "bad.yaml"), home=home, timeout=900)
    assert r.code == 1, r.err[-3000:]
    assert "gates failed for claims-router:2" in r.err
    assert "FAIL" in r.out and "exact_match >= 0.9" in r.out
    with _store(home) as store:
        assert store.resolve_model_ref("claims-router@champion").version == 1
        bad = store.get_model_version("claims-router", 2)
        assert bad.metrics["gates"]["passed"] is False
        failed = [v["gate"] for v in bad.metrics["gates"]["verdicts"] if not v["passed"]]
        assert "exact_match >= 0.9" in failed and "not_worse_than: champion" in failed

    # `modelyard evaluate` scores any version with the template it trained with.
    r = modelyard(
        "evaluate", "--model", "claims-router@champion",
        "--data", str(tmp_path / "claims-eval.jsonl"), "--metrics", "exact_match",
        "--gate", "exact_match >= 0.9", "--json", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["metrics"]["exact_match"] == pytest.approx(
        good["metrics"]["exact_match"]
    )
