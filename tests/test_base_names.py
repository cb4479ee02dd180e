"""A base registered by name (`base create-tiny --name`) is usable as `base_model:` in a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from clihelp import modelyard
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.store import Store


def _config(project: Path, base_model: str, **training: int) -> Path:
    rows = synthetic_domain("it-support", 24, seed=0)
    for name, part in (("train.jsonl", rows[:16]), ("eval.jsonl", rows[16:])):
        (project / name).write_text("".join(json.dumps(r) + "\n" for r in part), "utf-8")
    config = {
        "base_model": base_model,
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "alpaca"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "seed": 0, **training},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
        "registry": {"model": "bank-intents"},
    }
    path = project / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def test_a_registered_base_name_resolves_and_is_not_registered_twice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(domain_corpus(DOMAINS, 200, seed=0)) + "\n", encoding="utf-8")
    out = tmp_path / "models" / "tiny"
    built = modelyard(
        "base", "create-tiny", "--corpus", str(corpus), "--out", str(out), "--steps", "4",
        "--name", "bank-tiny", home=home,
    )  # fmt: skip
    assert built.code == 0, built.err
    assert "registered as base 'bank-tiny': a finetune config can say `base_model: bank-tiny`" in (
        built.out
    )
    listed = modelyard("base", "list", "--json", home=home)
    assert listed.code == 0, listed.err
    assert [(b["name"], b["source"]) for b in json.loads(listed.out)] == [
        ("bank-tiny", str(out.resolve()))
    ]
    config = _config(tmp_path, "bank-tiny")
    checked = modelyard("finetune", "-c", str(config), "--check", "--json", home=home)
    assert checked.code == 0, checked.err
    assert json.loads(checked.out)["base_model"] == str(out.resolve())
    run = modelyard("finetune", "-c", str(config), "--json", home=home)
    assert run.code in (0, 1), run.err  # 1: the untrained tiny base may miss a gate
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        (base,) = store.list_base_models()
        assert base.name == "bank-tiny"
        (version,) = store.list_model_versions("bank-intents")
        assert version.base_model == "bank-tiny"


def test_base_help_promises_only_commands_that_exist(tmp_path: Path) -> None:
    r = modelyard("base", "--help", home=tmp_path)
    assert r.code == 0
    assert "register any" not in r.out and "create-tiny" in r.out


def test_missing_bases_and_corpora_are_bad_input_named_at_once(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    config = _config(tmp_path, "models/bank-tiny")  # a typo'd local path, not a hub id
    r = modelyard("finetune", "-c", str(config), "--check", home=tmp_path / "home")
    assert r.code == 2, r.err
    assert "base model directory" in r.err and "does not exist" in r.err
    assert "hub" not in r.err.split(".")[0] and "Traceback" not in r.err
    corpus = modelyard(
        "base", "create-tiny", "--corpus", str(tmp_path / "nope.txt"), "--out",
        str(tmp_path / "b"), home=tmp_path / "home",
    )  # fmt: skip
    validate = modelyard(
        "data", "validate", str(tmp_path / "nope.jsonl"), "--format", "alpaca",
        home=tmp_path / "home",
    )  # fmt: skip
    assert (corpus.code, validate.code) == (2, 2), (corpus.err, validate.err)
    assert "nope.txt" in corpus.err and "nope.jsonl" in validate.err


def test_a_registered_base_keeps_its_name_and_its_weights(tmp_path: Path) -> None:
    """A name registered for weights elsewhere is refused before pretraining, and
    ``--overwrite`` of a registered base's directory with other weights leaves it as it was
    (the versions trained on it name those bytes); the same weights built again are fine."""
    home = tmp_path / "home"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(domain_corpus(DOMAINS, 200, seed=0)) + "\n", encoding="utf-8")
    out = tmp_path / "models" / "tiny"

    def build(where: Path, *args: str) -> Any:
        return modelyard("base", "create-tiny", "--corpus", str(corpus), "--out", str(where),
                         "--steps", "2", *args, home=home)  # fmt: skip

    assert build(out, "--name", "bank-tiny").code == 0
    weights = (out / "model.safetensors").read_bytes()
    taken = build(tmp_path / "other", "--name", "bank-tiny")
    assert taken.code == 1, taken.err
    assert f"base model 'bank-tiny' is registered already, for the weights in {out}" in taken.err
    assert "pretraining" not in taken.err and not (tmp_path / "other").exists()
    replaced = build(out, "--overwrite", "--seed", "5")
    assert replaced.code == 1, replaced.err
    assert "holds the weights of registered base 'bank-tiny', and the new ones differ" in (
        replaced.err
    )
    assert (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # nothing left beside it
    again = build(out, "--overwrite", "--name", "bank-tiny", "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["path"] == str(out)
    assert (out / "model.safetensors").read_bytes() == weights
