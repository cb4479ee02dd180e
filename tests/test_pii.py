"""The one PII detector, on a corpus of texts that are and are not personal data
(tests/data/pii_corpus.jsonl): what `data validate` reports and what the `redacted`
storage policy keeps of a served request agree, span for span."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.data import PII_KINDS, PII_LABELS, find_pii, redact_pii, validate_rows
from modelyard.monitoring import apply_storage_policy
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store
from worlds import fake_world

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"
CASES: list[dict[str, Any]] = [
    json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line
]

# What the first user of the `redacted` policy saw leak (issue 15).
LEAKED = {
    "+44 20 7946 0958": "[PHONE]",
    "555-123-4567": "[PHONE]",
    "+1 415 555 0132": "[PHONE]",
    "078-05-1120": "[SSN]",
    "ref 1234 5678 9012 3456": "ref 1234 5678 9012 3456",  # no valid Luhn digit: not a card
}


def test_the_corpus_has_both_kinds_of_example_for_every_kind() -> None:
    positives = {kind for case in CASES for kind in case["kinds"]}
    assert positives == set(PII_KINDS) == set(PII_LABELS)
    assert sum(1 for case in CASES if not case["kinds"]) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_corpus_kinds_and_redaction(case: dict[str, Any]) -> None:
    assert [m.kind for m in find_pii(case["text"])] == case["kinds"]
    assert redact_pii(case["text"]) == case["redacted"]
    assert apply_storage_policy(case["text"], "redacted") == case["redacted"]


def test_masked_values_never_hold_the_value() -> None:
    for case in CASES:
        for match in find_pii(case["text"]):
            value = case["text"][match.start : match.end]
            assert match.masked.startswith("****") and value not in match.masked


@pytest.mark.parametrize(("text", "stored"), list(LEAKED.items()))
def test_what_leaked_before_is_masked_whole(text: str, stored: str) -> None:
    assert apply_storage_policy(f"call {text} now", "redacted") == f"call {stored} now"


def test_validation_and_redaction_agree_on_every_row() -> None:
    rows = [{"text": case["text"], "label": "x"} for case in CASES]
    report = validate_rows(rows, "classification")
    for number, case in enumerate(CASES, start=1):
        found = sorted(p.kind for p in report.pii if p.row == number)
        redacted = apply_storage_policy(case["text"], "redacted") or ""
        labelled = sorted(k for k, lab in PII_LABELS.items() for _ in range(redacted.count(lab)))
        assert found == labelled == sorted(case["kinds"]), case["text"]


def test_data_validate_reports_the_corpus_kinds(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"text": c["text"], "label": "x"}) + "\n" for c in CASES),
        encoding="utf-8",
    )
    r = modelyard(
        "data", "validate", str(data), "--format", "classification", "--json",
        "--fail-on", "pii", home=tmp_path / "home",
    )  # fmt: skip
    assert r.code == 1, r.err
    report = json.loads(r.out)
    kinds = [p["kind"] for p in report["pii"]]
    assert kinds == [k for c in CASES for k in c["kinds"]]
    assert "+44 20 7946 0958" not in r.out and "078-05-1120" not in r.out


def test_the_pii_check_names_every_kind_it_finds(tmp_path: Path) -> None:
    """The check table's "what trips it" lists the kinds of docs/data.md, IP addresses too."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "from 192.168.1.10", "label": "x"}) + "\n")
    r = modelyard("data", "validate", str(data), "--format", "classification", home=tmp_path)
    assert r.code == 0, r.err
    line = next(line for line in r.out.splitlines() if line.startswith("│ pii "))
    for kind in ("e-mail", "phone", "card", "IBAN", "US SSN", "IP address"):
        assert kind in line, line


def test_a_redacted_tenant_stores_no_phone_ssn_or_ip(tmp_path: Path) -> None:
    prompt = (
        "I am at +44 20 7946 0958, 555-123-4567 or +1 415 555 0132; SSN 078-05-1120; IP 10.0.0.7"
    )
    with Store.open(f"sqlite:///{tmp_path}/s.db") as store:
        fake_world(store, storage_policy="redacted")
        _, key = create_api_key(store, "acme")
        app = create_app(store, EchoEngine(), refresh_seconds=0.1)
        with (
            BackgroundServer(app) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
        ):
            client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": prompt}]
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and store.count_inference_records() < 1:
                time.sleep(0.05)
        (record,) = store.list_inference_records(tenant="acme")
    kept = (record.prompt or "") + (record.response or "")
    for value in ("7946", "4567", "0132", "1120", "10.0.0.7"):
        assert value not in kept
    assert "I am at [PHONE], [PHONE] or [PHONE]; SSN [SSN]; IP [IP]" in (record.prompt or "")


def test_new_tenants_keep_records_redacted_unless_they_choose(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    made = modelyard("tenants", "create", "acme", home=home)
    assert made.code == 0 and "(storage policy redacted)" in made.out
    chosen = modelyard("tenants", "create", "lab", "--storage-policy", "full", home=home)
    assert chosen.code == 0 and "(storage policy full)" in chosen.out
    listed = json.loads(modelyard("tenants", "list", "--json", home=home).out)
    assert {t["name"]: t["storage_policy"] for t in listed} == {"acme": "redacted", "lab": "full"}
