"""docs/monitoring.md is tested: its rules file is valid, its commands exist, its error is real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clihelp import modelyard
from modelyard.cli import app
from modelyard.monitoring import METHODS, METRICS, AlertRules

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "monitoring.md").read_text()


def test_the_documented_rules_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"## Alerts\n.*?```yaml\n(.*?)```", DOC, re.S)
    assert block is not None
    monkeypatch.setenv("ONCALL_TOKEN", "t0ken")  # the webhook's header reads it
    rules = AlertRules.parse(yaml.safe_load(block.group(1)))
    assert rules.notify.webhook is not None
    assert rules.notify.webhook.headers == {"Authorization": "Bearer t0ken"}
    assert [r.name for r in rules.rules] == [
        "error-rate-high",
        "latency-p95-high",
        "prompts-drifted",
        "budget-80-percent",
    ]
    assert rules.rules[2].retrain == ["modelyard", "finetune", "-c", "retrain/acme-support.yaml"]
    assert rules.notify.webhook is not None and rules.notify.webhook.retries == 3
    for metric in re.findall(
        r"`([a-z_0-9]+(?:\.FEATURE)?)`", DOC.split("- **Metrics**")[1].split("- **States**")[0]
    ):
        assert metric.replace(".FEATURE", ".prompt_chars") in METRICS, metric


def test_every_method_is_documented_and_every_documented_command_has_help() -> None:
    for name in METHODS:
        assert f"| `{name}` |" in DOC, name
    commands = {
        tuple(m.split()[:2]) for m in re.findall(r"^modelyard monitor ([a-z -]+)", DOC, re.M)
    }
    assert {c[0] for c in commands} >= {
        "records",
        "export",
        "profiles",
        "drift",
        "alerts",
        "tick",
        "report",
        "retention",
        "price",
    }
    for command in sorted(commands):
        words = [w for w in command if not w.startswith("-")][:2]
        if words[0] not in ("retention", "price"):
            words = words[:1]
        r = CliRunner().invoke(app, ["monitor", *words, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, (words, r.output)


def test_the_documented_error_is_what_the_cli_prints(tmp_path: Path) -> None:
    example = re.search(r"\$ (modelyard monitor drift .+)\n(error: .+)\n\$ echo \$\?\n(\d+)", DOC)
    assert example is not None
    command, line, code = example.groups()
    r = modelyard(*command.split()[1:], home=tmp_path)
    assert r.err.strip() == line
    assert r.code == int(code)
