"""The console's usage page: a tenant's cost per UTC day as a chart, a line per tenant,
with the window's requests, tokens and cost per tenant in a table (``GET /usage``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import Browser, expect

from modelyard.store import NewInferenceRecord
from test_console import World, _open, _page, shots, world  # noqa: F401


def test_in_the_browser_usage_shows_each_tenants_cost_per_day(
    world: World,  # noqa: F811
    browser: Browser,
    shots: Path,  # noqa: F811
) -> None:
    ops = world.store
    ops.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)
    acme, version = ops.get_tenant("acme").id, ops.get_model_version("support", 1).id
    today = datetime.now(UTC)
    ops.add_inference_records(
        NewInferenceRecord(
            id=f"r{i}", endpoint_name="acme-support", route="completions", latency_ms=1.0,
            status="ok", http_status=200, tenant_id=acme, version_id=version,
            prompt_tokens=1000, completion_tokens=500, created_at=at,
        )
        for i, at in enumerate([today - timedelta(days=3), today, today])
    )  # fmt: skip
    page, errors = _page(browser, world, "viv")
    _open(page, world, "usage")
    row = page.get_by_test_id("usage").locator("tr", has_text="acme")
    expect(row).to_contain_text("3")  # requests
    expect(row).to_contain_text("3,000")  # prompt tokens
    expect(row).to_contain_text("6")  # cost: 3 x (1 + 1)
    chart = page.get_by_test_id("usage-chart")
    assert chart.locator("svg.chart path[stroke]").count() == 1  # a line: acme's
    labels = chart.locator("svg.chart text.axis").all_text_contents()
    assert any(len(x) == 5 and x[2] == "-" for x in labels), labels  # dates (MM-DD) mark days
    page.screenshot(path=shots / "console-usage.png", full_page=True)
    page.get_by_role("link", name="7 days").click()
    expect(page.locator("main")).to_contain_text("The last 7 days")
    assert errors == [], errors
