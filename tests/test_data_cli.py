"""`modelyard data validate|split` as users run them, and the examples of docs/data.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard.data import RULES, write_jsonl

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"

ROWS = [
    {
        "instruction": "Route it.",
        "input": "The VPN drops every hour since Monday.",
        "output": "network",
    },
    {"instruction": "Route it.", "input": "Reset my password, please.", "output": "accounts"},
    {
        "instruction": "Route it.",
        "input": "The VPN drops every hour since Monday.",
        "output": "network",
    },
    {
        "instruction": "Route it.",
        "input": "Refund card 4111 1111 1111 1111 today.",
        "output": "billing",
    },
    {"instruction": "Route it.", "input": "Printer jammed on floor 3.", "output": ""},
]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def train(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    write_jsonl(ROWS, path)
    return path


def test_validate_reports_and_exits_0_without_fail_on(train: Path, tmp_path: Path) -> None:
    r = modelyard("data", "validate", str(train), "--format", "alpaca", home=tmp_path)
    assert r.code == 0, r.err
    assert "5 alpaca rows" in r.out
    assert "1, 3" in r.out  # the duplicate group
    assert "****1111" in r.out
    assert "4111 1111" not in r.out and "4111111111111111" not in r.out


def test_validate_json_and_fail_on(train: Path, tmp_path: Path) -> None:
    r = modelyard(
        "data",
        "validate",
        str(train),
        "--format",
        "alpaca",
        "--json",
        "--fail-on",
        "pii",
        "--fail-on",
        "leakage",
        "--fail-on",
        "empty-fields",
        home=tmp_path,
    )
    assert r.code == 1
    report = json.loads(r.out)
    assert report["tripped"] == ["pii", "empty-fields"]
    assert report["fail_on"] == ["pii", "leakage", "empty-fields"]
    assert report["duplicates"] == [[1, 3]]
    assert report["empty_fields"] == [{"row": 5, "field": "output", "problem": "empty"}]
    assert report["pii"] == [
        {"row": 4, "field": "input", "kind": "credit_card", "masked": "****1111"}
    ]
    assert set(report["findings"]) == set(RULES)
    assert "validation failed: pii (1), empty-fields (1)" in r.err


def test_validate_leakage_with_eval_file(train: Path, tmp_path: Path) -> None:
    held_out = tmp_path / "eval.csv"
    held_out.write_text(
        "instruction,input,output\n"
        'Route it.,"reset my  PASSWORD, please.",accounts\n'
        "Route it.,New laptop,hw\n"
    )
    r = modelyard(
        "data",
        "validate",
        str(train),
        "-f",
        "alpaca",
        "--eval",
        str(held_out),
        "--fail-on",
        "leakage",
        "--json",
        home=tmp_path,
    )
    assert r.code == 1
    report = json.loads(r.out)
    assert report["eval_rows"] == 2
    assert report["leakage"] == [{"train_rows": [2], "eval_rows": [1]}]


def test_unknown_rule_is_bad_input_naming_the_nearest(train: Path, tmp_path: Path) -> None:
    r = modelyard(
        "data", "validate", str(train), "--format", "alpaca", "--fail-on", "dupes", home=tmp_path
    )
    assert r.code == 2
    line = _one_error_line(r.err)
    assert "'dupes'" in line and "near-duplicates" in line and "imbalance" in line


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("t.jsonl", '{"text": "a"}\n{"text": \n', "line 2 is not valid JSON"),
        ("t.jsonl", "", "has no rows"),
        ("t.txt", "a\n", ".jsonl, .json, .csv, .parquet"),
        ("t.csv", "instruction,response\nDo it.,Done.\n", "its columns are: instruction, response"),
    ],
)
def test_unusable_files_are_one_error_and_exit_2(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    r = modelyard("data", "validate", str(path), "--format", "alpaca", home=tmp_path)
    assert r.code == 2
    assert expected in _one_error_line(r.err)


def test_split_is_reproducible_and_writes_jsonl(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    lines = ["text,label"] + [f"review {i},{'pos' if i % 4 else 'neg'}" for i in range(40)]
    source.write_text("\n".join(lines) + "\n")
    args = ("data", "split", str(source), "--format", "classification", "--stratify", "label")
    first = modelyard(
        *args,
        "--eval-fraction",
        "0.2",
        "--seed",
        "3",
        "--out-dir",
        str(tmp_path / "a"),
        "--json",
        home=tmp_path,
    )
    assert first.code == 0, first.err
    result = json.loads(first.out)
    assert (result["train"]["rows"], result["eval"]["rows"]) == (32, 8)
    assert result["classes"] == {"neg": {"train": 8, "eval": 2}, "pos": {"train": 24, "eval": 6}}
    again = modelyard(
        *args,
        "--eval-fraction",
        "0.2",
        "--seed",
        "3",
        "--out-dir",
        str(tmp_path / "b"),
        home=tmp_path,
    )
    assert again.code == 0 and "8 rows" in again.out
    for part in ("train", "eval"):
        a = (tmp_path / "a" / f"reviews.{part}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"reviews.{part}.jsonl").read_bytes()
    first_row = json.loads((tmp_path / "a" / "reviews.train.jsonl").read_text().splitlines()[0])
    assert set(first_row) == {"text", "label"}


def test_split_bad_fraction_and_field(train: Path, tmp_path: Path) -> None:
    r = modelyard(
        "data", "split", str(train), "-f", "alpaca", "--eval-fraction", "1", home=tmp_path
    )
    assert r.code == 2 and "between 0 and 1" in _one_error_line(r.err)
    r = modelyard(
        "data", "split", str(train), "-f", "alpaca", "--stratify", "outptu", home=tmp_path
    )
    assert r.code == 2 and "'output'" in _one_error_line(r.err)
    assert not (train.parent / "train.train.jsonl").exists()


# --- docs/data.md: every shell example runs and prints what it says -----------------------


def _doc_steps() -> list[tuple[str, str, list[str]]]:
    """(kind, code, expected output lines) in document order; kind is bash, python or $."""
    steps: list[tuple[str, str, list[str]]] = []
    for kind, body in re.findall(r"```(bash|console|python)\n(.*?)```", DOC.read_text(), re.S):
        if kind != "console":
            steps.append((kind, body, []))
            continue
        if body.startswith("$ modelyard data from-records"):
            continue  # it needs served traffic: test_from_records runs it
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append(("$", line[2:], []))
            elif line.strip():
                steps[-1][2].append(line.strip())
    return steps


def test_doc_examples_run(tmp_path: Path) -> None:
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "modelyard").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelyard "$@"\n')
    (shim / "modelyard").chmod(0o755)
    (shim / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(
        PATH=f"{shim}{os.pathsep}{env.get('PATH', '')}",
        MODELYARD_HOME=str(tmp_path / "home"),
        COLUMNS="200",
    )
    work = tmp_path / "work"
    work.mkdir()
    steps = _doc_steps()
    assert len(steps) > 10, "docs/data.md lost its examples"
    last_code = 0
    for i, (kind, code, expected) in enumerate(steps):
        if code == "echo $?":
            assert expected == [str(last_code)], f"{steps[i - 1][1]!r} exited {last_code}"
            continue
        if kind == "python":
            command = [sys.executable, "-c", code]
        else:
            command = ["bash", "-euo", "pipefail", "-c", code]
        proc = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        output = proc.stdout + proc.stderr
        assert "Traceback" not in output, output
        for line in expected:
            assert line in output, f"{code!r} did not print {line!r}:\n{output}"
        last_code = proc.returncode
        exit_code_shown = i + 1 < len(steps) and steps[i + 1][1] == "echo $?"
        assert exit_code_shown or last_code == 0, f"{code!r} exited {last_code}:\n{output}"
