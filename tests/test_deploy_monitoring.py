"""deploy/prometheus/alerts.yml passes promtool check and its unit tests; the Grafana
dashboard is valid JSON whose every query is valid PromQL over metrics modelyard exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
EXPORTED = {
    "modelyard_requests_total",
    "modelyard_request_latency_seconds_bucket",
    "modelyard_time_to_first_token_seconds_bucket",
    "modelyard_tokens_total",
    "modelyard_records_dropped_total",
    "modelyard_feedback_total",
    "modelyard_drift_detected",
    "modelyard_drift_value",
    "modelyard_alert_firing",
}


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (apt-get install prometheus; .ci/run installs it)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


def test_alert_rules_pass_promtool_check_and_unit_tests(promtool: str) -> None:
    check = _run(promtool, "check", "rules", "alerts.yml", cwd=PROM)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    test = _run(promtool, "test", "rules", "alerts_test.yml", cwd=PROM)
    assert test.returncode == 0, test.stdout + test.stderr
    names = {
        r.get("alert")
        for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    assert {
        "ModelyardHighErrorRate",
        "ModelyardHighLatencyP95",
        "ModelyardRecordsDropped",
        "ModelyardFeatureDrift",
    } <= names


def test_a_wrong_expectation_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting another error rate does."""
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    text = (PROM / "alerts_test.yml").read_text()
    broken = text.replace(
        'exp_annotations:\n              summary: "acme-support: 10%',
        'exp_annotations:\n              summary: "acme-support: 11%',
        1,
    )
    assert broken != text
    (tmp_path / "alerts_test.yml").write_text(broken)
    assert _run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path).returncode != 0


def test_dashboard_queries_are_valid_promql_over_exported_metrics(
    promtool: str, tmp_path: Path
) -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\b(modelyard_[a-z0-9_]+)", e)}
    assert used <= EXPORTED, used - EXPORTED
    assert {"modelyard_drift_detected", "modelyard_records_dropped_total"} <= used
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    check = _run(promtool, "check", "rules", "q.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
