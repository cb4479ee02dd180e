"""An outside review of batch jobs, gates, judges and from-records: what a user relies on
when the input is odd, a job is run again, or a server dies mid-job.

The batch tests use the world of ``test_batch`` (``batchworld``) on the echo engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchworld import World, batch, build_world, enter, write_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("review-batch"))


@pytest.fixture
def here(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(world, tmp_path, monkeypatch)


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
    assert "the output out.jsonl was written with --max-tokens " in err and "--overwrite" in err
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_rows_a_dead_server_failed_are_asked_again_when_the_stopped_job_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's version is an upstream whose server is down: the job stops at
    --max-errors 0 and says to fix the cause and run the same command again. Once the
    server is up, that command answers the failed row too, each row keeping one record."""
    from modelyard.access import create_api_key
    from modelyard.artifacts import LocalArtifactStore
    from modelyard.registry import UpstreamSpec, register_upstream
    from modelyard.serving import BackgroundServer, EchoEngine, create_app
    from modelyard.store import Store
    from worlds import fake_world, home_store

    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    with home_store(home) as store:
        fake_world(store, tenant="acme", model="bot", endpoint=None, versions=1)
        spec = UpstreamSpec(base_url=f"http://127.0.0.1:{port}/v1", model="vendor-chat",
                            api_key_env="REVIEW_VENDOR_KEY", max_retries=0,
                            connect_timeout_s=2.0)  # fmt: skip
        artifacts = LocalArtifactStore(home / "artifacts")
        register_upstream(store, artifacts, spec, name="bot", tenant="acme")
        store.create_endpoint("support", model_ref="bot:2", tenant="acme")
        _, key = create_api_key(store, "acme", scopes=("infer",))
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.setenv("MODELYARD_API_KEY", key)
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(3)])
    args = ["in.jsonl", "-o", "out.jsonl", "-e", "support", "--engine", "echo",
            "--concurrency", "1", "--max-errors", "0", "--json"]  # fmt: skip

    with Store.open(f"sqlite:///{tmp_path / 'vendor.db'}") as vendor:
        fake_world(vendor, tenant="vendor", model="vendor-bot", endpoint="vendor-chat")
        _, vendor_key = create_api_key(vendor, "vendor")
        monkeypatch.setenv("REVIEW_VENDOR_KEY", vendor_key)

        code, out, err = batch(capsys, *args)  # nothing listens at the upstream's port
        assert code == 1, err
        assert "the job stopped: 1 rows failed" in err and "run the same command again" in err
        assert "REVIEW_VENDOR_KEY" not in err  # the server is down, nothing else
        assert not (tmp_path / "out.jsonl").exists()

        app = create_app(vendor, EchoEngine(), refresh_seconds=0.2, heartbeat_s=None)
        with BackgroundServer(app, port=port):
            code, out, err = batch(capsys, *args)  # the same command, the server up again
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["answered"], summary["retried"], summary["failed"]) == (3, 1, 0)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rows] == [None, None, None]
    assert {r["version"] for r in rows} == {"bot:2"}
    with home_store(home) as store:
        records = store.query_records(job_id=summary["job_id"], limit=None)
    assert sorted(r["id"] for r in records) == sorted(r["record_id"] for r in rows)
    assert {r["status"] for r in records} == {"ok"}


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ("exact_match >= 85", "exact_match is between 0 and 1; 85 is outside it. Write a "
         "share, not a percentage: 0.85 for 85%."),
        ("judge.quality >= 7", "judge.quality is between 1 and 5; 7 is outside it"),
        ("perplexity < 0.5", "perplexity is never below 1"),
        ("p95_latency_ms <= -5", "p95_latency_ms is never below 0"),
    ],
)  # fmt: skip
def test_a_gate_no_model_can_pass_is_refused_before_anything_runs(
    gate: str, expected: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main

    write_jsonl(here / "held-out.jsonl", [{"instruction": "Which team?", "output": "auto"}])
    capsys.readouterr()
    code = main(["evaluate", "--model", "acme-claims:1", "--data", "held-out.jsonl",
                 "--gate", gate])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: gate {gate!r}: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_gate_at_the_edge_of_its_metric_still_parses() -> None:
    from modelyard.evaluation import parse_gates

    gates = ["exact_match >= 1", "accuracy >= 0", "perplexity <= 1", "judge.quality >= 5"]
    assert [g.text for g in parse_gates(gates)] == gates


def test_judges_score_refuses_an_empty_reference_cell_before_calling_the_judge(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV has no missing values, only empty cells: an empty reference is no reference,
    refused with its row (exit 2), not shown to the judge as the answer to compare with.
    The judge's URL has nothing behind it: a call would fail, exit 1."""
    from modelyard.cli import main

    capsys.readouterr()
    assert main(["judges", "add", "review-correct", "--rubric", "correctness",
                 "--url", "http://127.0.0.1:9/v1", "--model", "m"]) == 0  # fmt: skip
    (here / "answers.csv").write_text("answer,reference\nauto,auto\nproperty,\n")
    capsys.readouterr()
    code = main(["judges", "score", "review-correct", "--data", "answers.csv"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --data row 2: the correctness rubric needs a reference"), err

    (here / "answers.jsonl").write_text('{"response": "auto", "reference": "auto"}\n')
    code = main(["judges", "score", "review-correct", "--data", "answers.jsonl"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--data row 1: no 'answer' (its columns: response, reference)" in err, err


def test_evaluate_refuses_an_empty_context_cell_for_a_faithfulness_judge(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty context is no context: the row is refused before any model loads (exit 2),
    not judged for faithfulness to nothing."""
    from modelyard.cli import main

    monkeypatch.delenv("MODELYARD_API_KEY")
    capsys.readouterr()
    assert main(["judges", "add", "review-grounded", "--rubric", "faithfulness",
                 "--url", "http://127.0.0.1:9/v1", "--model", "m"]) == 0  # fmt: skip
    (here / "held-out.csv").write_text(
        "instruction,output,context\nWhich team?,auto,The car was hit.\nWhich team?,property,\n"
    )
    capsys.readouterr()
    code = main(["evaluate", "--model", "acme-claims:1", "--data", "held-out.csv",
                 "--metrics", "judge.review-grounded"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(
        "error: --data row 2: judge.review-grounded (faithfulness rubric) needs a context"
    ), err


def test_from_records_refuses_an_out_that_is_not_jsonl_before_writing(
    world: World, here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are JSONL: under a .csv name they would be read as CSV by `data validate`
    and the fine-tune, and registered as a dataset that cannot be read."""
    from modelyard.cli import main

    monkeypatch.delenv("MODELYARD_API_KEY")
    with world.store() as store:
        datasets = len(store.list_datasets())
    capsys.readouterr()
    code = main(["data", "from-records", "-e", "claims-router", "--since", "1d",
                 "--out", "rows.csv"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --out rows.csv is not named .jsonl: the rows are written"), err
    assert "Name it rows.jsonl" in err
    assert not (here / "rows.csv").exists()
    with world.store() as store:
        assert len(store.list_datasets()) == datasets


def test_from_records_that_cannot_write_its_rows_registers_no_dataset(
    world: World, here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: one line naming the file (exit 2), no dataset version without its file."""
    import errno

    from modelyard.cli import main

    write_jsonl(here / "asked.jsonl", [{"prompt": "a question from traffic"}])
    assert batch(capsys, "asked.jsonl", "-o", "answered.jsonl", *ECHO)[0] == 0  # a record
    monkeypatch.delenv("MODELYARD_API_KEY")
    with world.store() as store:
        datasets = len(store.list_datasets())
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if "rows.jsonl" in self.name:  # the file, or its staged copy beside it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    capsys.readouterr()
    code = main(["data", "from-records", "-e", "claims-router", "--since", "1d",
                 "--out", "rows.jsonl"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot write the rows to rows.jsonl: No space left on device" in err, err
    assert not list(here.glob("*rows.jsonl*"))
    with world.store() as store:
        assert len(store.list_datasets()) == datasets


@pytest.mark.parametrize(
    ("stops", "expected"),
    [
        (["a", "b", "c", "d", "e"], "--stop is given 5 times; a request takes at most 4"),
        ([""], "--stop '': a stop string has 1 to 256 characters"),
    ],
)
def test_stop_strings_the_chat_route_would_refuse_are_refused_before_any_row(
    stops: list[str], expected: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(here / "in.jsonl", [{"prompt": "hello"}])
    flags = [a for stop in stops for a in ("--stop", stop)]
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO, *flags)
    assert code == 2, err
    assert err.startswith(f"error: {expected}"), err
    assert sorted(p.name for p in here.iterdir()) == ["in.jsonl"]


def test_ctrl_c_says_what_was_kept_and_the_same_command_goes_on(
    world: World, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from clihelp import modelyard

    rows = 200
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / "out.jsonl"
    command = ["batch", "run", str(tmp_path / "in.jsonl"), "-o", str(out), "-e",
               "claims-router", "--engine", "echo", "--echo-delay-ms", "25", "--concurrency",
               "4"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(world.home), "MODELYARD_API_KEY": world.key}
    job = subprocess.Popen(
        [sys.executable, "-m", "modelyard", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first_part = tmp_path / "out.jsonl.batch" / "part-00000001.jsonl"
    deadline = time.monotonic() + 120
    while not first_part.exists():
        assert job.poll() is None, "the job ended before Ctrl+C"
        assert time.monotonic() < deadline, "no part committed within 120 s"
        time.sleep(0.02)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 130, err
    kept = sum(len(p.read_text().splitlines()) for p in first_part.parent.glob("part-*"))
    assert f"stopped (Ctrl+C): {kept} answered rows are kept in {first_part.parent}" in err
    assert "run the same command again" in err and "Traceback" not in err

    again = modelyard(*command, "--json", home=world.home, env={"MODELYARD_API_KEY": world.key})
    assert again.code == 0, again.err
    assert json.loads(again.out)["skipped"] == kept
    assert len(out.read_text().splitlines()) == rows


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"prompt": "x", "max_tokens": 5.0}, "'max_tokens' is 5.0, not a whole number"),
        ({"prompt": "x", "max_tokens": "5"}, """'max_tokens' is "5", not a whole number"""),
        ({"prompt": "x", "temperature": "hot"}, """'temperature' is "hot", not a number"""),
    ],
)  # fmt: skip
def test_a_stream_message_with_a_bad_setting_is_dead_lettered_saying_what_it_holds(
    body: dict[str, Any], reason: str
) -> None:
    """The dead letter's reason is what the producer reads to fix the message: 5.0 is a
    number, and "not a number" sent them looking for the wrong mistake."""
    from modelyard.serving import SamplingParams
    from modelyard.stream import BadMessage, Delivery, parse_request

    delivery = Delivery("1-0", {"body": json.dumps(body).encode()})
    with pytest.raises(BadMessage) as refused:
        parse_request(delivery, SamplingParams(max_tokens=16), None, 256)
    assert refused.value.message == f"the body's {reason}"


def test_from_records_will_not_write_over_the_training_data_it_excludes(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.cli import main

    write_jsonl(here / "asked.jsonl", [{"prompt": "a question from traffic"}])
    assert batch(capsys, "asked.jsonl", "-o", "answered.jsonl", *ECHO)[0] == 0  # a record
    monkeypatch.delenv("MODELYARD_API_KEY")
    train = write_jsonl(here / "train.jsonl", [{"instruction": "Which team?", "output": "auto"}])
    before = train.read_text()
    capsys.readouterr()
    code = main(["data", "from-records", "-e", "claims-router", "--since", "1d",
                 "--exclude", "train.jsonl", "--out", "./train.jsonl"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --out train.jsonl is also an exclude file"), err
    assert train.read_text() == before


def test_answers_of_the_echo_engine_are_not_taken_for_the_models(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--engine echo` is the docs' fake for trying the command: the real run after it, to
    the same output, must not find the fake answers and call the job done."""
    write_jsonl(here / "in.jsonl", [{"prompt": "Which team handles a cracked windshield?"}])
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", *ECHO)
    assert code == 0, err
    fake = (here / "out.jsonl").read_text()
    code, _, err = batch(capsys, "in.jsonl", "-o", "out.jsonl", "-e", "claims-router", "--json")
    assert code == 2, err
    assert 'the output out.jsonl was written with --engine "echo", not "transformers"' in err
    assert (here / "out.jsonl").read_text() == fake


def test_evaluate_refuses_a_row_whose_prompt_leaves_no_room_in_the_context(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny base has 256 positions: a 400-word instruction used to be answered past
    them, and its noise scored as the version's answer (exit 0)."""
    from modelyard.cli import main

    monkeypatch.delenv("MODELYARD_API_KEY")
    long = " ".join(f"word{i}" for i in range(400))
    write_jsonl(here / "held-out.jsonl", [{"instruction": "short", "output": "auto"},
                                          {"instruction": long, "output": "auto"}])  # fmt: skip
    capsys.readouterr()
    code = main(["evaluate", "--model", "acme-claims:1", "--data", "held-out.jsonl"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: row 2: its prompt is" in err and "over the model's context of 256" in err
    assert len(err.strip().splitlines()) == 1, err
