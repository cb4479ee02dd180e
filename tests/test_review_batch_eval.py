"""An outside review of batch jobs, gates, judges and from-records: what a user relies on
when the input is odd, a job is run again, or a server dies mid-job.

The batch tests use the world of ``test_batch`` (``batchworld``) on the echo engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchworld import World, batch, build_world, enter


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("review-batch"))


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ECHO = ["-e", "claims-router", "--engine", "echo", "--json"]


def test_a_finished_output_is_not_taken_for_an_edited_input_or_other_settings(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(here / "in.jsonl", [{"prompt": "monday one"}, {"prompt": "monday two"}])
    code, out, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO)
    assert code == 0, err
    monday = (here / "out.jsonl").read_text()
    # the same command again: nothing to do, the output as it was
    code, out, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO)
    assert code == 0, err
    assert json.loads(out)["skipped"] == 2 and (here / "out.jsonl").read_text() == monday

    # other sampling settings: refused, naming the setting, rather than the old answers
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO, "--max-tokens", "3")
    assert code == 2, err
    assert "the output out.jsonl was written with params" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1

    # tuesday's rows, as many as monday's: refused, not answered with monday's answers
    write_jsonl(here / "in.jsonl", [{"prompt": "tuesday one"}, {"prompt": "tuesday two"}])
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO)
    assert code == 2, err
    assert "the output out.jsonl was written with input_sha256" in err
    assert (here / "out.jsonl").read_text() == monday

    code, out, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO, "--overwrite")
    assert code == 0, err
    assert json.loads(out)["answered"] == 2
    assert (here / "out.jsonl").read_text() != monday


def test_the_output_may_not_be_the_input_even_with_overwrite(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(here / "rows.jsonl", [{"prompt": "keep me"}])
    before = (here / "rows.jsonl").read_text()
    code, _, err = batch(capsys, "rows.jsonl", "-o", "./rows.jsonl", *ECHO, "--overwrite")
    assert code == 2, err
    assert "the output rows.jsonl is the input file itself" in err
    assert (here / "rows.jsonl").read_text() == before
    assert sorted(p.name for p in here.iterdir()) == ["rows.jsonl"]
