"""The report's charts: round y steps, a time axis over the whole period asked with each
mark labelled once, and drift panels that do not print ``- = -`` for a feature no
method applied to. Before, one hour of data in a week's report made a chart of that
hour alone with its one time label written three times, and y steps like 5.23."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.monitoring._charts import histogram_chart, line_chart, nice_ticks, time_ticks
from modelyard.store import DriftResult


@pytest.mark.parametrize(
    ("lo", "hi", "whole", "expected"),
    [
        (0, 20.9, False, [0, 10, 20, 30]),
        (0, 19, True, [0, 5, 10, 15, 20]),
        (0, 3, True, [0, 1, 2, 3]),  # a count is never split below 1
        (0, 1, True, [0, 1]),
        (0, 7183, False, [0, 2000, 4000, 6000, 8000]),
        (0, 0.02, False, [0, 0.005, 0.01, 0.015, 0.02]),
        (0, 0, False, [0, 0.25, 0.5, 0.75, 1.0]),  # nothing but zeros: an axis all the same
        (-1.0, 1.0, False, [-1.0, -0.5, 0, 0.5, 1.0]),
    ],
)
def test_y_ticks_are_round_steps_covering_the_data(
    lo: float, hi: float, whole: bool, expected: list[float]
) -> None:
    assert nice_ticks(lo, hi, whole=whole) == pytest.approx(expected)


def test_time_marks_are_whole_days_over_a_week_and_whole_hours_over_a_day() -> None:
    end = datetime(2026, 12, 6, 8, 16, tzinfo=UTC)
    ticks, pattern = time_ticks((end - timedelta(days=7)).timestamp(), end.timestamp())
    days = [datetime.fromtimestamp(t, UTC) for t in ticks]
    assert pattern == "%m-%d" and len(days) == 7
    assert all((d.hour, d.minute) == (0, 0) for d in days)
    assert days[0] == datetime(2026, 11, 30, tzinfo=UTC) and days[-1].day == 6
    ticks, pattern = time_ticks((end - timedelta(hours=20)).timestamp(), end.timestamp())
    hours = [datetime.fromtimestamp(t, UTC) for t in ticks]
    assert pattern == "%m-%d %H:%M" and 2 <= len(hours) <= 8
    assert all(h.minute == 0 and h.hour % 3 == 0 for h in hours)


def _labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="middle">([^<]+)</text>', svg)


def test_one_hour_of_data_in_a_week_is_drawn_at_its_place_in_the_week() -> None:
    end = datetime(2026, 12, 6, 8, tzinfo=UTC).timestamp()
    start = end - 7 * 86400
    svg = line_chart("Requests", {"bot:1": [(end, 19.0)]}, x_range=(start, end), whole=True)
    labels = _labels(svg)
    assert labels == ["11-30", "12-01", "12-02", "12-03", "12-04", "12-05", "12-06"]
    (cx,) = re.findall(r'<circle cx="([\d.]+)"', svg)
    assert float(cx) == pytest.approx(640 - 52)  # the right end of the plot: the last hour
    assert re.findall(r'text-anchor="end">([^<]+)</text>', svg) == ["0", "5", "10", "15", "20"]
    assert "bot:1 at 2026-12-06 08:00 UTC: 19" in svg  # the point's tooltip: when and what


def test_a_single_instant_without_a_range_labels_its_time_once() -> None:
    t = datetime(2026, 12, 6, 8, tzinfo=UTC).timestamp()
    svg = line_chart("Requests", {"bot:1": [(t, 3.0)]})
    labels = _labels(svg)
    assert len(labels) == len(set(labels)) == 1


def test_percent_axes_label_small_shares_apart() -> None:
    t = datetime(2026, 12, 6, 8, tzinfo=UTC).timestamp()
    svg = line_chart("Errors", {"bot:1": [(t, 0.02), (t + 3600, 0.0)]}, percent=True)
    ticks = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert ticks == ["0%", "0.5%", "1%", "1.5%", "2%"]  # ".0%" made 0%, 0%, 1%, 2%, 2%


def test_a_unit_is_written_above_the_axis_not_across_its_labels() -> None:
    t = datetime(2026, 12, 6, 8, tzinfo=UTC).timestamp()
    svg = line_chart("Latency", {"p95": [(t, 7183.0)]}, unit="ms")
    assert "rotate(" not in svg and 'text-anchor="end">ms</text>' in svg


def _drift(feature: str, method: str, threshold: float | None, status: str) -> DriftResult:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    return DriftResult(
        run_id="r", computed_at=now, endpoint_name="support", version="bot:1", tenant=None,
        reference="eval", window_start=now - timedelta(hours=1), window_end=now,
        feature=feature, method=method, value=None, threshold=threshold, drifted=None,
        status=status, n_reference=0, n_current=19, details={},
    )  # fmt: skip


def test_a_drift_panel_with_no_method_names_only_its_feature() -> None:
    bare = _drift("prompt_tokens", "-", None, "no_reference")
    html = histogram_chart(bare)
    assert "<figcaption>prompt_tokens</figcaption>" in html and "- = -" not in html
    assert "no reference" in html
    few = _drift("prompt_chars", "ks", 0.05, "not_enough_data")
    assert "<figcaption>prompt_chars: ks</figcaption>" in histogram_chart(few)
