"""`modelyard data from-records`: production traffic and feedback become the next dataset.

The proof (issue 19): a fine-tuned version serves traffic through the real app, people
give feedback (good answers, some with the right label; bad ones), `data from-records`
builds a dataset from the good answers (a hash-only tenant's records skipped and counted,
a duplicate and a row already trained on left out), `finetune` trains on it, and the new
version's lineage lists exactly those records. Around it: the templates' inverse, the
storage policies, the filters and bad input.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.base import create_tiny_base
from modelyard.data import (
    DOMAINS,
    PromptTemplate,
    domain_corpus,
    parse_prompt,
    render_prompt,
    row_from_prompt,
    synthetic_domain,
)
from modelyard.errors import ConfigError, DataError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import NewInferenceRecord, StoragePolicy, Store
from worlds import fake_world

QUICK_BASE: dict[str, Any] = {
    "steps": 8,
    "batch_size": 4,
    "seq_len": 64,
    "hidden_size": 32,
    "vocab_size": 512,
}
INSTRUCTION = "Which queue should take this ticket: network, hardware or access?"


# -- the templates' inverse ------------------------------------------------------------------

ROWS: dict[str, list[dict[str, Any]]] = {
    "alpaca": [
        {"instruction": "Name the queue.", "input": "My VPN drops.", "output": "network"},
        {"instruction": "Say hello in French.", "output": "Bonjour"},
        {"instruction": "Line one\nline two", "input": "  padded  ", "output": "x"},
        {"instruction": "Ünïcode ✓", "input": "### Response:\nnot the end", "output": "y"},
    ],
    "classification": [
        {"text": "the screen flickers", "label": "hardware"},
        {"text": "two\n\nparagraphs\n### Label:\ninside", "label": "access"},
    ],
    "chat-fallback": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and\nwith a newline?"},
                {"role": "assistant", "content": "still 4"},
            ]
        },
    ],
}


def _expected(template: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row as its template sees it (alpaca and classification strip their fields)."""
    if template == "alpaca":
        out = {"instruction": row["instruction"].strip(), "output": row["output"].strip()}
        return out | ({"input": row["input"].strip()} if row.get("input") else {})
    if template == "classification":
        return {"text": row["text"].strip(), "label": row["label"].strip()}
    return row


@pytest.mark.parametrize(
    ("template", "row"), [(t, r) for t, rows in ROWS.items() for r in rows], ids=str
)
def test_rendered_rows_parse_back_to_the_same_rows(template: str, row: dict[str, Any]) -> None:
    prompt, response = PromptTemplate(template).render(row)
    fmt = "chat" if template == "chat-fallback" else template
    parsed = row_from_prompt(template, prompt, response, fmt)
    assert parsed == _expected(template, row)
    assert PromptTemplate(template).render(parsed) == (prompt, response)
    assert row_from_prompt(template, prompt, response, "text") == {"text": prompt + response}


def test_a_prompt_two_rows_render_to_parses_to_one_that_trains_the_same() -> None:
    """A field holding the template's own separator: the prompt does not say which row it
    was, and every candidate renders (so trains) exactly the same."""
    template = PromptTemplate("chat-fallback")
    sneaky = [{"role": "user", "content": "a\n<|user|>\nb"}, {"role": "assistant", "content": "c"}]
    prompt, response = template.render({"messages": sneaky})
    parsed = row_from_prompt("chat-fallback", prompt, response, "chat")
    assert len(parsed["messages"]) == 3
    assert template.render(parsed) == (prompt, response)
    alpaca = PromptTemplate("alpaca")
    row = {"instruction": "x\n\n### Input:\ny", "output": "z"}
    prompt, response = alpaca.render(row)
    assert alpaca.render(row_from_prompt("alpaca", prompt, response, "alpaca"))[0] == prompt


@pytest.mark.parametrize(
    ("template", "prompt", "reason"),
    [
        ("alpaca", "sha256:" + "ab" * 32, "unparsable"),
        ("alpaca", "### Instruction:\n\n\n### Response:\n", "unparsable"),  # empty field
        ("alpaca", "### Instruction:\n padded\n\n### Response:\n", "unparsable"),  # unstripped
        ("alpaca", "### Instruction:\nhi\n\n### Response:\nleft over", "unparsable"),
        ("classification", "### Instruction:\nhi\n\n### Response:\n", "unparsable"),
        ("chat-fallback", "<|user|>\nhi\n", "unparsable"),  # no generation prompt
        ("chat-fallback", "hello\n<|user|>\nhi\n<|assistant|>\n", "unparsable"),
        ("chat", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "chat_template"),
    ],
)
def test_prompts_no_row_renders_to_are_refused_with_a_reason(
    template: str, prompt: str, reason: str
) -> None:
    fmt = {"chat-fallback": "chat"}.get(template, template)
    with pytest.raises(DataError) as info:
        row_from_prompt(template, prompt, "an answer", fmt)
    assert info.value.context["reason"] == reason


def test_other_formats_and_empty_answers_are_refused() -> None:
    prompt = render_prompt({"instruction": "hi"})
    assert parse_prompt("alpaca", prompt) == {"instruction": "hi"}
    with pytest.raises(DataError) as info:
        row_from_prompt("alpaca", prompt, "ok", "classification")
    assert info.value.context["reason"] == "format"
    with pytest.raises(DataError) as info:
        row_from_prompt("alpaca", prompt, "  \n", "alpaca")
    assert info.value.context["reason"] == "no_answer"
    # the tokenizer's chat template cannot be parsed, but its prompt is still good text
    chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert row_from_prompt("chat", chat, "hello", "text") == {"text": chat + "hello"}


# -- records in a store: policies, filters, training data, bad input -----------------------


def _add(store: Store, tenant: str, prompt: str | None, response: str | None, **extra: Any) -> str:
    record_id = f"rec-{len(store.list_inference_records(limit=10_000)):03d}"
    version = store.get_model_version("bot", extra.pop("version", 1))
    store.add_inference_records(
        [
            NewInferenceRecord(
                id=record_id,
                endpoint_name="support",
                route="chat.completions",
                latency_ms=1.0,
                status=extra.pop("status", "ok"),
                http_status=200,
                tenant_id=store.get_tenant(tenant).id,
                version_id=version.id,
                prompt=prompt,
                response=response,
                created_at=datetime.now(UTC) - extra.pop("ago", timedelta(minutes=5)),
                shadow=extra.pop("shadow", False),
            )
        ]
    )
    assert not extra, extra
    return record_id


def _alpaca(instruction: str, text: str = "") -> str:
    row = {"instruction": instruction, "input": text} if text else {"instruction": instruction}
    return render_prompt(row)


@pytest.fixture
def records_home(home: Path) -> Iterator[Path]:
    """A home whose store has model ``bot`` (alpaca) behind endpoint ``support`` of tenant
    ``acme``, and tenants ``vault`` (hash), ``quiet`` (none) and ``masked`` (redacted)."""
    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=2)
        policies: dict[str, StoragePolicy] = {"vault": "hash", "quiet": "none"}
        for tenant, policy in {**policies, "masked": "redacted"}.items():
            store.create_tenant(tenant, storage_policy=policy)
    yield home


def _collect(home: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = home.parent / "collected.jsonl"
    r = modelyard(
        "data", "from-records", "--endpoint", "support", "--since", "1h", "--out", str(out),
        "--json", *args, home=home,
    )  # fmt: skip
    return r.code, (json.loads(r.out) if r.code == 0 else {}), r.err


def test_policies_filters_and_reasons_are_counted(records_home: Path, tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        kept = _add(store, "acme", _alpaca("Route it.", "VPN down"), "network")
        _add(store, "vault", "sha256:" + "0" * 64, "sha256:" + "1" * 64)
        _add(store, "quiet", None, None)
        _add(store, "masked", _alpaca("Mail me at [EMAIL]"), "done")
        clean = _add(store, "masked", _alpaca("Nothing personal here"), "fine")
        _add(store, "acme", _alpaca("Broke."), None, status="error")
        labelled_error = _add(store, "acme", _alpaca("Broke again."), None, status="error")
        _add(store, "acme", "free text sent to /v1/completions", "whatever")
        _add(store, "acme", _alpaca("Route it.", "VPN down"), "network")  # duplicate
        _add(store, "acme", _alpaca("Shadowed."), "x", shadow=True)
        _add(store, "acme", _alpaca("Too old."), "x", ago=timedelta(hours=3))
        store.add_feedback(labelled_error, tenant="acme", score=1.0, label="hardware")
        store.add_feedback(clean, tenant="masked", score=-1.0, comment="meh")
    code, result, err = _collect(records_home)
    assert code == 0, err
    assert result["records_read"] == 10 and result["rows"] == 3
    assert result["lineage"]["record_ids"] == [kept, clean, labelled_error]
    skipped = {k: n for k, n in result["skipped"].items() if n}
    assert skipped == {
        "hashed": 1, "not_kept": 1, "redacted": 1, "no_answer": 1, "unparsable": 1,
        "duplicate": 1,
    }  # fmt: skip
    assert result["filtered"]["shadow"] == 1
    assert result["reasons"]["hashed"] == "the tenant keeps only hashes"
    rows = [json.loads(line) for line in (tmp_path / "collected.jsonl").read_text().splitlines()]
    assert rows[2] == {"instruction": "Broke again.", "output": "hardware"}  # the label wins
    assert result["validation"]["rows"] == 3

    code, result, err = _collect(records_home, "--min-score", "0.5", "--name", "good")
    assert code == 0, err
    assert result["lineage"]["record_ids"] == [labelled_error]
    assert result["filtered"]["min_score"] == 8
    code, result, err = _collect(records_home, "--label", "hardware", "--format", "text")
    assert code == 0, err
    assert result["rows"] == 1 and result["format"] == "text"
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        names = {(d.name, d.version) for d in store.list_datasets()}
        assert names == {("support-records", 1), ("good", 1)} | {("support-records", 2)}
        (good,) = store.list_datasets("good")
        assert good.report["lineage"]["filters"]["min_score"] == 0.5
        assert good.report["lineage"]["source"] == "inference_records"


def test_a_thumbs_down_with_the_right_answer_passes_min_score(records_home: Path) -> None:
    """A person who rates an answer down and gives the right one (a correction) makes the
    best row there is: its answer is the label, which the score does not rate. So
    ``--min-score`` keeps it; a bad answer without a correction stays out."""
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        good = _add(store, "acme", _alpaca("Route it.", "VPN down"), "network")
        corrected = _add(store, "acme", _alpaca("Badge?", "badge broken"), "network")
        bad = _add(store, "acme", _alpaca("Printer?", "paper jam"), "network")
        store.add_feedback(good, tenant="acme", score=1.0)
        store.add_feedback(corrected, tenant="acme", score=-1.0, label="access")
        store.add_feedback(bad, tenant="acme", score=-1.0)
    code, result, err = _collect(records_home, "--min-score", "0.5")
    assert code == 0, err
    assert result["lineage"]["record_ids"] == [good, corrected]
    assert result["filtered"]["min_score"] == 1
    rows = [
        json.loads(x) for x in (records_home.parent / "collected.jsonl").read_text().splitlines()
    ]
    assert rows[1]["output"] == "access"


def test_rows_of_exclude_files_are_left_out(records_home: Path, tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        _add(store, "acme", _alpaca("Route it.", "VPN down"), "network")
        other = _add(store, "acme", _alpaca("Route it.", "Badge broken"), "access")
    seen = tmp_path / "seen.jsonl"
    seen.write_text(
        json.dumps({"instruction": " Route it.", "input": "VPN down ", "output": "network"}) + "\n"
    )
    code, result, err = _collect(records_home, "--exclude", str(seen))
    assert code == 0, err
    assert result["lineage"]["record_ids"] == [other]
    assert result["skipped"]["in_training_data"] == 1
    assert result["training_data"] == [str(seen)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--endpoint", "nope"], "no endpoint named 'nope'"),
        (["--since", "yesterday"], "invalid --since 'yesterday'"),
        (["--until", "2h"], "the window is empty"),
        (["--version", "7"], "has no version 7"),
        (["--format", "alpacca"], "unknown dataset format 'alpacca'"),
        (["--status", "fine"], "unknown record status 'fine'"),
        (["--min-score", "3"], "--min-score 3.0 is out of range"),
        (["--name", "../up"], "invalid dataset name"),
        (["--label", "nobody-gave-this"], "no training rows in 1 records"),
        (["--since", "2000-01-01", "--until", "2000-01-02"], "has no records in the window"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    records_home: Path, args: list[str], expected: str
) -> None:
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        _add(store, "acme", _alpaca("Route it.", "VPN down"), "network")
    out = records_home.parent / "never.jsonl"
    base = ["--endpoint", "support", "--since", "1h", "--out", str(out)]
    r = modelyard("data", "from-records", *base, *args, home=records_home)
    assert r.code == 2, (r.out, r.err)
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert expected in r.err, r.err
    assert not out.exists()


# -- the proof: serve, feedback, dataset, fine-tune, lineage -------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _finetune(project: Path, base: Path, train: str, home: Path) -> dict[str, Any]:
    config = {
        "base_model": str(base),
        "data": {"train": train, "eval": "eval.jsonl", "format": "alpaca"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "seed": 0},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
        "registry": {"model": "helpdesk"},
    }
    path = project / f"{Path(train).stem}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    r = modelyard("finetune", "-c", str(path), "--json", home=home)
    assert r.code == 0, r.err
    result: dict[str, Any] = json.loads(r.out)
    return result


def _ask(url: str, key: str, ticket: str) -> str:
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="helpdesk-ep",
            messages=[
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": ticket},
            ],
        )
    return reply.id


def _feedback(url: str, key: str, request_id: str, **body: Any) -> dict[str, Any]:
    reply = httpx.post(
        url + "/v1/feedback",
        json={"request_id": request_id, **body},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_served_traffic_and_feedback_become_the_next_versions_data(
    home: Path, tmp_path: Path
) -> None:
    base = create_tiny_base(
        domain_corpus(DOMAINS, 300, seed=0), tmp_path / "base", **QUICK_BASE
    ).path
    trained = synthetic_domain("it-support", 24, seed=0)
    _write_jsonl(tmp_path / "train.jsonl", trained[:16])
    _write_jsonl(tmp_path / "eval.jsonl", trained[16:])
    assert _finetune(tmp_path, base, "train.jsonl", home)["ref"] == "helpdesk:1"  # makes home

    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.create_tenant("acme")
        store.create_tenant("vault", storage_policy="hash")
        store.create_endpoint("helpdesk-ep", model_ref="helpdesk:1", tenant=None, shared=True)
        acme, vault = create_api_key(store, "acme")[1], create_api_key(store, "vault")[1]
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with BackgroundServer(app) as server:
            url = server.base_url
            good: list[str] = []
            for ticket, label in [
                ("The office printer jams on every page.", "hardware"),
                ("I cannot log in to the payroll portal since Monday.", "access"),
                ("Wi-Fi on the third floor keeps dropping.", None),  # the model's answer
            ]:
                good.append(_ask(url, acme, ticket))
                reply = _feedback(url, acme, good[-1], thumbs="up", label=label)
                assert reply["label"] == label
            bad = _ask(url, acme, "My monitor shows nothing at all.")
            _feedback(url, acme, bad, thumbs="down", comment="wrong queue")
            again = _ask(url, acme, "The office printer jams on every page.")
            _feedback(url, acme, again, score=0.8, label="hardware")  # a duplicate
            old = trained[0]  # already trained on, answered and labelled the same
            known = _ask(url, acme, old["input"])
            _feedback(url, acme, known, thumbs="up", label=old["output"])
            for ticket in ("Private: my badge is blocked.", "Private: VPN is slow."):
                _feedback(url, vault, _ask(url, vault, ticket), thumbs="up")
        labels = {f.record_id: f.label for f in store.list_feedback()}
        assert labels[good[0]] == "hardware" and labels[bad] is None

    out = tmp_path / "from-traffic.jsonl"
    r = modelyard(
        "data", "from-records", "--endpoint", "helpdesk-ep", "--since", "1h",
        "--min-score", "0.5", "--out", str(out), "--name", "helpdesk-feedback", "--json",
        home=home,
    )  # fmt: skip
    assert r.code == 0, r.err
    collected = json.loads(r.out)
    assert collected["lineage"]["record_ids"] == good
    assert collected["skipped"]["hashed"] == 2
    assert collected["skipped"]["duplicate"] == 1
    assert collected["skipped"]["in_training_data"] == 1
    assert collected["filtered"]["min_score"] == 1
    assert collected["training_data"] == ["train:1"]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["output"] for r in rows[:2]] == ["hardware", "access"]
    assert all(r["instruction"] == INSTRUCTION for r in rows)

    text = modelyard(
        "data", "from-records", "--endpoint", "helpdesk-ep", "--since", "1h",
        "--min-score", "0.5", "--out", str(tmp_path / "again.jsonl"), "--name",
        "helpdesk-feedback", home=home,
    )  # fmt: skip
    assert text.code == 0, text.err
    assert "the tenant keeps only hashes" in text.out and "hashed" in text.out

    tuned = _finetune(tmp_path, base, "from-traffic.jsonl", home)
    assert tuned["ref"] == "helpdesk:2"
    lineage = modelyard("registry", "lineage", "helpdesk:2", "--json", home=home)
    assert lineage.code == 0, lineage.err
    derived = json.loads(lineage.out)["lineage"]["dataset"]["derived_from"]
    assert derived["record_ids"] == good
    assert derived["records"] == 3 and derived["endpoint"] == "helpdesk-ep"
    assert derived["dataset"] == "helpdesk-feedback:1"
    tree = modelyard("registry", "lineage", "helpdesk:2", home=home)
    assert "derived from 3 inference records of endpoint helpdesk-ep" in tree.out, tree.out
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        (train,) = store.list_datasets("from-traffic")
        assert train.report["derived_from"] == {
            "dataset": "helpdesk-feedback:1", "records": 3, "endpoint": "helpdesk-ep",
        }  # fmt: skip

    # Those records are now helpdesk:2's training data: nothing new is left.
    r = modelyard(
        "data", "from-records", "--endpoint", "helpdesk-ep", "--since", "1h",
        "--min-score", "0.5", "--out", str(tmp_path / "nothing.jsonl"), home=home,
    )  # fmt: skip
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "already in the training data" in r.err


def test_a_feedback_label_is_stored_replaced_and_bounded(records_home: Path) -> None:
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        record = _add(store, "acme", _alpaca("Route it.", "VPN down"), "hardware")
        first = store.add_feedback(record, tenant="acme", score=-1.0, label="network")
        assert first.label == "network"
        again = store.add_feedback(record, tenant="acme", score=1.0)
        assert again.id == first.id and again.label is None  # the latest verdict wins whole
        with pytest.raises(ConfigError, match="at most 500"):
            store.add_feedback(record, tenant="acme", score=1.0, label="x" * 501)
        (row,) = store.query_records(endpoint="support")
        assert row["feedback_label"] is None and row["feedback_score"] == 1.0


# -- the docs' example ---------------------------------------------------------------------

DOC = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def _shown(line: str) -> re.Pattern[str]:
    """A line the docs show, as a pattern: its times and digests are the run's own."""
    pattern = re.escape(line)
    pattern = re.sub(r"\d{4}\\-\d{2}\\-\d{2}\\ \d{2}:\d{2}", r"\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}",
                     pattern)  # fmt: skip
    return re.compile(re.sub(r"sha256\\ [0-9a-f]{12}", r"sha256 [0-9a-f]{12}", pattern))


def test_the_docs_example_prints_what_it_shows(
    records_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/data.md's week of feedback on ``support``: two good answers of acme (one asked
    twice), two bad ones, one good answer of a tenant that keeps hashes; the first good
    answer was corrected with the label ``accounts``."""
    block = re.search(r"```console\n(\$ modelyard data from-records .*?)```", DOC, re.S)
    assert block is not None, "docs/data.md lost its from-records example"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip() and not line.startswith("..."):
            steps[-1][1].append(line.strip())
    answers = [  # (id, tenant, prompt, answer, score, label)
        ("chatcmpl-0001", "acme", _alpaca("Reset my password."), "it", 1.0, "accounts"),
        ("chatcmpl-0002", "acme", _alpaca("Route it.", "VPN down"), "network", 1.0, None),
        ("chatcmpl-0003", "acme", _alpaca("Route it.", "VPN down"), "network", 1.0, None),
        ("chatcmpl-0004", "acme", _alpaca("Printer jammed."), "billing", -1.0, None),
        ("chatcmpl-0005", "acme", _alpaca("Invoice wrong."), "hardware", -1.0, None),
        ("chatcmpl-0006", "vault", "sha256:" + "0" * 64, "sha256:" + "1" * 64, 1.0, None),
    ]
    with Store.open(f"sqlite:///{records_home / 'store.db'}") as store:
        version = store.get_model_version("bot", 1)
        now = datetime.now(UTC)
        for i, (rid, tenant, prompt, answer, _, _) in enumerate(answers):
            store.add_inference_records([NewInferenceRecord(
                id=rid, endpoint_name="support", route="chat.completions", latency_ms=1.0,
                status="ok", http_status=200, tenant_id=store.get_tenant(tenant).id,
                version_id=version.id, prompt=prompt, response=answer,
                created_at=now - timedelta(hours=len(answers) - i),
            )])  # fmt: skip
        for rid, tenant, _, _, score, label in answers:
            store.add_feedback(rid, tenant=tenant, score=score, label=label)
    monkeypatch.chdir(tmp_path)  # the files the commands write
    for command, shown in steps:
        args, jq = shlex.split(command)[1:], None
        if "|" in args:
            at = args.index("|")
            args, jq = args[:at], args[at + 1 :]
        r = modelyard(*args, home=records_home)
        assert r.code == 0, r.err
        out = r.out + r.err
        if jq is not None:
            out = subprocess.run(jq, input=r.out, capture_output=True, text=True, check=True).stdout
        for line in shown:
            assert _shown(line).search(out), f"{command!r} did not print {line!r}:\n{out}"
