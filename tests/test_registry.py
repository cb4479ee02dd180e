"""The governed registry from the outside: lineage, cards, plain export, safe import, archive."""

from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

import modelyard as modelyard_package
from clihelp import modelyard
from modelyard import registry
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base, weight_hashes
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.errors import ArtifactIntegrityError
from modelyard.errors import Conflict as ConflictError
from modelyard.store import ModelVersion, Store
from tinymodels import WEIGHTS, random_adapter, register_adapter, tamper

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}


def _store(home: Path) -> Store:
    return Store.open(f"sqlite:///{home / 'store.db'}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A home holding helpdesk:1 (an adapter, from `modelyard finetune`), and its base."""
    root = tmp_path_factory.mktemp("registry")
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), root / "base", **QUICK_BASE).path
    rows = synthetic_domain("it-support", 24, seed=0)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    config = {
        "base_model": str(base),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "method": {"r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 3},
        "registry": {"model": "helpdesk", "description": "Routes IT tickets."},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    home = root / "home"
    r = modelyard("finetune", "-c", str(root / "config.yaml"), home=home)
    assert r.code == 0, r.err
    config["method"] = {"type": "full"}
    config["training"]["learning_rate"] = 1e-4
    config["registry"] = {"model": "helpdesk-full"}
    (root / "full.yaml").write_text(yaml.safe_dump(config))
    r = modelyard("finetune", "-c", str(root / "full.yaml"), home=home)
    assert r.code == 0, r.err
    return {"home": home, "base": base, "root": root}


@pytest.fixture
def home(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the trained home, for tests that change it."""
    copy = tmp_path / "home"
    shutil.copytree(trained["home"], copy)
    return copy


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}


def test_show_json_and_lineage_tree(trained: dict[str, Path]) -> None:
    home = trained["home"]
    r = modelyard("registry", "show", "helpdesk:1", "--json", home=home)
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    lineage = shown["lineage"]
    assert lineage["dataset"]["name"] == "train" and len(lineage["dataset"]["digest"]) == 64
    assert lineage["base_model"]["weights"]
    assert lineage["config"]["training"]["max_steps"] == 2
    assert lineage["environment"]["packages"]["transformers"]
    r = modelyard("registry", "lineage", "helpdesk:1", home=home)
    assert r.code == 0, r.err
    assert "helpdesk:1" in r.out and lineage["dataset"]["digest"] in r.out
    assert "base_model" in r.out and "run " in r.out


def test_model_card(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "card.md"
    r = modelyard("registry", "card", "helpdesk:1", "--out", str(out), home=trained["home"])
    assert r.code == 0, r.err
    card = out.read_text(encoding="utf-8")
    for section in ("# helpdesk:1", "## Intended use", "## Data", "## Training", "## Evaluation"):
        assert section in card
    assert "Routes IT tickets." in card and "## Limitations" in card and "## Lineage" in card
    assert "exact_match" in card


def test_export_loads_with_plain_peft(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "export"
    r = modelyard("registry", "export", "helpdesk:1", "--out", str(out), home=trained["home"])
    assert r.code == 0, r.err
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    # Only vanilla transformers + peft, in a fresh interpreter: no modelyard code at all.
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from peft import PeftConfig, PeftModel\n"
        "cfg = PeftConfig.from_pretrained(sys.argv[1])\n"
        "base = AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path)\n"
        "model = PeftModel.from_pretrained(base, sys.argv[1])\n"
        "ids = torch.tensor([[1, 2, 3]])\n"
        "print(float(model(ids).logits.abs().sum()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True, text=True, timeout=300, env=_clean_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) > 0
    r = modelyard("registry", "export", "helpdesk:1", "--out", str(out), home=trained["home"])
    assert r.code == 2 and "not empty" in r.err


def test_full_export_loads_with_plain_transformers(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    r = modelyard("registry", "export", "helpdesk-full:1", "--out", str(out), home=trained["home"])
    assert r.code == 0, r.err
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tok('### Instruction:', return_tensors='pt').input_ids\n"
        "print(model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] > ids.shape[1])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True, text=True, timeout=300, env=_clean_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
    with _store(trained["home"]) as store:
        assert store.get_model_version("helpdesk-full", 1).kind == "full"


def test_tags_are_set_removed_and_audited(home: Path) -> None:
    r = modelyard("registry", "tag", "helpdesk:1", "team=it", "ticket=OPS-7", home=home)
    assert r.code == 0, r.err
    r = modelyard("registry", "tag", "helpdesk", "--remove", "ticket", "--json", home=home)
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"ref": "helpdesk:1", "tags": {"team": "it"}}
    r = modelyard("registry", "tag", "helpdesk:1", "oops", home=home)
    assert r.code == 2 and "KEY=VALUE" in r.err
    with _store(home) as store:
        assert store.get_model_version("helpdesk", 1).tags == {"team": "it"}
        events = store.list_audit_events(action="model_version.tagged")
        assert [e.subject for e in events] == ["helpdesk:1", "helpdesk:1"]


def test_archived_version_takes_no_alias(home: Path) -> None:
    assert modelyard("registry", "archive", "helpdesk", "1", home=home).code == 0
    r = modelyard("registry", "alias", "helpdesk", "challenger", "1", home=home)
    assert r.code != 0 and "archived" in r.err
    with _store(home) as store:
        assert store.get_model_version("helpdesk", 1).status == "archived"


def test_tampered_artifact_is_refused_and_audited(home: Path, tmp_path: Path) -> None:
    with _store(home) as store:
        digest = store.get_model_version("helpdesk", 1).artifact_digest
    weights = next((home / "artifacts").rglob(f"{digest}/files/adapter_model.safetensors"))
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = modelyard("registry", "export", "helpdesk:1", "--out", str(tmp_path / "x"), home=home)
    assert r.code != 0 and "Traceback" not in r.err
    assert "adapter_model.safetensors" in r.err
    with _store(home) as store:
        events = store.list_audit_events(action="artifact.verification_failed")
        assert [e.subject for e in events] == ["helpdesk:1"]


# --- import -------------------------------------------------------------------------


def _peft_adapter(base: Path, out: Path, **lora: Any) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **lora)
    get_peft_model(model, config).save_pretrained(out)
    return out


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _artifact_blobs(home: Path) -> list[Path]:
    return list((home / "artifacts" / "sha256").glob("??/*"))


def test_import_a_clean_adapter(home: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    adapter = _peft_adapter(trained["base"], tmp_path / "outside")
    r = modelyard(
        "registry", "import", str(adapter), "--name", "outside", "--base-model",
        str(trained["base"]), "--json", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["version"]["model"] == "outside" and result["version"]["version"] == 1
    assert {f["path"] for f in result["report"]["files"]} >= {"adapter_model.safetensors"}


@pytest.mark.parametrize(
    "case",
    ["pickle", "remote_code", "bad_target", "traversal", "zip_bomb", "deep_json", "dora", "nan"],
)
def test_refused_import_leaves_nothing_but_an_audit_event(
    home: Path, trained: dict[str, Path], tmp_path: Path, case: str
) -> None:
    source = tmp_path / "outside"
    if case == "pickle":
        _peft_adapter(trained["base"], source)
        (source / "adapter_model.safetensors").unlink()
        (source / "adapter_model.bin").write_bytes(pickle.dumps(_Evil()))
        extra = ["--allow-pickle"]
    elif case == "remote_code":
        _peft_adapter(trained["base"], source)
        config = json.loads((source / "adapter_config.json").read_text())
        config["auto_map"] = {"AutoModel": "evil.Model"}
        (source / "adapter_config.json").write_text(json.dumps(config))
        extra = []
    elif case == "bad_target":
        _peft_adapter(trained["base"], source)
        config = json.loads((source / "adapter_config.json").read_text())
        config["target_modules"] = ["no_such_proj"]
        (source / "adapter_config.json").write_text(json.dumps(config))
        extra = []
    elif case == "zip_bomb":  # 64 MiB of zeros in a ~64 KiB zip: refused past 16 MiB
        import zipfile

        source = tmp_path / "bomb.zip"
        with (
            zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as zf,
            zf.open("adapter_model.safetensors", "w") as out,
        ):
            for _ in range(64):
                out.write(bytes(1 << 20))
        extra = []
    elif case == "deep_json":
        _peft_adapter(trained["base"], source)
        (source / "extra.json").write_text("[" * 100_000 + "]" * 100_000)
        extra = []
    elif case in ("dora", "nan"):
        _peft_adapter(trained["base"], source)
        config = json.loads((source / "adapter_config.json").read_text())
        config.update({"use_dora": True} if case == "dora" else {"lora_alpha": float("nan")})
        (source / "adapter_config.json").write_text(json.dumps(config))
        extra = []
    else:
        import tarfile

        _peft_adapter(trained["base"], tmp_path / "ok")
        source = tmp_path / "evil.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tmp_path / "ok" / "adapter_config.json", arcname="../adapter_config.json")
        extra = []
    blobs_before = _artifact_blobs(home)
    r = modelyard(
        "registry", "import", str(source), "--name", "outside", "--base-model",
        str(trained["base"]), *extra, home=home,
    )  # fmt: skip
    assert r.code == 1, (r.code, r.err)
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    with _store(home) as store:
        assert "outside" not in {m.name for m in store.list_registered_models()}
        refused = store.list_audit_events(action="artifact.import_refused")
        assert len(refused) == 1
    assert _artifact_blobs(home) == blobs_before
    assert not list((home / "artifacts" / "tmp").glob("*import*"))


def test_import_on_a_fresh_home(trained: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    assert modelyard("init", home=home).code == 0
    assert not (home / "artifacts" / "tmp").exists()  # created when an import needs it
    adapter = _peft_adapter(trained["base"], tmp_path / "outside")
    r = modelyard(
        "registry", "import", str(adapter), "--name", "outside", "--base-model",
        str(trained["base"]), home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert not list((home / "artifacts" / "tmp").iterdir())  # nothing left behind


def test_import_limits_are_flags(home: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    adapter = _peft_adapter(trained["base"], tmp_path / "outside")
    r = modelyard(
        "registry", "import", str(adapter), "--name", "outside", "--base-model",
        str(trained["base"]), "--max-files", "1", home=home,
    )  # fmt: skip
    assert r.code == 1 and "limit of 1 files" in r.err and "--max-files" in r.err, r.err
    r = modelyard(
        "registry", "import", str(adapter), "--name", "outside", "--base-model",
        str(trained["base"]), "--max-bytes", "0", home=home,
    )  # fmt: skip
    assert r.code == 2, r.err  # a usage error: limits cannot be switched off


def test_a_refused_version_row_leaves_no_blob_and_no_model(
    opened: tuple[Store, ArtifactStore], trained: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    store, artifacts = opened
    adapter = _peft_adapter(trained["base"], tmp_path / "outside")
    blobs = {ref.digest for ref in artifacts.list()}

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ConflictError("version numbering clashed with a parallel import")

    monkeypatch.setattr(store, "create_model_version", refuse)
    with pytest.raises(ConflictError):
        registry.import_version(
            store, artifacts, adapter, name="clash", base_model=str(trained["base"])
        )
    assert {ref.digest for ref in artifacts.list()} == blobs  # the new blob was removed
    assert "clash" not in {m.name for m in store.list_registered_models()}
    assert not list((artifacts.root / "tmp").iterdir())


def test_six_parallel_cli_imports_into_one_model_keep_every_version(
    store_url: str, trained: dict[str, Path], tmp_path: Path
) -> None:
    """Six `modelyard registry import` processes into one new model at once (issue 12): each
    gets its own version, or a clear conflict error; no orphan blob, empty model or temp file."""
    import torch

    adapters = []
    for i in range(6):
        torch.manual_seed(i)  # distinct weights: six blobs, not one shared digest
        adapters.append(_peft_adapter(trained["base"], tmp_path / f"adapter-{i}"))
    home = tmp_path / "home"
    env = {"MODELYARD_STORE_URL": store_url}
    assert modelyard("init", home=home, env=env).code == 0
    flags = ["--name", "parallel", "--base-model", str(trained["base"])]

    def import_(adapter: Path) -> tuple[int, str, str]:
        r = modelyard("registry", "import", str(adapter), *flags, home=home, env=env, timeout=300)
        return r.code, r.out, r.err

    with ThreadPoolExecutor(len(adapters)) as pool:  # six processes at once
        results = list(pool.map(import_, adapters))
    for code, _out, err in results:
        assert "Traceback" not in err, err
        assert code == 0 or (code == 1 and "conflict" in err.lower()), err
    imported = sum(code == 0 for code, _, _ in results)
    assert imported >= 1
    with Store.open(store_url, migrate=False) as store:
        versions = store.list_model_versions("parallel")
    assert sorted(v.version for v in versions) == list(range(1, imported + 1))
    assert len({v.artifact_digest for v in versions}) == imported
    r = modelyard("doctor", "--json", "--stale", "0", home=home,
                  env={"MODELYARD_STORE_URL": store_url})  # fmt: skip
    report = json.loads(r.out)
    assert r.code == 0 and report["problems"] == 0, report


# --- lineage --------------------------------------------------------------------------


def test_trained_lineage_holds_what_the_docs_promise(trained: dict[str, Path]) -> None:
    with _store(trained["home"]) as store:
        version = store.get_model_version("helpdesk", 1)
        lineage = version.lineage
        base = store.get_base_model(version.base_model)
        datasets = {d.name: d for d in store.list_datasets()}
        assert version.run_id and store.get_run(version.run_id).status == "finished"
    # The base by name, source and the sha256 of each weight file, as they are on disk.
    assert lineage["base_model"] == {
        "name": base.name,
        "source": str(trained["base"].resolve()),
        "weights": weight_hashes(trained["base"]),
    }
    assert lineage["base_model"]["weights"] == dict(base.weight_hashes)
    # The training and evaluation data by their registered digests, and their format.
    assert lineage["dataset"]["digest"] == datasets["train"].digest
    assert lineage["dataset"]["eval_digest"] == datasets["train-eval"].digest
    assert lineage["dataset"]["format"] == "alpaca"
    assert lineage["prompt_template"] == registry.template_name(lineage) == "alpaca"
    assert lineage["run_id"] == version.run_id
    assert lineage["config"]["method"]["r"] == 4 and lineage["config"]["registry"]["model"] == (
        "helpdesk"
    )
    assert lineage["seed"] == lineage["config"]["training"]["seed"]
    assert isinstance(lineage["seed"], int)
    env = lineage["environment"]
    assert env["python"] == platform.python_version()
    assert env["modelyard"] == modelyard_package.__version__
    assert env["packages"]["torch"] and env["packages"]["peft"]
    assert env["threads"] >= 1 and env["device"] in ("cpu", "cuda")
    assert "git_commit" in lineage and lineage["parent"] is None
    assert "imported_from" not in lineage


def test_lineage_record_of_a_trained_and_an_imported_version(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _store(trained["home"]) as store:
        base = store.get_base_model(store.get_model_version("helpdesk", 1).base_model)
    base_part = {"name": base.name, "source": base.source, "weights": dict(base.weight_hashes)}
    monkeypatch.chdir(tmp_path)  # not a git checkout: no commit to record
    trained_record = registry.lineage_record(
        base,
        "classification",
        run_id="run-1",
        dataset={"name": "tickets", "digest": "ab" * 32},
        config={"training": {"seed": 7}},
        seed=7,
        env={"python": "3.x"},
        parent="helpdesk:1",
    )
    assert trained_record == {
        "base_model": base_part,
        "prompt_template": "classification",
        "run_id": "run-1",
        "dataset": {"name": "tickets", "digest": "ab" * 32},
        "config": {"training": {"seed": 7}},
        "seed": 7,
        "environment": {"python": "3.x"},
        "git_commit": None,
        "parent": "helpdesk:1",
    }
    # Without an environment given, this process's is recorded.
    measured = registry.lineage_record(base, "alpaca", run_id="run-2")["environment"]
    assert measured["python"] == platform.python_version() and measured["packages"]["torch"]
    imported = registry.lineage_record(
        base, "chat", imported_from="/outside/adapter", safety={"files": []}
    )
    assert imported == {
        "base_model": base_part,
        "prompt_template": "chat",
        "imported_from": "/outside/adapter",
        "safety": {"files": []},
    }


# --- export and import keep the prompt template ----------------------------------------


@pytest.fixture
def opened(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, ArtifactStore]]:
    """The private home's store and artifacts, opened in this process (with its audit key)."""
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    with _store(home) as store:
        yield store, ArtifactStore(home / "artifacts")


def _templated_version(
    store: Store, artifacts: ArtifactStore, base_dir: Path, template: str, out: Path
) -> ModelVersion:
    """A new model ``classifier`` whose version 1 (a random adapter) records ``template``."""
    base = store.get_base_model(store.get_model_version("helpdesk", 1).base_model)
    adapter = random_adapter(base_dir, out, seed=1, target_modules=["q_proj", "v_proj"])
    store.create_registered_model("classifier")
    return store.create_model_version(
        "classifier",
        kind="adapter",
        artifact_digest=artifacts.put_dir(adapter, kind="adapter").digest,
        base_model=base.name,
        run_id=None,
        lineage=registry.lineage_record(base, template),
        metrics={},
    )


@pytest.mark.parametrize("template", ["classification", "chat-fallback"])
def test_export_then_import_keeps_the_prompt_template(
    opened: tuple[Store, ArtifactStore], trained: dict[str, Path], tmp_path: Path, template: str
) -> None:
    store, artifacts = opened
    version = _templated_version(store, artifacts, trained["base"], template, tmp_path / "a")
    out = registry.export_version(store, artifacts, version.ref, tmp_path / "export")
    written = json.loads((out / "lineage.json").read_text(encoding="utf-8"))
    assert written["prompt_template"] == template and written["ref"] == "classifier:1"
    result = registry.import_version(
        store, artifacts, out, name="reimported", base_model=version.base_model
    )
    stored = store.get_model_version("reimported", 1)
    assert stored.lineage["prompt_template"] == template
    assert registry.template_name(stored.lineage) == template
    # The imported version marks where it came from, with its safety report.
    assert stored.lineage["imported_from"] == str(out)
    assert stored.lineage["safety"] == json.loads(json.dumps(result.report.to_dict()))
    assert stored.lineage["base_model"] == version.lineage["base_model"]
    assert "run_id" not in stored.lineage and stored.run_id is None


@pytest.mark.parametrize("lineage_json", [None, '["a list"]', '{"prompt_template": "klingon"}'])
def test_import_without_a_usable_lineage_json_gets_the_default_template(
    opened: tuple[Store, ArtifactStore],
    trained: dict[str, Path],
    tmp_path: Path,
    lineage_json: str | None,
) -> None:
    store, artifacts = opened
    version = _templated_version(
        store, artifacts, trained["base"], "classification", tmp_path / "a"
    )
    out = registry.export_version(store, artifacts, version.ref, tmp_path / "export")
    if lineage_json is None:
        (out / "lineage.json").unlink()
    else:
        (out / "lineage.json").write_text(lineage_json, encoding="utf-8")
    registry.import_version(store, artifacts, out, name="reimported", base_model=version.base_model)
    stored = store.get_model_version("reimported", 1)
    assert stored.lineage["prompt_template"] == registry.DEFAULT_TEMPLATE == "alpaca"


def test_cli_export_then_import_keeps_the_prompt_template(
    home: Path, trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    with _store(home) as store:
        version = _templated_version(
            store,
            ArtifactStore(home / "artifacts"),
            trained["base"],
            "classification",
            tmp_path / "a",
        )
    out = tmp_path / "export"
    r = modelyard("registry", "export", version.ref, "--out", str(out), home=home)
    assert r.code == 0, r.err
    r = modelyard(
        "registry", "import", str(out), "--name", "reimported", "--base-model",
        version.base_model, home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    r = modelyard("registry", "show", "reimported:1", "--json", home=home)
    assert r.code == 0, r.err
    lineage = json.loads(r.out)["lineage"]
    assert lineage["prompt_template"] == "classification"
    assert lineage["imported_from"] == str(out)


# --- verified files ---------------------------------------------------------------------


@pytest.fixture
def adapter_world(
    trained: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[Store, ArtifactStore, ModelVersion, Path]]:
    """A fresh store (its SQLite file in its own directory) with bot:1, a random adapter."""
    (tmp_path / "db").mkdir()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    adapter = random_adapter(trained["base"], tmp_path / "adapter", seed=3)
    with Store.open(f"sqlite:///{tmp_path / 'db' / 'store.db'}") as store:
        store.register_base_model("tiny", str(trained["base"]), {})
        store.create_registered_model("bot")
        yield store, artifacts, register_adapter(store, artifacts, adapter), adapter


def test_verified_files_refuse_altered_bytes_and_audit_it(
    adapter_world: tuple[Store, ArtifactStore, ModelVersion, Path],
) -> None:
    store, artifacts, version, adapter = adapter_world
    files = registry.verified_files(store, artifacts, version, by="registry-test")
    assert (files / WEIGHTS).read_bytes() == (adapter / WEIGHTS).read_bytes()
    assert not store.list_audit_events(action="artifact.verification_failed")
    tamper(artifacts, version.artifact_digest)
    with pytest.raises(ArtifactIntegrityError, match=WEIGHTS):
        registry.verified_files(store, artifacts, version, by="registry-test")
    events = store.list_audit_events(action="artifact.verification_failed")
    assert len(events) == 1
    assert events[0].subject == "bot:1"
    assert events[0].payload["by"] == "registry-test"
    assert events[0].payload["digest"] == version.artifact_digest
    assert WEIGHTS in events[0].payload["reason"]


def test_refusal_stands_when_the_store_cannot_record_it(
    adapter_world: tuple[Store, ArtifactStore, ModelVersion, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, artifacts, version, _ = adapter_world
    tamper(artifacts, version.artifact_digest)
    # The store's database is gone: no new connection can open it, so no event is written.
    shutil.rmtree(tmp_path / "db")
    store.close()
    with caplog.at_level(logging.ERROR), pytest.raises(ArtifactIntegrityError, match=WEIGHTS):
        registry.verified_files(store, artifacts, version, by="registry-test")
    assert "could not audit the refused artifact" in caplog.text
    assert "unable to open database file" in caplog.text
