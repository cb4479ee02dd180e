"""``modelyard batch run`` as a user meets it: exit codes, output files, records in the store.

One home for the module: a tiny base, one LoRA adapter with random weights
(``acme-claims:1``) behind the endpoint ``acme-support`` of tenant ``acme``
(storage policy ``redacted``), and ``globex-support`` of another tenant. The
real engine answers the happy paths; the kill -9 test runs the command as a
subprocess on the echo engine (paced, so the job is half way when it is killed).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from batchworld import DOC, World, batch, build_world, docs_command, enter, write_jsonl
from clihelp import modelyard
from modelyard.cli import main

COLUMNS = ["answer", "finish_reason", "prompt_tokens", "completion_tokens", "version"]
COLUMNS += ["record_id", "error"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("batch"))


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_csv_is_answered_through_the_endpoint_one_record_per_row(
    world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["ticket_id,text"] + [f"T-{i},my claim number {i} about the roof" for i in range(12)]
    lines.append('T-99,"write to me at jane@example.com, please"')
    (here / "tickets.csv").write_text("\n".join(lines) + "\n")
    args = ["tickets.csv", "-o", "answers.csv", "-e", "claims-router", "--prompt-column",
            "text", "--id-column", "ticket_id", "--max-tokens", "6", "--concurrency", "8",
            "--json"]  # fmt: skip
    code, out, err = batch(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["rows"], summary["answered"], summary["failed"]) == (13, 13, 0)
    assert summary["versions"] == {"acme-claims:1": 13}
    assert summary["completion_tokens"] > 0
    text = (here / "answers.csv").read_text()
    assert text.splitlines()[0] == ",".join(["row", "ticket_id", *COLUMNS])
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["ticket_id"] for r in rows] == [f"T-{i}" for i in range(12)] + ["T-99"]
    assert [int(r["row"]) for r in rows] == list(range(1, 14))
    assert all(r["version"] == "acme-claims:1" and not r["error"] for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    records = world.records(summary["job_id"])
    assert sorted(r["id"] for r in records) == sorted(r["record_id"] for r in rows)
    assert {(r["source"], r["status"], r["endpoint_name"], r["route"]) for r in records} == {
        ("batch", "ok", "claims-router", "chat.completions")
    }
    assert [r["response"] for r in records if r["id"] == rows[0]["record_id"]]
    # the tenant's storage policy applies (redacted), as it does to API requests
    (last,) = [r for r in records if r["id"] == rows[-1]["record_id"]]
    assert "[EMAIL]" in last["prompt"] and "jane@example.com" not in last["prompt"]
    assert not (here / "answers.csv.batch").exists()

    # the same command again: every row answered already, nothing sent, nothing rewritten
    code, out, err = batch(capsys, *args)
    assert code == 0, err
    again = json.loads(out)
    assert (again["answered"], again["skipped"], again["job_id"]) == (0, 13, summary["job_id"])
    assert again["already_whole"] and not summary["already_whole"]
    # journey 5 spells it --endpoint, --input and --output
    code, out, err = batch(capsys, "--input", "tickets.csv", "--output", "answers.csv",
                           "--endpoint", "claims-router", *args[5:-1])  # fmt: skip
    assert code == 0 and "already whole: nothing asked, nothing written" in err, err
    assert "wrote" not in err, err
    code, _, err = batch(capsys, "tickets.csv", "--input", "tickets.csv", *args[1:])
    assert code == 2 and "give the rows to answer once: as INPUT or as --input" in err, err
    code, _, err = batch(capsys, *args[1:])
    assert code == 2 and "no rows to answer: give INPUT" in err, err
    assert (here / "answers.csv").read_text() == text
    assert len(world.records(summary["job_id"])) == 13


def test_a_parquet_file_through_an_operators_version_with_template_fields(
    world: World, here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELYARD_API_KEY")  # an operator: the CLI on the store, no key
    claims = {
        "claim_id": [101, 102, 103],
        "question": ["Which team handles this claim?"] * 3,
        "details": ["a burst pipe flooded the basement", "", "my car was hit while parked"],
    }
    pq.write_table(pa.table(claims), here / "claims.parquet")
    code, out, err = batch(
        capsys, "claims.parquet", "-o", "claims-answers.parquet", "--model", "acme-claims:1",
        "--field", "instruction=question", "--field", "input=details", "--id-column",
        "claim_id", "--max-tokens", "4", "--json",
    )  # fmt: skip
    assert code == 0, err
    job = json.loads(out)["job_id"]
    table = pq.read_table(here / "claims-answers.parquet")
    assert table.column_names == ["row", "claim_id", *COLUMNS]
    assert table.schema.field("claim_id").type == pa.int64()  # the id keeps its type
    assert table.column("claim_id").to_pylist() == [101, 102, 103]
    records = world.records(job)
    assert len(records) == 3
    assert {(r["endpoint_name"], r["api_key_id"], r["tenant"]) for r in records} == {
        ("acme-claims:1", "operator", "acme-insurance")
    }
    # an instruction with an input: alpaca's "### Input:"; without one, the instruction alone
    prompts = {r["id"]: r["prompt"] for r in records}
    ids = table.column("record_id").to_pylist()
    assert "### Input:\na burst pipe" in prompts[ids[0]]
    assert "### Input:" not in prompts[ids[1]]


def test_failed_rows_keep_their_error_and_max_errors_stops_the_job(
    world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = " ".join(f"word{i}" for i in range(400))  # past the tiny base's 256 positions
    prompts = ["short one", long, "short three", "short four", long, "short six"]
    write_jsonl(here / "in.jsonl", [{"prompt": p} for p in prompts])
    args = ["in.jsonl", "-o", "out.jsonl", "-e", "claims-router", "--max-tokens", "4",
            "--concurrency", "1", "--json"]  # fmt: skip
    code, out, err = batch(capsys, *args, "--max-errors", "1")
    assert code == 1
    assert err.startswith("error: the job stopped: 2 rows failed, more than --max-errors 1")
    assert len(err.strip().splitlines()) == 1
    stopped = json.loads(out)
    assert (stopped["answered"], stopped["failed"]) == (5, 2)
    assert not (here / "out.jsonl").exists() and (here / "out.jsonl.batch").is_dir()

    # resuming with other settings would answer rows two ways: refused, nothing sent
    code, _, err = batch(capsys, *args, "--max-tokens", "5")
    assert code == 2 and "was started with --max-tokens 4, not 5" in err

    code, out, err = batch(capsys, *args, "--max-errors", "5")
    assert code == 0, err
    done = json.loads(out)
    assert (done["answered"], done["skipped"], done["failed"]) == (1, 5, 2)
    rows = read_jsonl(here / "out.jsonl")
    assert [r["row"] for r in rows] == [1, 2, 3, 4, 5, 6]
    failed = [r["row"] for r in rows if r["error"]]
    assert failed == [2, 5]
    assert all(r["answer"] is None and "tokens" in r["error"] for r in rows if r["error"])
    # every row has its record, the refused ones too (a client's mistake: refused)
    records = {r["id"]: r for r in world.records(done["job_id"])}
    assert sorted(records) == sorted(r["record_id"] for r in rows)
    assert [records[r["record_id"]]["status"] for r in rows] == [
        "ok", "refused", "ok", "ok", "refused", "ok",
    ]  # fmt: skip


BAD_INPUTS = {
    "missing column": (
        "in.jsonl", '{"text": "hello"}\n', ["--prompt-column", "question"],
        "in.jsonl has no 'question' column; its columns are: text",
    ),
    "invalid line": (
        "in.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\nnot json\n', [],
        "in.jsonl line 3 is not valid JSON",
    ),
    "empty prompt": (
        "in.csv", "prompt\nfirst\n  \n", [], "in.csv row 2: the 'prompt' column is empty",
    ),
    "messages not json": (
        "in.csv", "messages\nhello\n", [], "in.csv row 1: the 'messages' column is not JSON",
    ),
    "not parquet": (
        "in.parquet", "prompt\nhello\n", [], "in.parquet is not a readable Parquet file",
    ),
    "no column to ask": (
        "in.jsonl", '{"question": "hi"}\n', [], "in.jsonl has no column to ask",
    ),
    "repeated id": (
        "in.csv", "id,prompt\n7,a\n8,b\n7,c\n", ["--id-column", "id"],
        "in.csv row 3 has the same id as row 1",
    ),
    "unknown endpoint": (
        "in.jsonl", '{"prompt": "hi"}\n', ["-e", "acme-nope"],
        "the model 'acme-nope' does not exist or you do not have access to it",
    ),
    "another tenant's endpoint": (
        "in.jsonl", '{"prompt": "hi"}\n', ["-e", "globex-support"],
        "the model 'globex-support' does not exist or you do not have access to it",
    ),
    "key without the scope": (
        "in.jsonl", '{"prompt": "hi"}\n', ["--api-key", "FEEDBACK"], "lacks the 'infer' scope",
    ),
    "an operator's --model with the exported key": (
        "in.jsonl", '{"prompt": "hi"}\n', ["--model", "acme-claims@champion"],
        "--model runs a version as an operator, with no API key. Drop the key (--api-key, or "
        "MODELYARD_API_KEY in the environment: `unset MODELYARD_API_KEY`)",
    ),
    "unknown version": (
        "in.jsonl", '{"prompt": "hi"}\n', ["--model", "acme-claims:7", "--api-key", ""],
        "acme-claims",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, content, extra, expected = BAD_INPUTS[case]
    (here / name).write_text(content)
    extra = [world.feedback_key if a == "FEEDBACK" else a for a in extra]
    if "-e" not in extra and "--model" not in extra:
        extra = ["-e", "claims-router", *extra]
    with world.store() as store:
        before = store.count_inference_records()
    code, _, err = batch(capsys, name, "-o", "out.jsonl", "--engine", "echo", *extra)
    assert code == 2, err
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in here.iterdir()) == [name]  # no output, no job state
    with world.store() as store:
        assert store.count_inference_records() == before


def test_a_job_killed_half_way_resumes_every_row_once_with_one_record_each(
    world: World, tmp_path: Path
) -> None:
    rows = 240
    questions = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(rows)]
    write_jsonl(tmp_path / "in.jsonl", questions)
    out = tmp_path / "out.jsonl"
    command = ["batch", "run", str(tmp_path / "in.jsonl"), "-o", str(out), "-e", "claims-router",
               "--engine", "echo", "--echo-delay-ms", "25", "--concurrency", "4",
               "--id-column", "id", "--json"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    job = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first_part = out.with_name("out.jsonl.batch") / "part-00000001.jsonl"
    deadline = time.monotonic() + 120
    while not first_part.exists():
        assert job.poll() is None, "the job ended before it was killed"
        assert time.monotonic() < deadline, "no part committed within 120 s"
        time.sleep(0.02)
    time.sleep(0.3)  # rows answered (records written) since that commit, not yet kept
    job.send_signal(signal.SIGKILL)
    assert job.wait(10) == -signal.SIGKILL
    assert not out.exists()
    committed = sum(
        len(p.read_text().splitlines()) for p in out.with_name("out.jsonl.batch").glob("part-*")
    )
    assert 0 < committed < rows

    again = modelyard(*command, home=world.home, env={"MODELYARD_API_KEY": world.key})
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert summary["skipped"] == committed
    assert summary["answered"] == rows - committed
    assert summary["replaced"] >= 1  # the killed run's answers that never reached the output
    answers = read_jsonl(out)
    assert [a["row"] for a in answers] == list(range(1, rows + 1))
    assert [a["id"] for a in answers] == [f"q{i}" for i in range(rows)]
    assert all(a["error"] is None and a["version"] == "acme-claims:1" for a in answers)
    records = world.records(summary["job_id"])
    assert len(records) == rows  # one record per row: none twice, none missing
    assert {r["id"] for r in records} == {a["record_id"] for a in answers}
    assert {r["status"] for r in records} == {"ok"}
    assert not out.with_name("out.jsonl.batch").exists()


def test_the_docs_csv_example_runs_and_writes_the_columns_shown(
    world: World, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    found = re.search(r"`claims.csv`:\n\n```csv\n(.*?)```\n\n```bash\n(.*?)```", DOC, re.S)
    assert found is not None
    (here / "claims.csv").write_text(found.group(1))
    command = docs_command(found.group(2))
    shown = re.search(r"`routed.csv`:\n\n```csv\n(.*?)```", DOC, re.S)
    assert shown is not None
    capsys.readouterr()
    assert main(command) == 0, capsys.readouterr().err
    written = list(csv.reader((here / "routed.csv").read_text().splitlines()))
    documented = list(csv.reader(shown.group(1).splitlines()))
    assert written[0] == documented[0]
    assert [r[:2] for r in written] == [r[:2] for r in documented]  # row, claim_id
    assert {r[6] for r in written[1:]} == {"acme-claims:1"}


def test_the_docs_parquet_example_runs(
    world: World, here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    monkeypatch.delenv("MODELYARD_API_KEY")  # the operator's example: no key
    section = DOC.split("## Example: a Parquet file")[1].split("\n## ")[0]
    write, run, read = re.findall(r"```(?:python|bash)\n(.*?)```", section, re.S)
    snippets: dict[str, Any] = {}
    exec(write, snippets)  # the documented snippet, in a temporary directory
    capsys.readouterr()
    assert main(docs_command(run)) == 0, capsys.readouterr().err
    exec(read, snippets)
    printed = ast.literal_eval(capsys.readouterr().out)
    shown = ast.literal_eval("".join(re.findall(r"^#\s?(.*)$", read, re.M)))
    # the answers are the quickstart's trained version's; here a random adapter answers
    assert [(r["claim_id"], r["version"], r["error"]) for r in printed] == [
        (r["claim_id"], r["version"], r["error"]) for r in shown
    ]
    table = pq.read_table(here / "routed.parquet")
    assert table.schema.field("claim_id").type == pa.int64()
    assert table.column("version").to_pylist() == ["acme-claims:1"] * 2


@pytest.mark.parametrize(("extra", "in_flight"), [((), 3), (("--concurrency", "5"), 5)])
def test_rows_in_flight_default_to_what_the_engine_decodes_at_once(
    world: World,
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    in_flight: int,
) -> None:
    """Without --concurrency a job sends as many rows at once as its engine decodes
    together (--max-batch-size; --vllm-max-num-seqs on vLLM, whose journey test checks
    it): a fixed 16 left a vLLM server decoding 16 of the 256 rows it could."""
    import modelyard.batch

    sent: list[int] = []
    real = modelyard.batch.run_file_job

    def run_file_job(store: Any, engine: Any, spec: Any, **kw: Any) -> Any:
        sent.append(spec.concurrency)
        return real(store, engine, spec, **kw)

    monkeypatch.setattr(modelyard.batch, "run_file_job", run_file_job)
    write_jsonl(here / "in.jsonl", [{"prompt": f"row {i}"} for i in range(4)])
    args = ["in.jsonl", "-o", "out.jsonl", "-e", "claims-router", "--engine", "echo"]
    code, out, err = batch(capsys, *args, "--max-batch-size", "3", *extra, "--json")
    assert code == 0, err
    assert json.loads(out)["answered"] == 4
    assert sent == [in_flight]
