"""Latency is the latency of the requests answered ok, wherever a p50/p95/p99 is read or
exported: alert rules, profiles, the report, the traffic series, rollout guards and the
Prometheus histograms agree. A burst of fast refusals (429, 400) and cancelled requests
counts in the requests, never in the percentiles: an endpoint drowning in 429s does not
look fast (it did to alerts, profiles, the report and ``/metrics``, not to guards)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.access import create_api_key
from modelyard.delivery import TrafficSample
from modelyard.monitoring import AlertRules, evaluate_rules, update_profiles
from modelyard.monitoring._charts import nice
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import render_report
from modelyard.serving import BackgroundServer, EchoEngine, ServerLimits, create_app
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world, two_tenant_world

SLOW = [700.0 + 10 * i for i in range(20)]  # the answers: 700 to 890 ms


def _drowning(store: Store, hour: datetime) -> None:
    """In one hour of acme-support: 20 answers (700-890 ms), 500 refusals in 2 ms (429),
    100 refusals in 3 ms (400) and 20 requests cancelled after 5 ms: the answers are 3 %
    of the records."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    kinds = (
        [("ok", 200, ms) for ms in SLOW]
        + [("refused", 429, 2.0)] * 500
        + [("refused", 400, 3.0)] * 100
        + [("cancelled", 200, 5.0)] * 20
    )
    store.add_inference_records([
        NewInferenceRecord(
            id=f"r{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=ms, ttft_ms=ms / 2 if status != "refused" else None, status=status,
            http_status=http, tenant_id=tid, version_id=vid,
            created_at=hour + timedelta(seconds=5 * i),
        )
        for i, (status, http, ms) in enumerate(kinds)
    ])  # fmt: skip


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=3)


def test_refusals_do_not_pull_an_alert_s_p95_down(store: Store, hour: datetime) -> None:
    _drowning(store, hour)
    rules = AlertRules.parse({
        "rules": [
            {"name": "slow", "metric": "p95_latency_ms", "threshold": 500, "window": "1h"},
            {"name": "slow-start", "metric": "p95_ttft_ms", "threshold": 300, "window": "1h"},
        ]
    })  # fmt: skip
    evaluate_rules(store, rules, hour + timedelta(hours=1))
    alerts = {a.rule: a for a in store.list_alert_states()}
    assert alerts["slow"].state == "firing"  # p95 was 5 ms: the 429s made it look fast
    assert alerts["slow"].value == float(np.percentile(SLOW, 95))
    assert alerts["slow-start"].value == float(np.percentile([ms / 2 for ms in SLOW], 95))


def test_an_alert_and_a_rollout_guard_read_the_same_p95(store: Store, hour: datetime) -> None:
    """One definition: the guard's p95 of the version is the alert rule's of the endpoint."""
    _drowning(store, hour)
    rules = AlertRules.parse({
        "rules": [{"name": "slow", "metric": "p95_latency_ms", "threshold": 500, "window": "1h"}]
    })  # fmt: skip
    evaluate_rules(store, rules, hour + timedelta(hours=1))
    (alert,) = store.list_alert_states()
    vid = store.get_model_version("acme-bot", 1).id
    sample = TrafficSample.of(store.rollout_samples("acme-support", hour, [vid]).values())
    assert sample.value("p95_latency_ms") == alert.value == float(np.percentile(SLOW, 95))


def test_refusals_do_not_pull_a_profile_s_or_the_report_s_p95_down(
    store: Store, hour: datetime, tmp_path: Path
) -> None:
    _drowning(store, hour)
    update_profiles(store, now=hour + timedelta(hours=2))
    (profile,) = store.list_profiles(window="hour", endpoint="acme-support", since=hour)
    assert profile.requests == 640 and profile.errors == 0  # every record still counted
    assert profile.latency_p50_ms == float(np.percentile(SLOW, 50))
    assert profile.latency_p95_ms == float(np.percentile(SLOW, 95))
    assert profile.ttft_p50_ms == float(np.percentile([ms / 2 for ms in SLOW], 50))
    (day,) = store.list_profiles(window="day", endpoint="acme-support", since=hour - timedelta(1))
    assert day.latency_p95_ms == pytest.approx(float(np.percentile(SLOW, 95)), rel=0.05)
    page = render_report(store, "acme-support", since=hour)
    p95 = nice(float(np.percentile(SLOW, 95)))
    assert f"<title>p95 at {hour:%Y-%m-%d %H:%M} UTC: {p95}</title>" in page
    assert "of the requests answered ok" in page


def test_refusals_do_not_pull_the_traffic_series_p95_down(store: Store, hour: datetime) -> None:
    """The admin API's ``/endpoints/{name}/series`` (and the console's charts)."""
    _drowning(store, hour)
    points = store.traffic_series(
        "acme-support", since=hour, until=hour + timedelta(hours=1), bucket_s=3600
    )
    (point,) = points
    assert point.requests == 640
    assert (point.latency_p50_ms, point.latency_p95_ms, point.latency_p99_ms) == (
        790.0,
        880.0,
        890.0,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/s.db") as s:
        two_tenant_world(s, versions=1, template="text")
        yield s


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_latency_histogram_observes_only_the_requests_answered_ok(served: Store) -> None:
    """``modelyard_request_latency_seconds`` counted the 400s it refused fast too."""
    limits = ServerLimits(max_prompt_chars=100, refusals_stored_per_minute=100)
    app = create_app(served, EchoEngine(), limits=limits, refresh_seconds=60, heartbeat_s=None)
    _, key = create_api_key(served, "acme")
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:

        def complete(prompt: str) -> int:
            return http.post(
                "/v1/completions",
                json={"model": "acme-support", "prompt": prompt, "max_tokens": 4},
                headers={"Authorization": f"Bearer {key}"},
            ).status_code

        assert [complete("a b") for _ in range(3)] == [200] * 3
        assert [complete("word " * 50) for _ in range(8)] == [400] * 8
        metrics = http.get("/metrics").text
    where = {"endpoint": "acme-support", "tenant": "acme"}
    assert _sample(metrics, "modelyard_requests_total", status="ok", **where) == 3
    assert _sample(metrics, "modelyard_requests_total", status="refused", **where) == 8
    assert _sample(metrics, "modelyard_request_latency_seconds_count", **where) == 3
    assert _sample(metrics, "modelyard_time_to_first_token_seconds_count", **where) <= 3
