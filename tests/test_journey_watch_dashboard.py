"""Journey 4 (the SRE): the Grafana dashboard shows what the CLI shows, however many
replicas Prometheus scrapes.

Every replica exports the same store-read gauges (drift, alerts: docs/monitoring.md says
to aggregate them with max, not sum). Each panel on those gauges is evaluated here by
``promtool test rules`` over the series of three replicas, and must give the numbers one
replica (and `monitor drift`, `monitor alerts`) gives.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
REPLICAS = ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")


def _query(title: str) -> str:
    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [x for p in items for x in (p, *panels(p.get("panels", [])))]

    every = panels(json.loads(DASHBOARD.read_text())["panels"])
    [panel] = [p for p in every if p["title"] == title]
    [target] = panel["targets"]
    return str(target["expr"]).replace("$endpoint", ".*").replace("$tenant", ".*")


def _series(metric: str, labels: dict[str, str], value: float) -> list[dict[str, str]]:
    """The same gauge as every replica exports it (the store's value, read at scrape)."""
    out = []
    for instance in REPLICAS:
        text = ",".join(f'{k}="{v}"' for k, v in {**labels, "instance": instance}.items())
        out.append({"series": f"{metric}{{{text}}}", "values": f"{value:g}x5"})
    return out


def _evaluate(promtool: str, tmp_path: Path, series: list[dict[str, str]], tests: list[Any]) -> str:
    (tmp_path / "none.yml").write_text("groups: []\n")
    spec = {
        "rule_files": ["none.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run = subprocess.run(
        [promtool, "test", "rules", "t.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return run.stdout + run.stderr if run.returncode else ""


def test_drifted_features_counts_each_feature_once_across_replicas(
    promtool: str, tmp_path: Path
) -> None:
    series = []
    for feature, drifted in (("prompt_chars", 1), ("prompt_digits", 1), ("latency_ms", 0)):
        labels = {"endpoint": "acme-support", "version": "acme-support:1",
                  "feature": feature, "method": "ks"}  # fmt: skip
        series += _series("modelyard_drift_detected", labels, drifted)
    expected = [{"labels": '{endpoint="acme-support"}', "value": 2}]  # as `monitor drift` says
    tests = [{"expr": _query("Drifted features"), "eval_time": "2m", "exp_samples": expected}]
    assert _evaluate(promtool, tmp_path, series, tests) == ""


def test_firing_alerts_shows_one_per_alert_across_replicas(promtool: str, tmp_path: Path) -> None:
    labels = {"endpoint": "acme-support", "rule": "feedback-low", "severity": "critical",
              "scope": ""}  # fmt: skip
    series = _series("modelyard_alert_firing", labels, 1)
    expected = [
        {
            "labels": '{endpoint="acme-support",rule="feedback-low",severity="critical"}',
            "value": 1,
        }
    ]
    tests = [{"expr": _query("Firing alerts"), "eval_time": "2m", "exp_samples": expected}]
    assert _evaluate(promtool, tmp_path, series, tests) == ""


def test_error_rate_is_the_share_alert_rules_fire_on(promtool: str, tmp_path: Path) -> None:
    """error_rate in `monitor alerts` and rollout guards is errors and timeouts over the
    answered requests (ok, error, timeout). A client sending 900 requests a minute that its
    rate limit refuses (429) must not make 10 % of failing answers look like 1 %."""
    per_minute = {"ok": 90, "error": 8, "timeout": 2, "refused": 900, "cancelled": 10}
    series = [
        {
            "series": f'modelyard_requests_total{{endpoint="acme-support",tenant="acme",'
            f'version="acme-support:1",status="{status}",instance="{REPLICAS[0]}"}}',
            "values": f"0+{n}x10",
        }
        for status, n in per_minute.items()
    ]
    query = _query("Error rate by endpoint")
    expected = [{"labels": '{endpoint="acme-support"}', "value": 0.1}]
    tests = [{"expr": f"round({query}, 0.0001)", "eval_time": "10m", "exp_samples": expected}]
    assert _evaluate(promtool, tmp_path, series, tests) == ""
