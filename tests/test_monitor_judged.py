"""Judged quality in the monitoring profiles: per hour (and day), endpoint, version and
tenant, what each judge's current revision made of the records (how many it scored, their
mean), read from the judgements when profiles are listed: in ``monitor profiles`` (table
and JSON), the admin API's profiles and the HTML report."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelyard.cli import main
from modelyard.monitoring import update_profiles
from modelyard.monitoring._profiles import floor_hour
from modelyard.store import Judgement, Store
from modelyard.store.entities import JudgedQuality
from worlds import answered, fake_world

URL = "http://127.0.0.1:9/v1"  # never called: the judgements are written as a tick would


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


def _judged(store: Store, judge: str, record: str, score: float | None) -> Judgement:
    revision = store.get_judge(judge).revision
    error = None if score is not None else "no score from 1 to 5 in the answer 'hm'"
    return Judgement(judge, revision, f"h-{judge}-{record}-{score}", record, score, "", error,
                     10, 2, 0.0, 1.0)  # fmt: skip


@pytest.fixture
def world(home: Path) -> tuple[Store, datetime]:
    """Endpoint ``support`` (bot:1 and bot:2, tenant acme): in the first of two past hours
    three records of bot:1 and two of bot:2, in the second one of bot:1; judges ``quality``
    and ``safe``. Returns (the store, the first hour)."""
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, endpoint="support", versions=2)
    first = floor_hour(datetime.now(UTC)) - timedelta(hours=3)
    at = first + timedelta(minutes=10)
    store.add_inference_records(
        [answered(store, f"r{i}", 1, at) for i in (1, 2, 3)]
        + [answered(store, f"r{i}", 2, at) for i in (4, 5)]
        + [answered(store, "r6", 1, at + timedelta(hours=1))]
    )
    for name in ("quality", "safe"):
        store.put_judge(name, rubric="relevance", base_url=URL, model="judge-ep")
    store.save_judgements(
        [
            _judged(store, "quality", "r1", 4.0),
            _judged(store, "quality", "r2", 2.0),
            _judged(store, "quality", "r3", None),  # no score: not counted
            _judged(store, "quality", "r1", 5.0),  # judged twice: its newest score, once
            _judged(store, "quality", "r4", 5.0),
            _judged(store, "quality", "r5", 3.0),
            _judged(store, "quality", "r6", 1.0),
            _judged(store, "safe", "r1", 5.0),
        ]
    )
    update_profiles(store)
    return store, first


def _quality(
    store: Store, window: str = "hour"
) -> dict[tuple[datetime, str | None], dict[str, JudgedQuality]]:
    return {
        (p.start, p.version): dict(p.judges)
        for p in store.list_profiles(window=window, endpoint="support")
    }


def test_each_hours_profile_has_each_judges_count_and_mean_per_version(
    world: tuple[Store, datetime],
) -> None:
    store, first = world
    second = first + timedelta(hours=1)
    assert _quality(store) == {
        (first, "bot:1"): {
            "judge.quality": JudgedQuality(scored=2, mean=3.5),
            "judge.safe": JudgedQuality(scored=1, mean=5.0),
        },
        (first, "bot:2"): {"judge.quality": JudgedQuality(scored=2, mean=4.0)},
        (second, "bot:1"): {"judge.quality": JudgedQuality(scored=1, mean=1.0)},
    }
    by_day = _quality(store, "day")
    if len({start for start, _ in by_day}) == 1:  # both hours on one day (not so at 02:xx UTC)
        days = {version: judges for (_, version), judges in by_day.items()}
        assert days["bot:1"]["judge.quality"] == JudgedQuality(scored=3, mean=8 / 3)

    # A score that arrives after the hour's profile was computed counts at once (read time).
    store.save_judgements([_judged(store, "quality", "r3", 3.0)])  # asked again, scored now
    assert _quality(store)[(first, "bot:1")]["judge.quality"] == JudgedQuality(3, 10 / 3)

    # A new revision of the judge: what the old one said counts nowhere.
    store.put_judge("quality", rubric="relevance", base_url=URL, model="judge-ep", replace=True)
    profiles = _quality(store)
    assert profiles[(first, "bot:1")] == {"judge.safe": JudgedQuality(1, 5.0)}
    assert profiles[(first, "bot:2")] == {} and profiles[(second, "bot:1")] == {}
    store.save_judgements([_judged(store, "quality", "r2", 4.0)])
    assert _quality(store)[(first, "bot:1")]["judge.quality"] == JudgedQuality(1, 4.0)
    store.close()


def test_monitor_profiles_and_the_report_show_the_judged_quality(
    world: tuple[Store, datetime], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, first = world
    store.close()
    code, out, err = run(capsys, "modelyard monitor profiles --endpoint support --json")
    assert code == 0, err
    shown = {(p["start"], p["version"]): p["judges"] for p in json.loads(out)}
    assert shown[(first.isoformat(), "bot:1")] == {
        "judge.quality": {"scored": 2, "mean": 3.5},
        "judge.safe": {"scored": 1, "mean": 5.0},
    }
    code, out, err = run(capsys, "modelyard monitor profiles --endpoint support")
    assert code == 0, err
    assert "judged" in out and "quality 3.50 (n=2)" in out and "safe 5.00 (n=1)" in out

    report = tmp_path / "report.html"
    code, _, err = run(
        capsys, f"modelyard monitor report --endpoint support --since 1d --out {report}"
    )
    assert code == 0, err
    html = report.read_text()
    judged = html[html.index("<h2>Judged quality</h2>") :]
    assert "judge.quality mean score per version" in judged
    assert "<td>judge.quality</td><td>bot:1</td><td>3</td><td>2.67</td>" in judged


def test_the_admin_api_lists_the_judged_quality_with_each_profile(
    world: tuple[Store, datetime],
) -> None:
    from types import SimpleNamespace

    from modelyard.admin._monitoring import list_profiles

    store, first = world
    caller: Any = SimpleNamespace(store=store)  # the route's own code, past its auth
    listed = list_profiles(caller, window="hour", endpoint="support", tenant=None, since=None)
    rows = {(r["start"], r["version"]): r["judges"] for r in json.loads(json.dumps(listed))}
    assert rows[(first.isoformat(), "bot:2")] == {"judge.quality": {"scored": 2, "mean": 4.0}}
    store.close()
