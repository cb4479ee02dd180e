"""A judge metric in ``evaluate`` and fine-tune gates on rows that lack what its rubric
needs (text rows, a row without a ``context`` for a faithfulness judge): refused before any
model is loaded or answer generated, naming the metric, the row and the missing field."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus, split_rows, synthetic_domain
from modelyard.errors import ConfigError
from modelyard.judges import JudgeSource
from modelyard.store import Store
from tinymodels import QUICK_BASE, random_adapter
from worlds import tiny_helpdesk_version

UNREACHABLE = "--url http://127.0.0.1:9/v1 --model judge-ep"
"""No judge is called: each refusal here comes before the first call."""


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judged-rows")
    base = create_tiny_base(domain_corpus(DOMAINS, 200, seed=0), root / "base", **QUICK_BASE).path
    return {"base": base, "adapter": random_adapter(base, root / "a1", seed=1)}


@pytest.fixture
def version(home: Path, tiny: dict[str, Path]) -> str:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    made = tiny_helpdesk_version(store, home, tiny)
    store.close()
    return made.ref


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _no_model_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the refusal must come before it."""
    import modelyard.finetune._evaluate as evaluate

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a model was loaded before the rows were checked")

    monkeypatch.setattr(evaluate, "load_version_model", refuse)


def test_text_rows_are_refused_before_any_answer_naming_the_metric_and_row(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    code, _, err = run(capsys, f"modelyard judges add safe --rubric safety {UNREACHABLE}")
    assert code == 0, err
    data = _write(tmp_path / "text.jsonl", [{"text": "The printer jams."}, {"text": "Hi."}])
    _no_model_loaded(monkeypatch)
    code, _, err = run(
        capsys, f"modelyard evaluate --model {version} --data {data} --format text "
        "--metrics judge.safe",
    )  # fmt: skip
    assert code == 2, err
    assert err.startswith("error: --data row 1: judge.safe needs the model's answer to a prompt")
    assert "exact_match" not in err and "Traceback" not in err
    assert "judges score" in err  # the hint: how to judge a file of answers instead


def test_a_row_without_what_the_rubric_needs_is_named_before_any_answer(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    code, _, err = run(capsys, f"modelyard judges add grounded --rubric faithfulness {UNREACHABLE}")
    assert code == 0, err
    rows = synthetic_domain("it-support", 3, seed=0)
    rows[0]["context"] = "Printers are hardware."
    data = _write(tmp_path / "eval.jsonl", rows)  # rows 2 and 3 have no context
    _no_model_loaded(monkeypatch)
    code, _, err = run(
        capsys, f"modelyard evaluate --model {version} --data {data} "
        '--metrics exact_match --gate "judge.grounded >= 4"',
    )  # fmt: skip
    assert code == 2, err
    assert err.startswith(
        "error: --data row 2: judge.grounded (faithfulness rubric) needs a context, "
        "and the row has none (2 of 3 rows have none)."
    ), err
    assert "its 'context' field" in err and "Traceback" not in err
    docs = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    assert err.strip() in docs.splitlines()  # the docs show what it prints

    # A custom rubric needs what its template shows; chat rows give the last user message.
    prompt = tmp_path / "ref.txt"
    prompt.write_text("Expected: {reference}\nQ: {question}\nA: {answer}\nScore: 3")
    code, _, err = run(
        capsys, f"modelyard judges add ref --rubric custom --prompt-file {prompt} {UNREACHABLE}"
    )
    assert code == 0, err
    chat = _write(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "assistant", "content": "Hello."}]}],
    )  # fmt: skip
    code, _, err = run(
        capsys, f"modelyard evaluate --model {version} --data {chat} --format chat "
        "--metrics judge.ref",
    )  # fmt: skip
    assert code == 2 and err.startswith(
        "error: --data row 1: judge.ref (custom rubric) needs a question"
    ), err


def test_rows_that_give_the_judge_what_it_needs_pass_the_check(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    store.put_judge("grounded", rubric="faithfulness", base_url="http://127.0.0.1:9/v1", model="m")
    store.put_judge("right", rubric="correctness", base_url="http://127.0.0.1:9/v1", model="m")
    source = JudgeSource(store, ["grounded", "right"])
    rows = synthetic_domain("it-support", 2, seed=0)
    source.check_rows([{**r, "context": "c"} for r in rows], "alpaca", where="--data")
    labelled = [{"text": "My screen is blank", "label": "hardware"}]
    with pytest.raises(ConfigError, match=r"^held-out row 1: judge.grounded .* needs a context"):
        source.check_rows(labelled, "classification", where="held-out row")
    store.close()


def test_a_finetune_config_naming_the_judge_is_refused_before_training(
    home: Path, tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import yaml

    import modelyard.finetune._pipeline as pipeline

    code, _, err = run(capsys, f"modelyard judges add grounded --rubric faithfulness {UNREACHABLE}")
    assert code == 0, err
    rows = synthetic_domain("it-support", 12, seed=0)
    train = _write(tmp_path / "train.jsonl", rows[:8])
    held_out = _write(tmp_path / "eval.jsonl", [{**r, "context": "c"} for r in rows[8:]])
    config: dict[str, object] = {
        "base_model": str(tiny["base"]),
        "data": {"train": str(train), "eval": str(held_out), "format": "alpaca"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 1, "batch_size": 4, "seed": 0},
        "evaluation": {"metrics": ["exact_match"], "gates": ["judge.grounded >= 4"]},
        "registry": {"model": "helpdesk"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    def no_training(*_: object, **__: object) -> None:
        raise AssertionError("training started before the held-out rows were checked")

    monkeypatch.setattr(pipeline, "_train", no_training)
    code, out, err = run(capsys, f"modelyard finetune -c {path} --check")
    assert code == 0 and "config OK" in out, err  # every held-out row has its context

    held_out.write_text(held_out.read_text() + json.dumps(rows[0]) + "\n")
    for check in ("--check", ""):
        code, _, err = run(capsys, f"modelyard finetune -c {path} {check}")
        assert code == 2 and err.startswith(
            "error: data.eval row 5: judge.grounded (faithfulness rubric) needs a context"
        ), err

    # Held-out rows split from data.train are named by their number in data.train.
    config["data"] = {"train": str(train), "format": "alpaca", "eval_fraction": 0.25}
    path.write_text(yaml.safe_dump(config))
    _, split_off = split_rows(rows[:8], 0.25, seed=0)
    first = rows[:8].index(split_off[0]) + 1
    assert first > 1  # the first held-out row's place among them would be 1
    code, _, err = run(capsys, f"modelyard finetune -c {path} --check")
    assert code == 2 and err.startswith(f"error: data.train row {first}: judge.grounded"), err
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert not store.list_registered_models() and not store.list_datasets()
