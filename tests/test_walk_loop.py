"""What a user closing the loop (docs/closing-the-loop.md, judges.md, batch.md) relies on,
found by walking the docs: each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from clihelp import modelyard
from modelyard.errors import ConfigError
from modelyard.evaluation import evaluate_gates, gates_passed, parse_gates
from modelyard.pipeline import check_against_store, load_pipeline
from modelyard.store import Judgement
from worlds import home_store


def test_a_champion_gate_on_a_judge_compares_the_judges_means() -> None:
    """`not_worse_than: champion on judge.quality tolerance 0.2`, as judges.md and
    closing-the-loop.md write it in a fine-tune config, was a KeyError traceback after
    training and scoring both versions: a judge's metric is not in METRICS."""
    gates = parse_gates(["not_worse_than: champion on judge.quality tolerance 0.2"])
    held = evaluate_gates(gates, {"judge.quality": 3.9}, {"judge.quality": 4.0})
    assert gates_passed(held)
    assert [(v.metric, v.threshold, v.champion) for v in held] == [("judge.quality", 3.8, 4.0)]
    assert "judge.quality 3.9 vs champion 4" in held[0].reason
    dropped = evaluate_gates(gates, {"judge.quality": 3.5}, {"judge.quality": 4.0})
    assert not gates_passed(dropped)
    assert dropped[0].margin is not None and dropped[0].margin < 0


def test_a_pipelines_judge_that_cannot_score_its_held_out_rows_is_refused_before_any_stage(
    acme_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faithfulness judge on held-out rows without a `context`: `pipeline run --dry-run`
    said the file was valid, and the run collected and registered a dataset before the
    fine-tune refused the rows ("Everything is checked before the first stage runs")."""
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    r = modelyard(
        "judges", "add", "grounded", "--rubric", "faithfulness", "--url",
        "http://127.0.0.1:9/v1", "--model", "judge-ep", "--api-key-env", "JUDGE_KEY",
        home=acme_home,
    )  # fmt: skip
    assert r.code == 0, r.err
    project = tmp_path / "project"
    (project / "tiny-base").mkdir(parents=True)
    rows = [{"instruction": "Which queue?", "input": f"ticket {n}", "output": "x"} for n in (1, 2)]
    (project / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    finetune = {
        "base_model": "./tiny-base",
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "alpaca"},
        "evaluation": {"metrics": ["judge.grounded"], "gates": ["judge.grounded >= 4"]},
        "registry": {"model": "acme-bot", "tenant": "acme"},
    }
    (project / "finetune.yaml").write_text(yaml.safe_dump(finetune))
    loop = {
        "name": "helpdesk-loop",
        "from_records": {"endpoint": "acme-support", "since": "7d", "out": "rows.jsonl"},
        "finetune": {"config": "finetune.yaml"},
    }
    (project / "loop.yaml").write_text(yaml.safe_dump(loop))
    for args in (("--dry-run",), ()):
        r = modelyard("pipeline", "run", str(project / "loop.yaml"), *args, home=acme_home)
        assert r.code == 2, (r.out, r.err)
        assert r.err.strip().splitlines() == [
            "error: pipeline loop.yaml: finetune.evaluation: data.eval row 1: judge.grounded "
            "(faithfulness rubric) needs a context, and the row has none (2 of 2 rows have "
            "none). A row's context is its 'context' field (text). Give every row its "
            "context, or use a judge whose rubric does not need it."
        ], r.err
    assert not (project / "rows.jsonl").exists()
    with home_store(acme_home) as store:
        assert store.list_audit_events(action="pipeline.*") == []


def test_a_pipelines_missing_held_out_file_is_refused_before_any_stage(
    acme_home: Path, tmp_path: Path
) -> None:
    """data.eval that is not there passed `--dry-run` ("valid"); the run then collected and
    registered a dataset before the fine-tune found the file missing."""
    (tmp_path / "tiny-base").mkdir()
    finetune = {
        "base_model": "./tiny-base",
        "data": {"train": "train.jsonl", "eval": "held-out.jsonl", "format": "alpaca"},
        "evaluation": {"gates": ["not_worse_than: champion"]},
        "registry": {"model": "acme-bot", "tenant": "acme"},
    }
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(finetune))
    loop = {
        "from_records": {"endpoint": "acme-support", "since": "7d", "out": "rows.jsonl"},
        "finetune": {"config": "finetune.yaml"},
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop))
    with home_store(acme_home) as store, pytest.raises(ConfigError) as info:
        check_against_store(store, load_pipeline(tmp_path / "loop.yaml"))
    assert info.value.one_line().startswith(
        f"pipeline loop.yaml: finetune.data.eval: dataset file {tmp_path / 'held-out.jsonl'} "
        "does not exist"
    ), info.value.one_line()
    assert info.value.context["field"] == "finetune.data.eval"


def test_judges_add_help_says_what_a_custom_template_must_hold(home: Path) -> None:
    """The help said a template "must ask for 'Score: N'"; the system message asks for it,
    and a template without {answer} is what is refused (docs/judges.md)."""
    r = modelyard("judges", "add", "--help", home=home)
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert "must ask for" not in text
    assert "({answer} is required); the system message asks for 'Score: N' (1-5)" in text, text


def test_judges_show_prints_the_cost_as_judges_list_does(home: Path) -> None:
    """`judges show` printed the summed cost as a raw float (0.00030000000000000003)."""
    r = modelyard(
        "judges", "add", "quality", "--rubric", "relevance", "--url", "http://127.0.0.1:9/v1",
        "--model", "judge-ep", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    calls = [
        Judgement("quality", 1, f"h{n}", None, 5.0, "Score: 5", None, 40, 4, cost, 3.0)
        for n, cost in enumerate((0.0001, 0.0002))
    ]
    with home_store(home) as store:
        store.save_judgements(calls)
        assert store.judge_usage("quality")["cost"] != 0.0003  # the float sum, as stored
    r = modelyard("judges", "show", "quality", home=home)
    assert r.code == 0, r.err
    assert (
        "usage: calls 2, failed 0, prompt_tokens 80, completion_tokens 8, cost 0.000300\n"
    ) in r.out, r.out


def _score(home: Path, judge: str, answers: Path, rows: str) -> Any:
    """``judges score`` of ``rows`` (the text of ``answers``) by a new relevance ``judge``
    at a URL nothing answers."""
    r = modelyard(
        "judges", "add", judge, "--rubric", "relevance", "--url", "http://127.0.0.1:9/v1",
        "--model", "m", home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    answers.write_text(rows)
    return modelyard("judges", "score", judge, "--data", str(answers), home=home)


def test_a_judge_that_scored_nothing_is_named_in_what_to_do(home: Path) -> None:
    """The hint said `modelyard judges score NAME` (and, from `judges score` itself, to run
    the command that had just failed) rather than naming the judge."""
    rows = '{"question": "Which queue?", "answer": "network"}\n'
    r = _score(home, "dead", home.parent / "answers.jsonl", rows)
    assert r.code == 1, (r.out, r.err)
    assert r.err.strip().splitlines()[-1] == (
        "error: judge 'dead' scored none of 1 answers: APIConnectionError: Connection error. "
        "Check its URL, model and key with `modelyard judges show dead`, then try it on a few "
        "answers with `modelyard judges score dead --data FILE`."
    ), r.err


def test_an_answer_that_is_no_text_says_how_to_give_it(home: Path) -> None:
    """``"answer": 42`` said only "answer is int, not text"; a .json file works though the
    help did not list it."""
    rows = '[{"question": "How many?", "answer": 42}]\n'
    r = _score(home, "quality", home.parent / "answers.json", rows)
    assert r.code == 2, (r.out, r.err)
    assert r.err.strip().splitlines()[-1] == (
        "error: --data row 1: answer is int, not text. Give answer as a string (in JSON, "
        'quoted: "answer": "42").'
    ), r.err
    help_text = " ".join(modelyard("judges", "score", "--help", home=home).out.split())
    assert "(.jsonl, .json, .csv or .parquet)" in help_text
