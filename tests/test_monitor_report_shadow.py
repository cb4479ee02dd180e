"""``monitor report``'s shadow section: each version that got shadow copies in the period,
beside the production it shadowed over the same hours (requests, error rate, latency
p50/p95, feedback, judges' mean scores) and a latency chart of both, read from the
shadow's own profiles; the rest of the page stays the users' requests.

The report had no shadow section: shadow copies counted nowhere in it, so someone running
a shadow rollout could not see there how the candidate did beside production.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.monitoring import update_profiles
from modelyard.monitoring._charts import nice
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import render_report
from modelyard.store import Judgement, NewInferenceRecord, Store
from worlds import fake_world, home_store

LIVE = [100.0 + 10 * i for i in range(20)]  # what users waited: 100 to 290 ms
SHADOW = [400.0 + 20 * i for i in range(30)]  # the shadow's answers that came: 400 to 980 ms
URL = "http://127.0.0.1:9/v1"  # never called: the judge's scores are saved as given


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=3)


def _record(store: Store, rid: str, at: datetime, version: int, **kw: object) -> NewInferenceRecord:
    fields = {"id": rid, "endpoint_name": "acme-support", "route": "completions",
              "status": "ok", "http_status": 200, "tenant_id": store.get_tenant("acme").id,
              "prompt_tokens": 10, "completion_tokens": 5, "created_at": at,
              "version_id": store.get_model_version("acme-bot", version).id} | kw  # fmt: skip
    return NewInferenceRecord(**fields)  # type: ignore[arg-type]


def _shadowed_hour(store: Store, hour: datetime, *, tag: str = "") -> None:
    """One hour of ``acme-support``: 20 answers of acme-bot:1 (``LIVE``), and its shadow
    acme-bot:2's copies of 40 requests: 10 failed, 30 answered (``SHADOW``)."""
    live = [
        _record(store, f"r{tag}{i}", hour + timedelta(seconds=30 * i), 1, latency_ms=ms)
        for i, ms in enumerate(LIVE)
    ]
    failed = [
        _record(store, f"f{tag}{i}-shadow", hour + timedelta(seconds=30 * i), 2, shadow=True,
                latency_ms=20.0, status="error", http_status=500, completion_tokens=0)
        for i in range(10)
    ]  # fmt: skip
    answered = [
        _record(store, f"s{tag}{i}-shadow", hour + timedelta(seconds=20 * i), 2, shadow=True,
                latency_ms=ms)
        for i, ms in enumerate(SHADOW)
    ]  # fmt: skip
    store.add_inference_records([*live, *failed, *answered])


def _row(*cells: object) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def test_the_report_shows_the_shadow_beside_production(
    acme_home: Path, hour: datetime, tmp_path: Path
) -> None:
    """The shadow's numbers, counted from its copies, beside production's on the same
    hour; the summary and charts stay the users' 20 requests."""
    with home_store(acme_home) as store:
        store.set_shadow("acme-support", 2, 1.0)
        _shadowed_hour(store, hour)
        for rid, score in (("r0", 1.0), ("r1", 1.0), ("r2", -1.0)):
            store.add_feedback(rid, tenant="acme", score=score)
        store.put_judge("quality", rubric="relevance", base_url=URL, model="m")
        store.save_judgements([
            Judgement("quality", 1, f"h-{rid}", rid, score, str(score), None, 1, 1, 0.0, 1.0)
            for rid, score in (("r0", 5.0), ("r1", 4.0), ("s0-shadow", 2.0), ("s1-shadow", 3.0))
        ])  # fmt: skip
    out = tmp_path / "report.html"
    args = ["monitor", "report", "--endpoint", "acme-support", "--out", str(out)]
    assert main([*args, "--since", "6h"]) == 0
    page = out.read_text(encoding="utf-8")
    section = page.split("<h2>Shadow versions</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<h3>acme-bot:2 (shadow) beside production (acme-bot:1)</h3>" in section
    assert "1 hour(s) with shadow copies" in section
    head = ("version", "traffic", "requests", "error rate", "p50 latency (ms)",
            "p95 latency (ms)", "feedback", "judge.quality mean")  # fmt: skip
    assert "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" in section
    # 40 copies, 10 failed: a quarter; latency of the 30 answered ok (exact: one profile)
    shadow_p50, shadow_p95 = (float(np.percentile(SHADOW, q)) for q in (50, 95))
    assert _row("acme-bot:2 (shadow)", "shadow copies", 40, "25.0%", f"{shadow_p50:,.1f}",
                f"{shadow_p95:,.1f}", "-", "2.50 (n=2)") in section  # fmt: skip
    live_p50, live_p95 = (float(np.percentile(LIVE, q)) for q in (50, 95))
    assert _row("acme-bot:1", "production", 20, "0.0%", f"{live_p50:,.1f}", f"{live_p95:,.1f}",
                "+0.33 (n=3)", "4.50 (n=2)") in section  # fmt: skip
    assert "~" not in section  # one profile each: exact percentiles
    # the chart: both lines per hour
    when = f"{hour:%Y-%m-%d %H:%M} UTC"
    for name, value in (("shadow p95", shadow_p95), ("production p95", live_p95),
                        ("shadow p50", shadow_p50), ("production p50", live_p50)):  # fmt: skip
        assert f"<title>{name} at {when}: {nice(value)}</title>" in section
    # production's own numbers, as before: the users' 20 requests, none failed
    summary = page.split("<h2>Summary</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<tbody><tr><td>20</td><td>0.0%</td><td>0</td><td>200</td><td>100</td>" in summary
    assert f"<title>p95 at {when}: {nice(live_p95)}</title>" in page
    assert f"<title>acme-bot:1 at {when}: 20</title>" in page  # requests per hour
    assert "acme-bot:2 at" not in page  # the shadow has no line of the users' charts


def test_production_is_the_users_requests_of_the_hours_the_shadow_got_copies(
    store: Store, hour: datetime
) -> None:
    """Production's traffic in an hour before the shadow began is in the summary, not in
    the shadow's comparison; a shadow over two hours reads its percentiles from its
    profiles' merged histograms, and says so."""
    fake_world(store, model="acme-bot", endpoint="acme-support", versions=3)
    store.set_shadow("acme-support", 2, 1.0)
    before = hour - timedelta(hours=1)
    store.add_inference_records([
        _record(store, f"early{i}", before + timedelta(seconds=i), 1, latency_ms=50.0)
        for i in range(7)
    ])  # fmt: skip
    _shadowed_hour(store, hour, tag="a")
    _shadowed_hour(store, hour + timedelta(hours=1), tag="b")
    # a canary in the plan in the second hour: production too
    store.add_inference_records([
        _record(store, f"c{i}", hour + timedelta(hours=1, seconds=i), 3, latency_ms=70.0)
        for i in range(5)
    ])  # fmt: skip
    update_profiles(store, now=hour + timedelta(hours=3))
    page = render_report(store, "acme-support", since=before)
    section = page.split("<h2>Shadow versions</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<h3>acme-bot:2 (shadow) beside production (acme-bot:1, acme-bot:3)</h3>" in section
    assert "2 hour(s) with shadow copies" in section
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [c.split("</td>")[0] for c in tr.split("<td>")[1:]]
            for tr in section.split("<tr>")[1:]
            if "<td>" in tr
        )
    }
    assert rows["acme-bot:2 (shadow)"][:3] == ["shadow copies", "80", "25.0%"]
    assert rows["acme-bot:1"][:3] == ["production", "40", "0.0%"]  # not the early 7
    assert rows["acme-bot:3"] == ["production", "5", "0.0%", "70.0", "70.0", "-"]
    for version, values in (("acme-bot:2 (shadow)", SHADOW), ("acme-bot:1", LIVE)):
        p50, p95 = rows[version][3:5]
        assert p50.startswith("~") and p95.startswith("~")
        assert float(p50[1:].replace(",", "")) == pytest.approx(np.percentile(values, 50), rel=0.03)
        assert float(p95[1:].replace(",", "")) == pytest.approx(np.percentile(values, 95), rel=0.03)
    assert "merged latency histograms (within about 2.5 %)" in section
    summary = page.split("<h2>Summary</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<tbody><tr><td>52</td><td>0.0%</td>" in summary  # 7 + 40 + 5 users' requests


def test_a_report_without_shadow_copies_says_so_in_one_line(store: Store, hour: datetime) -> None:
    fake_world(store, model="acme-bot", endpoint="acme-support")
    store.add_inference_records([
        _record(store, f"r{i}", hour + timedelta(seconds=i), 1, latency_ms=ms)
        for i, ms in enumerate(LIVE)
    ])  # fmt: skip
    update_profiles(store, now=hour + timedelta(hours=2))

    def section() -> str:
        page = render_report(store, "acme-support", since=hour)
        return page.split("<h2>Shadow versions</h2>", 1)[1].split("<h2>", 1)[0]

    assert section() == (
        '<p class="empty">no shadow copies in this period: mirror a share of the requests to '
        "a candidate with modelyard endpoints set-traffic acme-support --shadow N "
        "--shadow-fraction 0.1</p>"
    )
    store.set_shadow("acme-support", 2, 0.2)  # set, but no copy came yet
    assert section() == (
        '<p class="empty">no shadow copies in this period: acme-bot:2 is the shadow (20 % of '
        "requests) but got none yet</p>"
    )
