"""``monitor records --job`` and ``monitor export --job``: one batch job's records (a
``batch run`` job or an OpenAI batch), from the CLI, where only ``Store.query_records``
could filter by job before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.store import NewInferenceRecord
from worlds import home_store


@pytest.fixture
def jobs(acme_home: Path) -> Path:
    with home_store(acme_home) as store:
        tid = store.get_tenant("acme").id
        vid = store.get_model_version("acme-bot", 1).id
        store.add_inference_records(
            NewInferenceRecord(
                id=f"rec-{job}-{i}", endpoint_name="acme-support", route="chat.completions",
                latency_ms=5.0, status="ok", http_status=200, tenant_id=tid, version_id=vid,
                job_id=job, source="batch" if job else "live",
            )
            for job, n in (("batch-aaa", 3), ("batch_bbb", 2), (None, 4))
            for i in range(n)
        )  # fmt: skip
    return acme_home


def test_records_of_one_job(jobs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["monitor", "records", "--job", "batch-aaa", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in shown) == [f"rec-batch-aaa-{i}" for i in range(3)]
    assert main(["monitor", "records", "--job", "nosuch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_export_of_one_job(jobs: Path, tmp_path: Path) -> None:
    out = tmp_path / "job.jsonl"
    assert main(["monitor", "export", "--job", "batch_bbb", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["rec-batch_bbb-0", "rec-batch_bbb-1"]


def test_an_empty_job_is_a_usage_error(jobs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "records", "--job", " "]) == 2
    assert "empty --job" in capsys.readouterr().err
