"""The report's latency percentiles per hour are true percentiles of the hour's records
(every version and tenant together), not request-weighted means of each profile's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from modelyard.monitoring import update_profiles
from modelyard.monitoring._charts import nice
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import latency_series, render_report
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world


def _two_versions_in_one_hour(store: Store, hour: datetime) -> list[float]:
    """90 quick answers of version 1 and 10 slow ones no version answered, in one hour."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    rng = np.random.default_rng(1)
    latencies = [float(x) for x in rng.uniform(80, 120, 90)] + [
        float(x) for x in rng.uniform(4000, 6000, 10)
    ]
    store.add_inference_records([
        NewInferenceRecord(
            id=f"r{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=ms, ttft_ms=ms / 4, status="ok", http_status=200, tenant_id=tid,
            version_id=vid if i < 90 else None, created_at=hour + timedelta(seconds=30 * i),
        )
        for i, ms in enumerate(latencies)
    ])  # fmt: skip
    return latencies


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=3)


def test_the_report_s_hourly_p95_is_the_hour_s_true_p95(
    store: Store, hour: datetime, tmp_path: Path
) -> None:
    """90 answers near 100 ms and 10 near 5 s: the p95 is near 5 s; the mean of the two
    profiles' p95s weighted by their requests said about 600 ms."""
    latencies = _two_versions_in_one_hour(store, hour)
    now = hour + timedelta(hours=2)
    update_profiles(store, now=now)
    profiles = store.list_profiles(endpoint="acme-support", since=hour)
    assert len(profiles) == 2  # one per version
    series, approximate = latency_series(store, "acme-support", profiles, hour, now)
    assert approximate == 0
    t = hour.timestamp()
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert series[name] == [(t, float(np.percentile(latencies, q)))], name
    assert series["ttft p50"] == [(t, float(np.percentile([x / 4 for x in latencies], 50)))]
    page = render_report(store, "acme-support", since=hour)
    p95 = nice(float(np.percentile(latencies, 95)))
    assert f"<title>p95 at {hour:%Y-%m-%d %H:%M} UTC: {p95}</title>" in page
    assert "all versions" in page and "merged latency histograms" not in page


def test_an_hour_whose_records_retention_deleted_says_its_percentiles_are_approximate(
    store: Store, hour: datetime
) -> None:
    latencies = _two_versions_in_one_hour(store, hour)
    now = hour + timedelta(hours=2)
    update_profiles(store, now=now)
    assert store.purge_records("acme", hour + timedelta(hours=1)) == 100
    profiles = store.list_profiles(endpoint="acme-support", since=hour)
    series, approximate = latency_series(store, "acme-support", profiles, hour, now)
    assert approximate == 1
    ((_, p95),) = series["p95"]
    assert p95 == pytest.approx(float(np.percentile(latencies, 95)), rel=0.05)
    page = render_report(store, "acme-support", since=hour)
    assert "1 hour(s) whose raw records retention deleted" in page
