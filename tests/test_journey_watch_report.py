"""Journey 4 (the SRE): `monitor report --since 30m` during an incident shows the traffic
of the last half hour. Profiles are hourly, and the report read only the hours starting
after --since: at 17:52, `--since 30m` read none, and said 0 requests and "no data"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelyard.monitoring import update_profiles
from modelyard.monitoring._profiles import floor_hour
from modelyard.monitoring._report import render_report
from modelyard.store import Store
from worlds import answered, fake_world


def test_a_report_since_minutes_ago_counts_the_hour_it_falls_in(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        fake_world(store)
        now = datetime.now(UTC)
        hour = floor_hour(now)
        # three requests at this hour's start, one the hour before: not in the report
        store.add_inference_records(answered(store, f"r{i}", 1, hour) for i in range(3))
        store.add_inference_records([answered(store, "old", 1, hour - timedelta(minutes=30))])
        update_profiles(store)
        since = max(hour, now - timedelta(seconds=30)) + timedelta(microseconds=1)
        page = render_report(store, "support", since=since)
    summary = page.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    assert "<td>3</td>" in summary  # requests
    assert f"{hour:%Y-%m-%d %H:%M}  to" in page
    assert f"(the whole hour of {since:%H:%M}: profiles are hourly)" in page
    traffic = page.split("Requests per hour, per version", 1)[1].split("</figure>", 1)[0]
    assert "no data" not in traffic and f"at {hour:%Y-%m-%d %H:%M} UTC: 3" in traffic
