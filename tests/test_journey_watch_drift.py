"""Journey 4 (the SRE): a drift reference that overlaps the window it is compared with is
called out. `--reference baseline:2026-12-06/2026-12-07 --window 30m` takes the current
requests into the reference too, and said "no drift" of traffic that had drifted, with
no word of why; it now warns on stderr (the report and --json still print)."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.monitoring import text_features
from modelyard.store import NewInferenceRecord
from worlds import fake_world, home_store


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_baseline_overlapping_the_window_is_called_out_naming_both(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store)
    end = datetime.now(UTC).replace(microsecond=0)
    overlapping = f"baseline:{end:%Y-%m-%d}T00:00/{end + timedelta(days=1):%Y-%m-%d}"
    code, out, err = run(
        capsys,
        f"monitor drift --endpoint support --window 30m --end {end.isoformat()} "
        f"--reference {overlapping} --json",
    )
    assert code == 0
    assert json.loads(out)["reference"] == overlapping
    start = end - timedelta(minutes=30)
    assert " ".join(err.split()).startswith(
        f"warning: the baseline '{overlapping}' ends at {end + timedelta(days=1):%Y-%m-%d} "
        f"00:00:00 UTC, after the current window starts ({start:%Y-%m-%d %H:%M:%S} UTC)"
    )
    assert "previous:DURATION" in err


def test_a_baseline_ending_at_the_window_start_compares(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(minutes=30)
    with home_store(home) as store:
        fake_world(store)
        tenant, version = store.get_tenant("acme").id, store.get_model_version("bot", 1).id
        records = []
        for i in range(80):  # 40 short prompts in the baseline, 40 long ones in the window
            at = start - timedelta(minutes=20) + timedelta(seconds=i * 30)
            prompt = "Q?" if i < 40 else "A much longer question, " * 10
            record = NewInferenceRecord(
                id=f"r{i}", endpoint_name="support", route="chat.completions",
                latency_ms=5.0, status="ok", http_status=200, tenant_id=tenant,
                version_id=version, prompt=prompt, response="A.", created_at=at,
            )  # fmt: skip
            records.append((record, text_features(prompt, "A.")))
        store.add_monitored_records(records)
    baseline = f"baseline:{(start - timedelta(hours=1)).isoformat()}/{start.isoformat()}"
    code, out, err = run(
        capsys,
        f"monitor drift --endpoint support --window 30m --end {end.isoformat()} "
        f"--reference {baseline} --json",
    )
    assert code == 0 and "warning" not in err, err
    report = json.loads(out)
    assert "prompt_chars" in report["drifted_features"]
    chars = next(f for f in report["features"] if f["feature"] == "prompt_chars")
    assert (chars["n_reference"], chars["n_current"]) == (40, 40)
