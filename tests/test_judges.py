"""Judges: definitions, what a judge is asked, scores parsed, the cache, calls and cost kept,
and ``judge.NAME`` in ``evaluate`` and its gates. (A judge backed by a trained adapter, and
judges in rollout guards, are in ``test_judges_e2e.py``.)"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.access import create_api_key
from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.errors import ConfigError
from modelyard.judges import JudgeInput, parse_score, render
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving._engine import Generation, TokenStream
from modelyard.store import ModelVersion, Store
from tinymodels import QUICK_BASE, random_adapter
from worlds import fake_world, tiny_helpdesk_version


class LastLineEngine(EchoEngine):
    """Answers with the last line of what the user wrote (the chat's last line before the
    template's response marker): a judge whose verdict is written in what it is shown."""

    name = "last-line"

    def stream(self, version: ModelVersion, prompt: str, params: Any) -> TokenStream:
        lines = [line for line in prompt.strip().splitlines() if line.strip()]
        if lines and lines[-1].startswith("### Response"):
            lines.pop()
        text = lines[-1].strip() if lines else ""
        stream = TokenStream()
        stream.push(text)
        stream.finish(Generation(text, len(prompt.split()), len(text.split()), "stop", 0.0))
        return stream


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


# -- what a judge is asked, and what its answer scores ----------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 4", 4.0),
        ("score:5", 5.0),
        ("**Score:** 3.5 because it is partly right", 3.5),
        ("I would give it a 2 out of 5.", 2.0),
        ("Score: 7", None),  # out of the scale: not a cue to look further
        ("It deserves 10, or 0", None),
        ("On a scale of 1-5, I would give it 4", 4.0),  # the scale is not the score
        ("Out of 5 points: 2", 2.0),
        ("Rating 1 to 5: 3", 3.0),
        ("4/5", 4.0),
        ("no number at all", None),
        ("", None),
    ],
)
def test_a_score_is_read_from_the_judges_answer(text: str, score: float | None) -> None:
    assert parse_score(text) == score


def test_rubrics_lay_out_the_fields_they_need_and_name_a_missing_one() -> None:
    system, user = render(
        "correctness", None,
        JudgeInput(answer="Printer queue.", question="Where?", reference="Hardware queue."),
    )  # fmt: skip
    assert "reference" in system and "Score: N" in system
    assert user == "Question:\nWhere?\n\nReference:\nHardware queue.\n\nAnswer:\nPrinter queue."
    # relevance needs no reference, and shows none even when given one
    _, user = render("relevance", None, JudgeInput(answer="A", question="Q", reference="R"))
    assert user == "Question:\nQ\n\nAnswer:\nA"
    with pytest.raises(ConfigError, match="the faithfulness rubric needs a context"):
        render("faithfulness", None, JudgeInput(answer="A", question="Q"))
    system, user = render(
        "custom", "Policy: be kind.\nQ: {question}\nA: {answer}", JudgeInput("yes", "why?")
    )
    assert user == "Policy: be kind.\nQ: why?\nA: yes" and "Score: N" in system


# -- the CLI: definitions, refusals, scoring a file, the cache --------------------------------


@pytest.fixture
def served_judge(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, str]]:
    """The home's store with endpoint ``judge-ep`` served by ``LastLineEngine`` on a real
    server; the judge's key is in $JUDGE_KEY. Yields (store, the server's /v1 URL)."""
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, endpoint="judge-ep")
    monkeypatch.setenv("JUDGE_KEY", create_api_key(store, "acme")[1])
    app = create_app(store, LastLineEngine(), refresh_seconds=0.1)
    with BackgroundServer(app) as server:
        yield store, server.base_url + "/v1"
    store.close()


def _judge_records(store: Store, expected: int) -> int:
    """The judge endpoint's finished records, once there are ``expected`` (the server's
    record writer writes them a moment after each answer) or after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        records = store.list_inference_records(endpoint="judge-ep", limit=1000)
        done = sum(1 for r in records if r.status != "running")
        if done >= expected or time.monotonic() > deadline:
            return done
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--rubric vibes --url http://127.0.0.1:1/v1 --model m", "unknown rubric 'vibes'"),
        ("--rubric custom --url http://127.0.0.1:1/v1 --model m", "rubric custom needs a prompt"),
        ("--rubric safety --url 127.0.0.1:1 --model m", "is not an http(s) URL"),
        (
            "--rubric safety --url http://127.0.0.1:1/v1 --model m --api-key-env sk-123",
            "is not an environment variable's name",
        ),
        ("--rubric safety --url http://127.0.0.1:1/v1 --model m --max-tokens 0", "use 1 to 256"),
    ],
)
def test_a_bad_definition_exits_2_in_one_line_and_stores_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], args: str, message: str
) -> None:
    code, _, err = run(capsys, f"modelyard judges add j1 {args}")
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, err
    assert "Traceback" not in err
    code, out, _ = run(capsys, "modelyard judges list --json")
    assert code == 0 and json.loads(out) == []


def test_a_custom_prompts_placeholders_are_checked(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("Is {answr} polite?")
    url = "--url http://127.0.0.1:1/v1 --model m"
    code, _, err = run(
        capsys, f"modelyard judges add j1 --rubric custom --prompt-file {prompt} {url}"
    )
    assert code == 2 and "unknown placeholder 'answr'" in err and "{answer}" in err


def test_a_file_of_answers_is_scored_once_and_every_call_kept_with_its_cost(
    served_judge: tuple[Store, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, url = served_judge
    add = f"modelyard judges add echo --rubric relevance --url {url} --model judge-ep"
    code, out, err = run(
        capsys, f"{add} --api-key-env JUDGE_KEY --input-per-1k 1 --output-per-1k 2"
    )
    assert code == 0, err
    assert "judge echo revision 1: relevance by judge-ep" in out and "judge.echo" in out
    code, _, err = run(capsys, f"{add} --api-key-env JUDGE_KEY")
    assert code == 2 and "judge 'echo' already exists (revision 1)" in err and "--replace" in err

    answers = tmp_path / "answers.jsonl"
    rows = [
        {"question": "Printer?", "answer": "It is a hardware issue.\nScore: 5"},
        {"question": "Login?", "answer": "Score: 2"},
        {"question": "Wi-Fi?", "answer": "I do not know."},  # the judge gives no score
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = tmp_path / "scored.jsonl"
    code, out, err = run(capsys, f"modelyard judges score echo --data {answers} --out {scored}")
    assert code == 0, err
    assert "judge.echo: 3.500 over 2 of 3 answers (0 from the cache, 1 without a score" in out
    assert "no score from 1 to 5 in the answer 'I do not know.'" in out
    written = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [r["judge.echo"] for r in written] == [5.0, 2.0, None]
    assert written[2]["judge_error"].startswith("no score")
    calls = _judge_records(store, 3)
    assert calls == 3  # each call is an inference record of the judge's endpoint too

    code, out, err = run(capsys, f"modelyard judges score echo --data {answers} --json")
    again = json.loads(out)
    assert (again["mean"], again["cached"], again["scored"]) == (3.5, 2, 2)
    # only the answer without a score is asked again
    assert _judge_records(store, calls + 1) == calls + 1

    code, out, _ = run(capsys, "modelyard judges list --json")
    (listed,) = json.loads(out)
    usage = listed["usage"]
    assert (usage["calls"], usage["failed"]) == (4, 2)
    records = store.list_inference_records(endpoint="judge-ep", limit=1000)
    tokens_in = sum(r.prompt_tokens for r in records)
    tokens_out = sum(r.completion_tokens for r in records)
    assert usage["prompt_tokens"] == tokens_in and usage["completion_tokens"] == tokens_out
    assert usage["cost"] == pytest.approx((tokens_in * 1 + tokens_out * 2) / 1000)

    # A changed judge judges afresh; the change is audited.
    code, out, err = run(capsys, f"{add} --api-key-env JUDGE_KEY --max-tokens 8 --replace")
    assert code == 0 and "revision 2" in out, err
    code, out, _ = run(capsys, f"modelyard judges score echo --data {answers} --json")
    assert json.loads(out)["cached"] == 0
    puts = store.list_audit_events(action="judge.put", newest_first=False)
    assert [e.payload["revision"] for e in puts] == [1, 2]
    assert puts[1].payload["max_tokens"] == 8


def test_a_judge_without_its_key_or_its_server_says_which(
    served_judge: tuple[Store, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = served_judge
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"answer": "Score: 4"}) + "\n")
    code, _, err = run(
        capsys, f"modelyard judges add k --rubric safety --url {url} --model judge-ep "
        "--api-key-env NOT_SET_ANYWHERE",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, f"modelyard judges score k --data {answers}")
    assert code == 2 and "reads its API key from $NOT_SET_ANYWHERE, which is not set" in err

    code, _, err = run(
        capsys, "modelyard judges add gone --rubric safety --url http://127.0.0.1:9/v1 "
        "--model judge-ep",
    )  # fmt: skip
    assert code == 0, err
    (tmp_path / "q.jsonl").write_text(json.dumps({"answer": "Score: 4"}) + "\n")
    code, _, err = run(
        capsys, f"modelyard judges add rel --rubric relevance --url {url} --model judge-ep"
    )
    assert code == 0, err
    code, _, err = run(capsys, f"modelyard judges score rel --data {tmp_path / 'q.jsonl'}")
    assert code == 2 and err.startswith(
        "error: --data row 1: the relevance rubric needs a question"
    )
    code, _, err = run(capsys, f"modelyard judges score gone --data {answers}")
    assert code == 1 and "judge 'gone' scored none of 1 answers: APIConnectionError" in err
    code, _, err = run(capsys, f"modelyard judges score nobody --data {answers}")
    assert code == 1 and "no judge named 'nobody'" in err


# -- judge.NAME in evaluate and its gates ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judged")
    base = create_tiny_base(domain_corpus(DOMAINS, 200, seed=0), root / "base", **QUICK_BASE).path
    rows = synthetic_domain("it-support", 4, seed=0)
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "base": base,
        "adapter": random_adapter(base, root / "a1", seed=1),
        "data": root / "eval.jsonl",
    }


def test_a_gate_on_a_judge_is_judged_on_the_versions_answers_and_recorded(
    served_judge: tuple[Store, str],
    home: Path,
    tiny: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, url = served_judge
    version = tiny_helpdesk_version(store, home, tiny)
    prompt = tmp_path / "strict.txt"
    prompt.write_text("Grade the answer to: {question}\n{answer}\nScore: 3")  # always 3
    code, _, err = run(
        capsys, f"modelyard judges add strict --rubric custom --prompt-file {prompt} "
        f"--url {url} --model judge-ep --api-key-env JUDGE_KEY",
    )  # fmt: skip
    assert code == 0, err
    evaluate = (
        f"modelyard evaluate --model {version.ref} --data {tiny['data']} --max-new-tokens 4 "
        "--metrics judge.strict"
    )
    code, out, err = run(capsys, f'{evaluate} --gate "judge.strict >= 4.0" --json')
    assert code == 1, err
    result = json.loads(out)
    assert result["metrics"] == {"judge.strict": 3.0}
    assert result["judges"]["judge.strict"]["scored"] == 4
    (verdict,) = result["verdicts"]
    assert verdict["metric"] == "judge.strict" and verdict["passed"] is False
    assert store.get_model_version("helpdesk", 1).metrics["gates"]["passed"] is False
    # the judge saw the rows' own questions, not the prompt template
    asked = [r.prompt or "" for r in store.list_inference_records(endpoint="judge-ep", limit=10)]
    assert all("### Instruction" in p for p in asked)  # the judge endpoint's own template
    assert any(tiny_question(tiny["data"]) in p for p in asked)

    code, out, err = run(capsys, f'{evaluate} --gate "judge.strict >= 3.0"')
    assert code == 0, err
    assert "judge.strict" in out and "passed (1 of 1 gates)" in out
    code, _, err = run(capsys, f'{evaluate} --gate "judge.nobody >= 3.0"')
    assert code == 1 and "no judge named 'nobody'" in err


def tiny_question(data: Path) -> str:
    row = json.loads(data.read_text().splitlines()[0])
    return str(row["instruction"])


# -- the docs' examples -----------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "judges.md"


def _shown(command: str) -> tuple[str, list[str]]:
    """The command line and the lines it printed, of the docs' block starting ``$ command``."""
    text = DOCS.read_text(encoding="utf-8")
    block = text[text.index(f"$ {command}") :].split("```", 1)[0]
    line, *printed = block.strip().splitlines()
    return line[2:], printed


def test_the_docs_examples_print_what_they_show(
    served_judge: tuple[Store, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = served_judge
    command, printed = _shown("modelyard judges add j1")
    code, _, err = run(capsys, command)
    assert code == 2 and err.strip().splitlines() == printed

    text = DOCS.read_text(encoding="utf-8")
    define = text[text.index("modelyard judges add quality") :].split("```", 1)[0]
    define = define.replace("\\\n", " ").replace("http://127.0.0.1:8000/v1", url)
    code, _, err = run(capsys, define.strip())
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    rows = [
        {"question": "Printer?", "answer": "It is a hardware issue.\nScore: 5"},
        {"question": "Login?", "answer": "Score: 2"},
        {"question": "Wi-Fi?", "answer": "I do not know."},
    ]
    Path("answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    command, printed = _shown("modelyard judges score quality")
    code, out, err = run(capsys, command)
    assert code == 0, err

    def masked(lines: list[str]) -> list[str]:
        return [re.sub(r"cost [0-9.e-]+", "cost C", line) for line in lines]

    assert masked(out.strip().splitlines()) == masked(printed), out
