"""deploy/grafana/dashboard.json shows every metric family modelyard exports, in valid PromQL.

The families are read from what the project really exports: a serving app's ``/metrics``
(EchoEngine, after requests, with drift results, an alert and a resident adapter, so the
families read at scrape time have samples), a router's ``/metrics``, and the families a
server exports only on some machines (GPUs, ``--redis-url``) from the app's registry.
A family added to src without a panel fails ``test_every_exported_family_is_on_the_dashboard``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest

from modelyard.access import create_api_key
from modelyard.delivery import start_rollout
from modelyard.gpu import GpuReading
from modelyard.monitoring import update_profiles
from modelyard.routing import RouteOptions, create_route_app
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving._metrics import Metrics
from modelyard.store import AlertState, DriftResult, Store
from modelyard.store._judges import Judgement
from worlds import fake_world

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
DOCS = ROOT / "docs" / "monitoring.md"
ROWS = (
    "Traffic",
    "Latency",
    "Quality and drift",
    "Limits and budgets",
    "Delivery",
    "Engine and adapters",
    "Router",
    "Stream consumers",
)
METRIC = re.compile(r"\b(modelyard_[a-z0-9_]+)")
# families still exported, under their old names, for dashboards of earlier releases; the
# dashboard reads what replaced them
DEPRECATED = {
    "modelyard_traffic_weight": "modelyard_traffic_weight_ratio",
    "modelyard_rollout_step_percent": "modelyard_rollout_step_ratio",
}


class Holding(EchoEngine):
    """The echo engine, holding bot:1's adapter (``modelyard_adapter_resident``)."""

    def loaded(self) -> list[str]:
        return ["bot:1"]


def _families(text: str) -> dict[str, str]:
    """Family name → type, from the ``# TYPE`` lines of a scrape (the text format names a
    counter's family ``NAME_total`` and adds a ``NAME_created`` gauge: both read as NAME)."""
    types = {
        parts[2]: parts[3]
        for line in text.splitlines()
        if line.startswith("# TYPE ") and len(parts := line.split()) == 4
    }
    families = {
        name.removesuffix("_total") if kind == "counter" else name: kind
        for name, kind in types.items()
    }
    return {
        name: kind
        for name, kind in families.items()
        if not (
            name.endswith("_created") and families.get(name[: -len("_created")], "gauge") != "gauge"
        )
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every family modelyard exports, name → type."""
    db = tmp_path_factory.mktemp("dashboard") / "store.db"
    with Store.open(f"sqlite:///{db}") as store:
        (v1, _) = fake_world(store)
        now = datetime.now(UTC)
        store.add_drift_results(
            [DriftResult("run-1", now, "support", "bot:1", "acme", "eval", now - timedelta(hours=1),
                         now, "prompt_chars", "psi", 0.31, 0.1, True, "drift", 500, 400)],
            v1.id,
        )  # fmt: skip
        store.save_alert_state(AlertState(
            id="a1", rule="errors-high", labels={"endpoint": "support"}, severity="critical",
            state="firing", value=0.2, summary="error rate 20%", active_since=now, fired_at=now,
            resolved_at=None, last_evaluated=now,
        ))  # fmt: skip
        # the store's delivery, budgets and quality (read at scrape time)
        store.set_traffic("support", {1: 90, 2: 10})
        store.set_shadow("support", 2, 0.25)
        store.set_budget("acme", "day", 20.0)
        start_rollout(store, "support", "bot:2", steps="50,100")
        _, key = create_api_key(store, "acme")
        app = create_app(store, Holding(), refresh_seconds=0.1, heartbeat_s=None)
        with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:
            auth = {"Authorization": f"Bearer {key}"}
            for prompt in ("the vpn is down", "reset my password"):
                answer = http.post(
                    "/v1/completions", headers=auth, json={"model": "support", "prompt": prompt}
                )
                assert answer.status_code == 200, answer.text
            assert http.post("/v1/completions", headers=auth, json={}).status_code == 400
            rid = answer.json()["id"]
            thumbs = http.post("/v1/feedback", headers=auth, json={"request_id": rid, "score": 1})
            assert thumbs.status_code == 200, thumbs.text
            store.put_judge("quality", rubric="relevance", base_url="http://127.0.0.1:9/v1",
                            model="m")  # fmt: skip
            revision = store.get_judge("quality").revision
            store.save_judgements(
                [Judgement("quality", revision, "h1", rid, 4.0, "", None, 10, 2, 0.0, 1.0)]
            )
            update_profiles(store)
            served = http.get("/metrics").text
        with BackgroundServer(create_route_app(store, RouteOptions())) as router:
            routed = httpx.get(router.base_url + "/metrics", timeout=10).text
    # on some servers only: GPUs (NVML) and the rate limits shared through Redis
    metrics = Metrics(gpus=lambda: [GpuReading(0, "NVIDIA H100", 1024**3, 80 * 1024**3, 0.5)])
    metrics.watch_shared_limits(lambda: True)
    optional = generate_latest(metrics.registry).decode()
    families = _families(served) | _families(routed) | _families(optional)
    # a consumer's own: its process_* are the client library's standard families
    consumer = _families(_consumer_scrape())
    families |= {name: kind for name, kind in consumer.items() if name.startswith("modelyard_")}
    # the collection works: families of each source are there
    assert {
        "modelyard_requests",
        "modelyard_request_latency_seconds",
        "modelyard_adapter_resident",
        "modelyard_drift_value",
        "modelyard_alert_firing",
        "modelyard_route_picks",
        "modelyard_route_replicas",
        "modelyard_gpu_utilization_ratio",
        "modelyard_limits_shared_up",
        "modelyard_traffic_weight_ratio",
        "modelyard_rollout_active",
        "modelyard_budget_amount",
        "modelyard_feedback_score",
        "modelyard_judge_score",
        "modelyard_stream_messages",
        "modelyard_stream_backlog",
    } <= set(families), sorted(families)
    return families


def _consumer_scrape() -> str:
    """A stream consumer's ``/metrics`` (``stream run --metrics-port``) while it reads:
    its backlog is asked of its broker at each scrape."""
    from types import SimpleNamespace

    from modelyard.stream import StreamMetrics, StreamSummary

    metrics = StreamMetrics(broker="redis", stream="claims", group="g", consumer="c1")
    source = SimpleNamespace(backlog=lambda: 3)
    summary = StreamSummary("claims/g", answered=5, dead_lettered=1)
    consumer = SimpleNamespace(summary=summary, in_flight=1, source=source)
    metrics.watch(consumer)  # type: ignore[arg-type]
    metrics.answered(0.2)
    return generate_latest(metrics.registry).decode()


def _series(name: str, kind: str) -> set[str]:
    """The names a family's samples have (what a query can name)."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind in ("histogram", "summary"):
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def test_every_exported_family_is_on_the_dashboard(
    exported: dict[str, str], dash: dict[str, Any]
) -> None:
    used = {m for e in _exprs(dash) for m in METRIC.findall(e)}
    missing = sorted(
        n for n, kind in exported.items() if not _series(n, kind) & used and n not in DEPRECATED
    )
    assert not missing, f"exported but on no panel of {DASHBOARD.name}: {missing}"
    assert set(DEPRECATED) <= set(exported), sorted(set(DEPRECATED) - set(exported))
    assert not used & set(DEPRECATED), f"read the new names instead: {DEPRECATED}"
    assert set(DEPRECATED.values()) <= used


def test_every_metric_the_dashboard_queries_is_exported(
    exported: dict[str, str], dash: dict[str, Any]
) -> None:
    known = set().union(*(_series(n, kind) for n, kind in exported.items()))
    used = {m for e in _exprs(dash) for m in METRIC.findall(e)}
    assert used <= known, sorted(used - known)


def test_counters_and_histograms_are_read_through_rate(
    exported: dict[str, str], dash: dict[str, Any]
) -> None:
    """A counter's or histogram's series is only ever read by rate() or increase(), and a
    histogram's buckets only by histogram_quantile over a sum by le."""
    cumulative = {s for n, kind in exported.items() if kind != "gauge" for s in _series(n, kind)}
    for expr in _exprs(dash):
        for match in METRIC.finditer(expr):
            if match.group(1) not in cumulative:
                continue
            before = expr[: match.start()]
            assert re.search(r"\b(rate|increase)\(\s*$", before), (match.group(1), expr)
            if match.group(1).endswith("_bucket"):
                assert "histogram_quantile(" in before and re.search(r"\ble\)", before), expr


def test_panels_sit_in_the_rows_and_use_the_datasource_and_variables(dash: dict[str, Any]) -> None:
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert tuple(r["title"] for r in rows) == ROWS
    assert dash["panels"][0]["type"] == "row"  # no panel above the first row
    panels = [p for p in _panels(dash) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(dash)}) == len(list(_panels(dash)))
    assert len(panels) >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("tenant", "endpoint"):
        assert (
            variables[name]["query"]["query"] == f"label_values(modelyard_requests_total, {name})"
        )
        assert variables[name]["allValue"] == ".*"  # All also matches series without the label
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= set(variables), target["expr"]
    # the panels that were there before the rows still are, on the same queries
    titles = {p["title"] for p in panels}
    assert {
        "Requests per second by endpoint",
        "Error rate by endpoint",
        "Latency p50 / p95 / p99",
        "Time to first token p95",
        "Tokens per second",
        "Dropped inference records (10 min)",
        "Drifted features",
        "Drift statistic per feature",
        "Firing alerts",
        "Feedback per second",
    } <= titles


def _check_rules(promtool: str, exprs: list[str], where: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on one recording rule per query: it parses each as PromQL."""
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]
    (where / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    return subprocess.run(
        [promtool, "check", "rules", "q.yml"],
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_every_panel_query_is_valid_promql(
    promtool: str, dash: dict[str, Any], tmp_path: Path
) -> None:
    exprs = _exprs(dash)
    check = _check_rules(promtool, exprs, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout
    # and the check can fail: a query with an unclosed parenthesis does
    broken = _check_rules(
        promtool, ["sum by (endpoint) (rate(modelyard_requests_total[5m])"], tmp_path
    )
    assert broken.returncode != 0


def test_the_docs_say_what_each_row_answers() -> None:
    text = DOCS.read_text()
    section = text[text.index("deploy/grafana/dashboard.json") :]
    for row in ROWS:
        assert f"**{row}**" in section, row
