"""What the CLI shows of delivery, budgets and quality, as gauges Prometheus scrapes:
traffic weights and shadow fractions (``endpoints list``), active rollouts (``rollout
status``), budget amounts (``budgets list``), today's feedback and judge means
(``monitor profiles --window day``). Before, Grafana could not show any of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from modelyard.delivery import start_rollout
from modelyard.monitoring import MonitoringCollector, update_profiles
from modelyard.store import Store
from modelyard.store._judges import Judgement
from worlds import answered, fake_world


def test_the_store_s_delivery_budgets_and_quality_are_scraped_as_gauges(store: Store) -> None:
    fake_world(store, versions=2)
    store.set_traffic("support", {1: 90, 2: 10})
    store.set_shadow("support", 2, 0.25)
    store.set_budget("acme", "month", 50.0)
    now = datetime.now(UTC)
    at = max(now - timedelta(minutes=10), now.replace(hour=0, minute=0, second=1))
    store.add_inference_records([answered(store, f"r{i}", 1, at) for i in range(3)])
    store.add_feedback("r0", tenant="acme", score=1.0)
    store.add_feedback("r1", tenant="acme", score=-0.5)
    store.put_judge("quality", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
    revision = store.get_judge("quality").revision
    store.save_judgements([
        Judgement("quality", revision, f"h{i}", f"r{i}", s, "", None, 10, 2, 0.0, 1.0)
        for i, s in ((0, 4.0), (1, 5.0))
    ])  # fmt: skip
    update_profiles(store)
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(store))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    share = "modelyard_traffic_weight_ratio"  # Prometheus's convention: a ratio is 0 to 1
    assert value(share, endpoint="support", model="bot", version="bot:1") == 0.9
    assert value(share, endpoint="support", model="bot", version="bot:2") == 0.1
    weight = "modelyard_traffic_weight"  # deprecated, in percent, for existing dashboards
    assert value(weight, endpoint="support", model="bot", version="bot:1") == 90
    assert value(weight, endpoint="support", model="bot", version="bot:2") == 10
    shadow = value("modelyard_shadow_fraction", endpoint="support", model="bot", version="bot:2")
    assert shadow == 0.25
    assert value("modelyard_budget_amount", tenant="acme", key="", period="month") == 50
    assert value("modelyard_feedback_score", endpoint="support", version="bot:1") == 0.25
    judged = value("modelyard_judge_score", endpoint="support", version="bot:1",
                   judge="judge.quality")  # fmt: skip
    assert judged == 4.5
    assert value("modelyard_rollout_active", endpoint="support", target="bot:2",
                 strategy="canary", status="running", phase="preparing") is None  # fmt: skip

    rollout = start_rollout(store, "support", "bot:2", steps="10,50,100")
    active = value("modelyard_rollout_active", endpoint="support", target="bot:2",
                   strategy=rollout.strategy, status="running", phase=rollout.phase)  # fmt: skip
    assert active == 1
    assert value("modelyard_rollout_step_ratio", endpoint="support", target="bot:2") == 0.1
    assert value("modelyard_rollout_step_percent", endpoint="support", target="bot:2") == 10


def test_serve_can_let_scrapes_reuse_the_store_gauges_for_a_while(store: Store) -> None:
    """``serve --store-gauges-max-age-s``: a scrape within the age answers what the last
    read said (a replica reads the store once however often it is scraped); the default
    reads at every scrape."""
    from fastapi.testclient import TestClient

    from modelyard.serving import EchoEngine, create_app

    fake_world(store, versions=2)
    store.set_traffic("support", {1: 90, 2: 10})
    line = 'modelyard_traffic_weight{endpoint="support",model="bot",version="bot:2"}'

    def scraped(app: object) -> str:
        with TestClient(app) as client:  # type: ignore[arg-type]
            first = client.get("/metrics").text
            store.set_traffic("support", {1: 50, 2: 50})
            second = client.get("/metrics").text
            store.set_traffic("support", {1: 90, 2: 10})
        assert f"{line} 10.0" in first
        return second

    cached = create_app(store, EchoEngine(), heartbeat_s=None, monitoring_max_age_s=3600)
    assert f"{line} 10.0" in scraped(cached)
    fresh = create_app(store, EchoEngine(), heartbeat_s=None)
    assert f"{line} 50.0" in scraped(fresh)


def test_a_max_age_past_a_day_or_not_a_number_is_refused_naming_the_option(tmp_path: Path) -> None:
    from clihelp import modelyard

    for value in ("inf", "nan", "-1", "86401"):
        r = modelyard("serve", "--engine", "echo", "--store-gauges-max-age-s", value,
                      home=tmp_path)  # fmt: skip
        assert r.code == 2, (value, r.err)
        assert "--store-gauges-max-age-s" in r.err and "Traceback" not in r.err
