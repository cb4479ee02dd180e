"""Shadow copies are not user traffic: an endpoint's alert rules, profiles, report and
Prometheus request metrics count the requests its users sent and got answers to; the
shadow version's own numbers stay in the per-version views (the traffic series with
``shadow`` true, ``modelyard_shadow_*``), where it is compared with production.

A slow, failing shadow used to fire the endpoint's error and latency alerts, move its
profiles (requests, errors, latency, cost) and its report's latency, and add its latency
and tokens to ``/metrics``' user-facing families, though no user saw a shadow answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.access import create_api_key
from modelyard.errors import EngineError
from modelyard.monitoring import AlertRules, evaluate_rules, update_profiles
from modelyard.monitoring._charts import nice
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import render_report
from modelyard.serving import BackgroundServer, EchoEngine, SamplingParams, TokenStream, create_app
from modelyard.store import ModelVersion, NewInferenceRecord, Store
from waiting import until
from worlds import fake_world

LIVE = [100.0 + 10 * i for i in range(20)]  # what users waited: 100 to 290 ms
SHADOW_SLOW = 5000.0  # the shadow's answers that came, 5 s each


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=3)


def _shadowed_hour(store: Store, hour: datetime) -> None:
    """One hour of ``support``: 20 answers of bot:1 (100-290 ms, 10 + 5 tokens each), and
    its shadow bot:2's copies of 40 requests: 20 failed, 20 answered in 5 s."""
    fake_world(store)
    store.set_shadow("support", 2, 1.0)
    store.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
    tid = store.get_tenant("acme").id
    v1, v2 = (store.get_model_version("bot", n).id for n in (1, 2))

    def record(rid: str, i: int, **kw: object) -> NewInferenceRecord:
        at = hour + timedelta(seconds=30 * i)
        fields = {"id": rid, "endpoint_name": "support", "route": "completions", "status": "ok",
                  "http_status": 200, "tenant_id": tid, "prompt_tokens": 10,
                  "completion_tokens": 5, "created_at": at} | kw  # fmt: skip
        return NewInferenceRecord(**fields)  # type: ignore[arg-type]

    live = [record(f"r{i}", i, version_id=v1, latency_ms=ms) for i, ms in enumerate(LIVE)]
    failed = [
        record(f"r{i}-shadow", i, version_id=v2, shadow=True, latency_ms=30.0, status="error",
               http_status=500, completion_tokens=0)
        for i in range(20)
    ]  # fmt: skip
    slow = [
        record(f"s{i}-shadow", i, version_id=v2, shadow=True, latency_ms=SHADOW_SLOW)
        for i in range(20)
    ]
    store.add_inference_records([*live, *failed, *slow])


def test_a_failing_slow_shadow_fires_none_of_the_endpoint_s_alerts(
    store: Store, hour: datetime
) -> None:
    _shadowed_hour(store, hour)
    rules = AlertRules.parse({
        "rules": [
            {"name": "errors", "metric": "error_rate", "threshold": 0.05, "window": "1h"},
            {"name": "slow", "metric": "p95_latency_ms", "threshold": 1000, "window": "1h"},
            {"name": "busy", "metric": "requests", "threshold": 30, "window": "1h"},
        ]
    })  # fmt: skip
    evaluate_rules(store, rules, hour + timedelta(hours=1))
    alerts = {a.rule: a for a in store.list_alert_states()}
    assert {rule: a.state for rule, a in alerts.items()} == dict.fromkeys(
        ("errors", "slow", "busy"), "inactive"
    )
    assert alerts["errors"].value == 0.0  # was 20 failed of 60: a third
    assert alerts["slow"].value == float(np.percentile(LIVE, 95))  # was 5 s
    assert alerts["busy"].value == 20.0  # the requests users sent (was 60)


def test_a_shadow_moves_neither_the_endpoint_s_profiles_nor_its_report(
    store: Store, hour: datetime
) -> None:
    _shadowed_hour(store, hour)
    update_profiles(store, now=hour + timedelta(hours=2))
    profiles = store.list_profiles(window="hour", endpoint="support", since=hour)
    assert [(p.version, p.requests, p.errors) for p in profiles] == [("bot:1", 20, 0)]
    (profile,) = profiles
    assert profile.latency_p95_ms == float(np.percentile(LIVE, 95))
    # what the tenant spent, as its budgets count it: 20 x (10 x 1 + 5 x 2) / 1000
    assert profile.cost == pytest.approx(0.4)
    assert profile.tokens_in == 200 and profile.tokens_out == 100
    page = render_report(store, "support", since=hour)
    p95 = nice(float(np.percentile(LIVE, 95)))
    assert f"<title>p95 at {hour:%Y-%m-%d %H:%M} UTC: {p95}</title>" in page


def test_the_traffic_series_keeps_the_shadow_s_own_numbers_apart(
    store: Store, hour: datetime
) -> None:
    """The per-version view (admin API ``/endpoints/{name}/series``, the console's charts)
    is where a shadow is compared with production: its errors and latency are there, as
    its own series, and the live one is the users'."""
    _shadowed_hour(store, hour)
    points = store.traffic_series(
        "support", since=hour, until=hour + timedelta(hours=1), bucket_s=3600
    )
    by = {(p.version, p.shadow): p for p in points}
    assert set(by) == {("bot:1", False), ("bot:2", True)}
    live, shadow = by[("bot:1", False)], by[("bot:2", True)]
    assert (live.requests, live.errors) == (20, 0)
    assert live.latency_p95_ms == 280.0  # the nearest rank
    assert (shadow.requests, shadow.errors, shadow.latency_p95_ms) == (40, 20, SHADOW_SLOW)


class BrokenShadow(EchoEngine):
    """Echoes; bot:2 (the shadow) fails the prompts that say ``fail``."""

    def stream(self, version: ModelVersion, prompt: str, params: SamplingParams) -> TokenStream:
        if version.version == 2 and "fail" in prompt:
            raise EngineError("the shadow broke", version=version.ref)
        return super().stream(version, prompt, params)


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of a family's samples with these labels (0 when there is none)."""
    found = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            found += float(line.rsplit(" ", 1)[1])
    return found


def test_metrics_count_users_requests_and_the_shadow_s_apart(tmp_path: Path) -> None:
    """``/metrics``: the requests, latency, time to first token and tokens families are the
    users' (the shipped alert rules and dashboard read them per endpoint); the shadow's
    requests and latency are in ``modelyard_shadow_*``, by version."""
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        fake_world(store, template="text")
        store.set_shadow("support", 2, 1.0)
        _, key = create_api_key(store, "acme")
        app = create_app(store, BrokenShadow(), refresh_seconds=60, heartbeat_s=None)
        with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as http:
            for prompt in ("answer me", "answer me", "please fail", "please fail"):
                answer = http.post(
                    "/v1/completions",
                    json={"model": "support", "prompt": prompt, "max_tokens": 4},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert answer.status_code == 200, answer.text  # a user never sees a shadow
            until("8 records", lambda: store.count_inference_records(endpoint="support") >= 8)
            metrics = http.get("/metrics").text
    user = {"endpoint": "support", "version": "bot:1", "tenant": "acme"}
    shadow = {"endpoint": "support", "version": "bot:2", "tenant": "acme"}
    assert _sample(metrics, "modelyard_requests_total", status="ok", **user) == 4
    assert _sample(metrics, "modelyard_request_latency_seconds_count", **user) == 4
    assert _sample(metrics, "modelyard_tokens_total", kind="completion", **user) == 8
    # nothing of the shadow's in the families read per endpoint
    for family in (
        "modelyard_requests_total",
        "modelyard_request_latency_seconds_count",
        "modelyard_time_to_first_token_seconds_count",
        "modelyard_tokens_total",
    ):
        assert _sample(metrics, family, **shadow) == 0, family
        assert _sample(metrics, family, endpoint="support") == _sample(metrics, family, **user)
    # the shadow's own: its requests by status, the latency of those it answered ok
    assert _sample(metrics, "modelyard_shadow_requests_total", status="ok", **shadow) == 2
    assert _sample(metrics, "modelyard_shadow_requests_total", status="error", **shadow) == 2
    assert _sample(metrics, "modelyard_shadow_request_latency_seconds_count", **shadow) == 2
