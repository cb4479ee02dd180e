"""Long work in a log (a file, a pipe, a supervisor's journal) prints progress lines as it
goes; a bar drawn only when the work ends told nothing for an hour of fine-tuning."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from modelyard.cli import main
from modelyard.cli._progress import progress_bar
from modelyard.data import DOMAINS, domain_corpus


def _log() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, force_jupyter=False, width=80), out


def test_every_update_is_a_line_when_asked_and_the_last_says_what_was_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("modelyard.cli._progress.LOG_EVERY_S", 0.0)
    console, out = _log()
    with progress_bar(console, "fine-tuning (lora)", 3, unit="steps") as update:
        for step in range(1, 4):
            update(step, 3, f"loss {3.0 / step:.2f}")
        update(3, 3, "loss 1.00")  # the end said twice: one line
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"fine-tuning (lora): {n}/3 steps" for n in (1, 2, 3)
    ]
    assert lines[0].endswith("loss 3.00") and lines[-1].endswith("loss 1.00")
    assert "steps/s" in lines[1] and "eta 0:" in lines[1]
    assert "eta" not in lines[-1]  # done: nothing left to wait for
    assert "━" not in out.getvalue() and "\x1b[" not in out.getvalue()


def test_between_lines_updates_wait_and_the_end_is_printed_even_without_a_total() -> None:
    console, out = _log()
    with progress_bar(console, "verifying artifacts", 0, unit="artifacts") as update:
        for n in range(1, 51):  # a total of 0: not known
            update(n, 0, "")
    assert out.getvalue().splitlines() == [
        "verifying artifacts: 1 artifacts",  # the first, at once
        out.getvalue().splitlines()[-1],
    ]
    assert re.fullmatch(r"verifying artifacts: 50 artifacts, [\d.]+ artifacts/s",
                        out.getvalue().splitlines()[-1])  # fmt: skip


def test_pretraining_a_base_into_a_log_prints_its_steps_as_it_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modelyard.cli._progress.LOG_EVERY_S", 0.0)
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(domain_corpus(DOMAINS, 60, seed=0)) + "\n", encoding="utf-8")
    code = main(["base", "create-tiny", "--corpus", str(corpus), "--out",
                 str(tmp_path / "tiny"), "--steps", "6"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    steps = [int(m) for m in re.findall(r"^pretraining: (\d+)/6 steps", err, re.M)]
    assert steps[-1] == 6 and len(steps) >= 3 and steps == sorted(steps), err
    assert "━" not in err
