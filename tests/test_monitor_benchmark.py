"""benchmarks/monitoring.py runs (--quick): both drift computations agree, every number is there."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_monitoring_benchmark_quick_reports_every_number() -> None:
    if importlib.util.find_spec("pandas") is None:  # the baseline's only dependency
        reason = "pandas is not installed (pip install pandas==3.1.1, pinned in requirements.lock)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "monitoring.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    drift = result["drift"]
    assert drift["mismatches"] == []  # modelyard's statistics equal pandas + scipy's
    assert drift["records"] == 100_000 and drift["features"] == 8
    assert drift["modelyard_all_s"] > 0 and drift["baseline_s"] > 0 and drift["ratio"] > 0
    # the four shifted features drift, the four unchanged ones do not
    assert drift["drifted"] == [
        "completion_tokens",
        "prompt_non_ascii",
        "prompt_tokens",
        "unknown_token_rate",
    ]
    store = result["store_drift"]  # compute_drift end to end on records in SQLite
    assert (store["n_reference"], store["n_current"]) == (50_000, 50_000)
    assert store["drifted"] == ["prompt_chars", "prompt_tokens"] and store["drift_s"] > 0
    assert result["ingest"]["records"] == 20_000 and result["ingest"]["rows_per_s"] > 0
    assert "Monitoring" in r.stderr
