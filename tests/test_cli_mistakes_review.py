"""Operators' mistakes at the command line: each is one line naming the option or field, the
usage exit code (2), and nothing written; never a Python traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.cli import main


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


def test_batch_run_on_an_input_that_is_not_there_says_so(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, out = tmp_path / "tickets.jsonl", tmp_path / "answers.jsonl"
    argv = ["batch", "run", str(missing), "-o", str(out), "--model", "acme-bot:1"]
    assert main([*argv, "--tenant", "acme", "--engine", "echo"]) == 2
    line = _error(capsys)
    assert str(missing) in line and "does not exist" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["keys", "create", "--tenant", "acme", "--rpm", "99999999999999999999"], "--rpm"),
        (["keys", "create", "--tenant", "acme", "--tpm", "99999999999999999999"], "--tpm"),
        (["keys", "limits", "KEY", "--tpm", "99999999999999999999"], "--tpm"),
    ],
)
def test_a_key_rate_limit_past_what_the_store_holds_names_the_option(
    acme_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    from modelyard.access import create_api_key
    from worlds import home_store

    with home_store(acme_home) as store:
        key = create_api_key(store, "acme", tpm_limit=1000)[0]
        before = store.list_api_keys("acme")
    assert main([key.id if a == "KEY" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and option in err
    with home_store(acme_home) as store:
        assert [(k.id, k.tpm_limit) for k in store.list_api_keys("acme")] == [
            (k.id, k.tpm_limit) for k in before
        ]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["keys", "create", "--tenant", "acme", "--expires", "999999999d"], "--expires"),
        (["keys", "rotate", "KEY", "--grace", "999999999d"], "--grace"),
        (["keys", "rotate", "KEY", "--expires", "3000000d"], "--expires"),
    ],
)
def test_a_key_lifetime_past_the_year_9999_names_the_option(
    acme_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    from modelyard.access import create_api_key
    from worlds import home_store

    with home_store(acme_home) as store:
        key = create_api_key(store, "acme")[0]
    assert main([key.id if a == "KEY" else a for a in argv]) == 2
    line = _error(capsys)
    assert option in line and "year 9999" in line
    with home_store(acme_home) as store:  # no key made, none rotated
        assert [(k.id, k.rotated_to) for k in store.list_api_keys("acme")] == [(key.id, None)]


@pytest.mark.parametrize("mistake", ["missing", "not PEM"])
def test_serve_with_a_tls_pair_that_does_not_load_names_it_before_serving(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mistake: str
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if mistake == "not PEM":
        cert.write_text("not a certificate\n")
        key.write_text("not a key\n")
    argv = ["serve", "--engine", "echo", "--port", "0", "--host", "127.0.0.1"]
    assert main([*argv, "--tls-cert", str(cert), "--tls-key", str(key)]) == 2
    line = _error(capsys)
    assert "--tls-cert" in line and str(cert) in line


def _finetune_config(tmp_path: Path, **training: object) -> Path:
    """A finetune config whose ``training:`` section is ``training`` (the rest valid)."""
    import json

    import yaml

    rows = [{"instruction": f"route {i}", "output": "auto"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "base_model": "./base",
        "data": {"train": "train.jsonl", "format": "alpaca"},
        "training": {"max_steps": 1, **training},
        "registry": {"model": "claims"},
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_training_seed_numpy_cannot_take_is_refused_at_the_check(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    # -1 trained until seeding raised numpy's ValueError; 2**64 overflowed the store's
    # integer: both tracebacks, after `finetune --check` had said the config was fine
    assert main(["init"]) == 0
    config = _finetune_config(tmp_path, seed=seed)
    capsys.readouterr()
    assert main(["finetune", "-c", str(config), "--check"]) == 2
    assert "'training.seed'" in _error(capsys)


@pytest.mark.parametrize("field", ["learning_rate", "epochs"])
def test_an_infinite_learning_rate_or_epochs_is_refused_at_the_check(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    # `.inf` passed --check (it is above 0): a run of NaN losses, or one that never ends
    assert main(["init"]) == 0
    config = _finetune_config(tmp_path, **{field: float("inf"), "max_steps": None})
    capsys.readouterr()
    assert main(["finetune", "-c", str(config), "--check"]) == 2
    assert f"'training.{field}'" in _error(capsys)


def test_monitor_alerts_with_rules_but_no_evaluate_does_not_ignore_them(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the file was never read: a missing or broken one listed the alerts, exit 0
    missing = tmp_path / "alerts.yml"
    assert main(["monitor", "alerts", "--rules", str(missing)]) == 2
    line = _error(capsys)
    assert "--rules" in line and "--evaluate" in line


@pytest.mark.parametrize("json_out", [[], ["--json"]])
def test_budgets_usage_with_until_before_since_is_an_empty_window_not_no_usage(
    acme_home: Path, capsys: pytest.CaptureFixture[str], json_out: list[str]
) -> None:
    # it said "no usage since 2026-02-01" (or printed []), exit 0: as if nothing was spent
    argv = ["budgets", "usage", "--since", "2026-02-01", "--until", "2026-01-01", *json_out]
    assert main(argv) == 2
    line = _error(capsys)
    assert "--until" in line and "--since" in line and "empty" in line


def test_base_create_tiny_on_a_directory_says_it_is_one(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it said the corpus "does not exist", of a directory the operator can see
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    argv = ["base", "create-tiny", "--corpus", str(corpus), "--out", str(tmp_path / "base")]
    assert main(argv) == 2
    line = _error(capsys)
    assert f"corpus file {corpus} is a directory, not a file" in line
    assert not (tmp_path / "base").exists()


def test_endpoints_policy_clear_with_settings_is_a_contradiction_not_a_silent_drop(
    acme_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --clear won: the endpoint went back to the default steps 10,50,100, exit 0, while
    # the operator had asked for --steps 100 (blue-green)
    argv = ["endpoints", "policy", "acme-support", "--clear", "--steps", "100", "--bake", "0"]
    assert main(argv) == 2
    line = _error(capsys)
    assert "--clear" in line and "--steps, --bake" in line


def test_judges_score_checks_out_before_the_judge_is_asked(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an --out in a directory that is not there was a FileNotFoundError traceback after
    # every answer had been scored (and paid for); the judge here is never reached
    import json

    url = "http://127.0.0.1:1/v1"
    judge = ["judges", "add", "j1", "--rubric", "relevance", "--url", url, "--model", "m"]
    assert main(judge) == 0
    data = tmp_path / "answers.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    out = tmp_path / "missing" / "scored.jsonl"
    capsys.readouterr()
    assert main(["judges", "score", "j1", "--data", str(data), "--out", str(out)]) == 2
    line = _error(capsys)
    assert f"directory {out.parent} does not exist" in line


def test_rollout_compare_checks_out_before_comparing(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as judges score: the pairs were judged first, then the write met the missing directory
    out = tmp_path / "missing" / "pairs.jsonl"
    assert main(["rollout", "compare", "acme-support", "--shadow", "--out", str(out)]) == 2
    assert f"directory {out.parent} does not exist" in _error(capsys)


def test_evaluate_checks_predictions_before_the_evaluation_runs(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the evaluation ran whole, then writing the predictions met the missing directory
    data = tmp_path / "eval.jsonl"
    data.write_text('{"instruction": "route this", "output": "auto"}\n')
    out = tmp_path / "missing" / "predictions.jsonl"
    argv = ["evaluate", "--model", "acme-bot:1", "--data", str(data), "--predictions", str(out)]
    assert main(argv) == 2
    line = _error(capsys)
    assert f"directory {out.parent} does not exist" in line


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--price-input", "-1", "--price-input is -1.0; use 0 or more (a finite number)"),
        ("--price-output", "inf", "--price-output is inf; use 0 or more (a finite number)"),
        ("--max-concurrency", "0", "--max-concurrency is 0; use from 1 to 1024"),
    ],
)
def test_registry_upstream_names_the_option_typed_not_the_specs_field(
    acme_home: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, said: str
) -> None:
    """``--price-input -1`` said ``upstream input_per_1k is -1.0``, a name the user never
    typed (the admin API's field); an infinite price was taken."""
    argv = ["registry", "upstream", "gw", "--base-url", "http://127.0.0.1:9/v1",
            "--upstream-model", "m", flag, value]  # fmt: skip
    assert main(argv) == 2
    assert _error(capsys) == f"error: {said}"
    assert main(["registry", "list"]) == 0
    assert "gw" not in capsys.readouterr().out


def test_an_out_file_under_a_file_says_that_is_a_file(
    acme_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out notes.txt/audit.jsonl`` said directory notes.txt "does not exist"."""
    (tmp_path / "notes.txt").write_text("mine\n")
    assert main(["audit", "export", "--out", str(tmp_path / "notes.txt" / "audit.jsonl")]) == 2
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in _error(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
