"""Journey 5's batch job at its edges, as an infrastructure owner meets them.

- an output that cannot be written (its directory cannot be made) exits 2 with one
  line naming the output, before any row is sent; it was a traceback (exit 1);
- an output path that is a directory exits 2 saying so (it was blamed on a "dataset
  file");
- a run with another setting than the output's names the option that differs
  (``--max-tokens 4, not 5``), not the whole of the sampling parameters as JSON;
- a job whose stderr is a log (not a terminal) prints its progress as plain lines
  as it goes (a bar is drawn there only when it ends: nothing for hours);
- ``--max-errors``: the line the job stops with counts the failed rows the summary
  counts (the rows in flight when it stopped included);
- SIGTERM (systemd stopping it, a Kubernetes Job's pod deleted) stops the job as
  Ctrl+C does, saying how many answered rows are kept (exit 143); it died silently;
- an endpoint whose version answers from an upstream (a provider's API) whose key
  is not in the job's environment exits 2 before any row is sent; every row
  failed, and the output, written whole with an error in each row, was final.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchworld import World, batch, build_world, enter, write_jsonl
from clihelp import modelyard
from modelyard.cli import main

ECHO = ["-e", "claims-router", "--engine", "echo"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("journey5-batch"))


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


def _rows(here: Path, n: int = 5) -> None:
    write_jsonl(here / "in.jsonl", [{"prompt": f"ticket {i}: my laptop is slow"} for i in range(n)])


def test_an_output_that_cannot_be_written_exits_2_with_one_line_and_sends_nothing(
    world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rows(here)
    (here / "blocked").write_text("a file, where the output's directory would be\n")
    code, _, err = batch(capsys, "in.jsonl", "-o", "blocked/answers.jsonl", *ECHO)
    assert code == 2, err
    assert err.startswith("error: cannot write the output blocked/answers.jsonl: ")
    assert "--output" in err or "-o " in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (here / "blocked").is_file()

    (here / "answers.jsonl").mkdir()
    code, _, err = batch(capsys, "in.jsonl", "-o", "answers.jsonl", *ECHO, "--overwrite")
    assert code == 2, err
    assert err.startswith("error: the output answers.jsonl is a directory")
    assert len(err.strip().splitlines()) == 1
    assert (here / "answers.jsonl").is_dir() and not any((here / "answers.jsonl").iterdir())


def test_a_run_with_another_setting_names_the_option_that_differs(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rows(here)
    args = ["in.jsonl", "-o", "out.jsonl", *ECHO, "--max-tokens", "4", "--system", "Be brief."]
    code, _, err = batch(capsys, *args)
    assert code == 0, err
    before = (here / "out.jsonl").read_text()

    code, _, err = batch(capsys, *args, "--max-tokens", "5")
    assert code == 2
    assert err.startswith("error: the output out.jsonl was written with --max-tokens 4, not 5.")
    assert "temperature" not in err and len(err.strip().splitlines()) == 1

    code, _, err = batch(capsys, *args, "--system", "Be kind.")
    assert code == 2
    assert 'with --system "Be brief.", not "Be kind."' in err
    assert (here / "out.jsonl").read_text() == before


def test_progress_goes_to_a_log_as_lines_while_the_job_runs(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modelyard.cli._progress.LOG_EVERY_S", 0.0)  # a line a row
    _rows(here, 6)
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO, "--concurrency", "1")
    assert code == 0, err
    lines = [line for line in err.splitlines() if re.match(r"job batch-\w+: \d+/6 rows", line)]
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done[0] == 0 and done[-1] == 6 and len(done) >= 3, err
    assert done == sorted(done)
    assert "rows/s" in lines[-1]
    assert "━" not in err and "\x1b[" not in err  # no bar drawn into the log


def test_the_line_a_job_stops_with_counts_every_failed_row(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = " ".join(f"word{i}" for i in range(400))  # past the tiny base's 256 positions
    write_jsonl(here / "in.jsonl", [{"prompt": long}] * 4 + [{"prompt": "short"}] * 4)
    args = ["in.jsonl", "-o", "out.jsonl", "-e", "claims-router", "--max-tokens", "2",
            "--concurrency", "4", "--max-errors", "0", "--json"]  # fmt: skip
    code, out, err = batch(capsys, *args)
    assert code == 1, err
    summary = json.loads(out)
    assert summary["failed"] == 4  # the four in flight at once all fail
    assert err.startswith("error: the job stopped: 4 rows failed, more than --max-errors 0")
    assert json.loads(out)["stopped"].startswith("4 rows failed")


def test_sigterm_stops_the_job_saying_what_is_kept_and_the_same_command_goes_on(
    world: World, tmp_path: Path
) -> None:
    rows = 200
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / "out.jsonl"
    command = ["batch", "run", str(tmp_path / "in.jsonl"), "-o", str(out), *ECHO,
               "--echo-delay-ms", "25", "--concurrency", "4", "--json"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    job = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first_part = out.with_name("out.jsonl.batch") / "part-00000001.jsonl"
    deadline = time.monotonic() + 120
    while not first_part.exists():
        assert job.poll() is None, "the job ended before it was stopped"
        assert time.monotonic() < deadline, "no part committed within 120 s"
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 143, err
    kept = sum(len(p.read_text().splitlines()) for p in first_part.parent.glob("part-*"))
    assert 0 < kept < rows
    assert f"stopped (SIGTERM): {kept} answered rows are kept in {first_part.parent}" in err
    assert "Traceback" not in err and not out.exists()

    again = modelyard(*command, home=world.home, env={"MODELYARD_API_KEY": world.key})
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert (summary["skipped"], summary["answered"]) == (kept, rows - kept)
    assert [json.loads(line)["row"] for line in out.read_text().splitlines()] == list(
        range(1, rows + 1)
    )
    assert len(world.records(summary["job_id"])) == rows


def test_an_upstream_version_without_its_key_here_exits_2_before_any_row_is_sent(
    world: World, here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("J5_PROVIDER_KEY", raising=False)
    with world.store() as store:
        store.create_registered_model("acme-external", tenant="acme-insurance")
    assert (
        main(
            [
                "registry",
                "upstream",
                "acme-external",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--upstream-model",
                "gpt-x",
                "--api-key-env",
                "J5_PROVIDER_KEY",
            ]
        )
        == 0
    )
    assert main(["endpoints", "create", "claims-external", "--tenant", "acme-insurance",
                 "--model", "acme-external:1"]) == 0  # fmt: skip
    _rows(here)
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", "-e", "claims-external")
    assert code == 2, err
    assert err.startswith(
        "error: acme-external:1 answers from the upstream at 127.0.0.1:9, and its key is not here"
    ), err
    assert "J5_PROVIDER_KEY" in err and len(err.strip().splitlines()) == 1
    assert not (here / "out.jsonl").exists()
    job = json.loads((here / "out.jsonl.batch" / "job.json").read_text())
    assert world.records(job["id"]) == []  # nothing was asked
