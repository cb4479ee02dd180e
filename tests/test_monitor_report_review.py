"""Journey 4 (the SRE) review of ``monitor report``'s page, as a browser shows it.

The time axis's labels never overlap: at ``--since 1d`` and ``2d`` the 11-character
labels (``12-06 09:00``) were drawn 67 px apart and ran into each other. And a request
refused before routing (no version: the quickstart's cross-tenant probe) is counted as
a refusal, not drawn as a version named "none" in the per-version charts."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.monitoring import update_profiles
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import render_report
from modelyard.store import NewInferenceRecord, Store
from worlds import answered, fake_world

AVERAGE_EM = 0.6  # a sans font's average character width, in em


def _figures(page: str) -> dict[str, str]:
    """Each chart's SVG, by its caption."""
    return dict(re.findall(r"<figure><figcaption>([^<]+)</figcaption>(<svg.*?</svg>)", page))


def _x_labels(svg: str) -> list[tuple[float, str]]:
    """The time axis's labels and where their centres are."""
    return [
        (float(x), text)
        for x, text in re.findall(
            r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle">([^<]+)<', svg
        )
    ]


@pytest.mark.parametrize("hours", [1, 6, 12, 24, 48, 72, 7 * 24, 30 * 24])
def test_the_time_axis_labels_never_overlap(store: Store, hours: int) -> None:
    fake_world(store)
    now = datetime.now(UTC)
    store.add_inference_records(
        [answered(store, "old", 1, now - timedelta(hours=hours)), answered(store, "new", 1, now)]
    )
    update_profiles(store)
    page = render_report(store, "support", since=now - timedelta(hours=hours))
    (font_px,) = re.findall(r"svg text\{font-size:(\d+)px", page)
    char_px = int(font_px) * AVERAGE_EM
    (width,) = {int(w) for w in re.findall(r'<svg viewBox="0 0 \d+ \d+" width="(\d+)"', page)}
    figures = _figures(page)
    assert "Requests per hour, per version" in figures
    for title, svg in figures.items():
        labels = _x_labels(svg)
        assert len(labels) >= 2, (title, labels)
        for (xa, a), (xb, b) in itertools.pairwise(labels):
            room = (len(a) + len(b)) / 2 * char_px  # each is centred on its mark
            assert xb - xa >= room, f"--since {hours}h, {title}: {a!r} at {xa}, {b!r} at {xb}"
        (x0, first), (x1, last) = labels[0], labels[-1]
        assert x0 - len(first) / 2 * char_px >= 0 and x1 + len(last) / 2 * char_px <= width


def _legend(svg: str) -> set[str]:
    return set(re.findall(r'<text x="\d+" y="15">([^<]+)</text>', svg))


def test_a_request_refused_before_routing_is_a_refusal_not_a_version(store: Store) -> None:
    fake_world(store)
    hour = floor_hour(datetime.now(UTC)) - timedelta(hours=2)
    records = [answered(store, f"a{i}", 1 + i % 2, hour + timedelta(minutes=i)) for i in range(4)]
    probe = NewInferenceRecord(
        id="probe", endpoint_name="support", route="chat.completions", latency_ms=1.0,
        status="refused", http_status=404, tenant_id=store.get_tenant("acme").id,
        version_id=None, created_at=hour + timedelta(minutes=30),
    )  # fmt: skip
    store.add_inference_records([*records, probe])
    update_profiles(store)
    page = render_report(store, "support", since=hour)
    figures = _figures(page)
    for title in ("Requests per hour, per version", "Error rate per version"):
        assert _legend(figures[title]) == {"bot:1", "bot:2"}, title
        assert "none at" not in figures[title]  # no tooltip of a version "none"
    summary = page.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    head = re.findall(r"<th>([^<]+)</th>", summary)
    cells = dict(zip(head, re.findall(r"<td>([^<]*)</td>", summary), strict=True))
    assert cells["requests"] == "5" and cells["refused before routing"] == "1"
    assert cells["error rate"] == "0.0%"
    assert "Requests that ended before routing, with no version: 1 refused" in page


def test_the_timeline_shows_a_versions_lineage_short_and_no_digest_cut_mid_way(
    store: Store,
) -> None:
    """A version registered with a real lineage (data digests, the config) filled the
    timeline's cell with raw JSON cut off in the middle of a hash."""
    fake_world(store, versions=1)
    digest = "3f" * 32
    lineage = {"data": {"train": {"digest": f"sha256:{digest}", "rows": 1200}},
               "config": {"lr": 2e-4}, "base_model": "tiny", "seed": 7}  # fmt: skip
    store.create_model_version("bot", kind="adapter", artifact_digest=digest, base_model="tiny",
                               run_id=None, lineage=lineage, metrics={})  # fmt: skip
    page = render_report(store, "support", since=datetime.now(UTC) - timedelta(hours=1))
    timeline = page[page.index("<h2>Versions and rollouts</h2>") :]
    assert "lineage: {4 fields}" in timeline
    assert "&quot;3f3f3f3f3f3f…&quot;" in timeline and "3f" * 13 not in timeline
