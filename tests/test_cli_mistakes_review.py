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
