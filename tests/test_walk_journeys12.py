"""What the newcomer of journeys 1 and 2 met following docs/finetune.md and docs/registry.md.

`modelyard finetune --check` said "config OK" for a config whose protected
``alias_on_pass`` no gate could ever earn, and the run then trained, registered and
exited 1; and a missing version or alias pointed at `modelyard registry list`, which
lists models, not a model's versions or aliases.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.store import Store
from tinymodels import QUICK_BASE
from worlds import fake_world


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def _config(tmp_path: Path, **evaluation: object) -> Path:
    base = create_tiny_base(domain_corpus(DOMAINS, 60, seed=0), tmp_path / "base", **QUICK_BASE)
    rows = synthetic_domain(DOMAINS[0], 12, seed=0)
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    config = {
        "base_model": str(base.path),
        "data": {"train": "train.jsonl", "format": "alpaca"},
        "training": {"max_steps": 1},
        "evaluation": {"metrics": ["exact_match"], **evaluation},
        "registry": {"model": "helpdesk", "alias_on_pass": "champion"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_check_refuses_a_protected_alias_on_pass_that_no_gate_can_earn(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)  # alias_on_pass: champion, and no evaluation.gates
    code, out, err = run(capsys, f"finetune -c {config} --check")
    assert code == 2 and "config OK" not in out
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith(
        "error: registry.alias_on_pass 'champion' is a protected alias, and the config has "
        "no evaluation.gates"
    )
    assert "evaluation.gates" in line.split(". ", 1)[1]  # what to do
    # with a gate, or an alias that is not protected, the same config is OK
    gated = _config(tmp_path / "gated", gates=["exact_match >= 0.5"])
    assert run(capsys, f"finetune -c {gated} --check")[0] == 0
    edited = yaml.safe_load(config.read_text(encoding="utf-8"))
    edited["registry"]["alias_on_pass"] = "staging"
    config.write_text(yaml.safe_dump(edited), encoding="utf-8")
    assert run(capsys, f"finetune -c {config} --check")[0] == 0


def test_a_missing_version_or_alias_says_how_to_list_that_models_own(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=2, endpoint=None)
        store.set_alias("bot", "staging", 1)
        store.set_alias("bot", "canary", 2)
    code, _, err = run(capsys, "registry show bot:9")
    assert code == 1
    assert err.strip() == (
        "error: model 'bot' has no version 9. List its versions with `modelyard registry list bot`."
    )
    code, _, err = run(capsys, "registry unalias bot challenger")
    assert code == 1
    assert (
        err.strip() == "error: model 'bot' has no alias 'challenger'. Its aliases: canary, staging."
    )
    code, _, err = run(capsys, "registry lineage nope")
    assert code == 1
    assert err.strip() == (  # not "List versions with `registry list`", which lists models
        "error: no registered model named 'nope'. List the registered models with "
        "`modelyard registry list`."
    )


def test_a_base_model_name_one_typo_from_a_registered_base_says_which(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`base_model: tinyy` went to the hub and came back as "cannot find base model 'tinyy'
    locally or on the hub": nothing said that `tiny` is registered, and no command lists
    the registered bases."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the old code asked the hub
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=1, endpoint=None)  # registers base 'tiny'
        store.register_base_model("qwen-small", "/models/qwen-small", {})
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"instruction": "Route it.", "output": "auto"}) + "\n", encoding="utf-8"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "base_model: tinyy\ndata: {train: train.jsonl}\nregistry: {model: helpdesk}\n",
        encoding="utf-8",
    )
    code, _, err = run(capsys, f"finetune -c {config} --check")
    assert code == 2
    assert err.strip() == (
        "error: base_model 'tinyy' is not a registered base. Did you mean 'tiny'? Registered "
        "bases: qwen-small, tiny; or give a local model directory or a hub model id."
    )


def test_registry_import_with_a_base_one_typo_from_a_registered_one_says_which(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`registry import --base-model tinyy` went to the hub and came back as a vague "cannot
    find base model" while finetune's `base_model: tinyy` named `tiny`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the old code asked the hub
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=1, endpoint=None)  # registers base 'tiny'
        store.register_base_model("qwen-small", "/models/qwen-small", {})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    code, _, err = run(
        capsys, f"registry import {adapter} --name helpdesk --base-model tinyy --tenant acme"
    )
    assert code == 2
    assert " ".join(err.split()) == (
        "error: --base-model 'tinyy' is not a registered base. Did you mean 'tiny'? Registered "
        "bases: qwen-small, tiny; or give a local model directory or a hub model id."
    )


def test_an_endpoints_name_given_for_a_model_names_the_model_it_serves(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``registry show support`` said only that no model is named so; ``registry card``
    alone named the model the endpoint serves."""
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=2)  # endpoint 'support' serving bot:1
    said = (
        "error: no registered model named 'support': 'support' is an endpoint, serving bot:1. "
        "Give its model's name, 'bot'."
    )
    for command in ("registry show support", "registry lineage support:1",
                    "registry alias support prod 1"):  # fmt: skip
        code, _, err = run(capsys, command)
        assert (code, err.strip()) == (1, said), command
