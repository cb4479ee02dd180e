"""deploy/prometheus/alerts.yml passes promtool check and its unit tests (the Grafana
dashboard's queries are checked in tests/test_grafana_dashboard.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"


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
