"""``modelyard monitor recompute``: a range of hour and day profiles computed again from
their records.

The monitoring loop computes only the recent hours (and those whose feedback changed), so
profiles an older release computed by other rules (shadow copies in the users' numbers
before 2026-12-07), or before a price was set, stayed as they were for good. A tenant's
hours that a retention purge reached must keep their profiles: their records are gone,
and computing those hours again would have deleted the only numbers left of them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelyard.cli import main
from modelyard.monitoring import update_profiles
from modelyard.monitoring._profiles import HOUR, compute_day, floor_day, floor_hour
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world, home_store


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=5)


def _records(store: Store, tenant: str, model: str, endpoint: str, at: datetime) -> None:
    """20 answers (10 + 5 tokens each) of ``model``:1 and 10 shadow copies to ``model``:2."""
    tid = store.get_tenant(tenant).id
    v1, v2 = (store.get_model_version(model, n).id for n in (1, 2))
    common = {"endpoint_name": endpoint, "route": "completions", "status": "ok",
              "http_status": 200, "tenant_id": tid, "prompt_tokens": 10,
              "completion_tokens": 5, "latency_ms": 100.0}  # fmt: skip
    store.add_inference_records(
        [NewInferenceRecord(id=f"{tenant}-{i}", version_id=v1, created_at=at +
                            timedelta(seconds=60 * i), **common) for i in range(20)]  # type: ignore[arg-type]
        + [NewInferenceRecord(id=f"{tenant}-s{i}", version_id=v2, shadow=True, created_at=at +
                              timedelta(seconds=60 * i), **common) for i in range(10)]  # type: ignore[arg-type]
    )  # fmt: skip


def _as_an_old_release_did(store: Store, hour: datetime) -> None:
    """The hour's profiles as a release before 2026-12-07 wrote them: shadow copies counted
    in the users' profile (30 requests, where users sent 20), and no shadow profile."""
    rows = [
        {k: v for k, v in row.items() if k not in ("id", "window", "updated_at")}
        | {"requests": row["requests"] + 10}
        for row in store.profile_rows("hour", hour, hour + HOUR)
        if not row["shadow"]
    ]
    store.replace_profiles("hour", hour, hour + HOUR, rows)
    compute_day(store, floor_day(hour))  # the day from its hours, as that release did


def _profiles(capsys: pytest.CaptureFixture[str], *args: str) -> list[tuple[Any, ...]]:
    # 2d: the day profile of an hour 5 hours ago starts before 1d ago between 00:00 and 05:00
    assert main(["monitor", "profiles", "--no-update", "--json", "--traffic", "all",
                 "--since", "2d", *args]) == 0  # fmt: skip
    found = json.loads(capsys.readouterr().out)
    return sorted((p["tenant"], p["version"], p["shadow"], p["requests"], p["cost"]) for p in found)


def test_recompute_counts_old_hours_by_today_s_rules_and_prices(
    acme_home: Path, hour: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    with home_store(acme_home) as store:
        _records(store, "acme", "acme-bot", "acme-support", hour)
        update_profiles(store, now=hour + 2 * HOUR)
        _as_an_old_release_did(store, hour)
        store.set_token_price("tiny", input_per_1k=1.0, output_per_1k=2.0)  # set late
    stale = [("acme", "acme-bot:1", False, 30, None)]
    assert _profiles(capsys) == stale
    assert _profiles(capsys, "--window", "day") == stale
    assert main(["monitor", "tick"]) == 0  # the monitoring loop
    capsys.readouterr()
    assert _profiles(capsys) == stale  # the loop leaves an hour before its watermark

    assert main(["monitor", "recompute", "--since", "1d", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["hours"], done["kept"]) == (1, {})
    # 20 users' answers at 10 x 1.0 + 5 x 2.0 per 1,000 tokens; the copies apart
    fixed = [("acme", "acme-bot:1", False, 20, pytest.approx(0.4)),
             ("acme", "acme-bot:2", True, 10, pytest.approx(0.2))]  # fmt: skip
    assert _profiles(capsys) == fixed
    assert _profiles(capsys, "--window", "day") == fixed


def test_a_purged_tenant_s_hours_keep_their_profiles(
    acme_home: Path, hour: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    with home_store(acme_home) as store:
        fake_world(store, tenant="globex", model="globex-bot", endpoint="globex-support",
                   base_model="tiny-g")  # fmt: skip
        _records(store, "acme", "acme-bot", "acme-support", hour)
        _records(store, "globex", "globex-bot", "globex-support", hour)
        update_profiles(store, now=hour + 2 * HOUR)
        _as_an_old_release_did(store, hour)
        # acme keeps its records an hour: the hour's are gone, its profile is all that is left
        assert store.purge_records("acme", hour + HOUR) == 30
    assert main(["monitor", "recompute", "--since", "1d"]) == 0
    out = capsys.readouterr().out
    assert "recomputed 1 hour(s) and 1 day(s) of profiles" in out
    assert f"kept acme's profiles before {hour + HOUR:%Y-%m-%d %H:%M} UTC as they were" in out
    assert _profiles(capsys) == [
        ("acme", "acme-bot:1", False, 30, None),  # as it was: nothing to compute it from
        ("globex", "globex-bot:1", False, 20, None),
        ("globex", "globex-bot:2", True, 10, None),
    ]
    assert main(["monitor", "recompute", "--since", "1d", "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)["kept"]
    assert list(kept) == ["acme"] and kept["acme"].startswith(f"{hour + HOUR:%Y-%m-%dT%H:%M}")


def test_until_on_the_hour_ends_there(
    acme_home: Path, hour: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--until 14:00`` recomputed the hour from 14:00 to 15:00 too."""
    with home_store(acme_home) as store:
        _records(store, "acme", "acme-bot", "acme-support", hour)  # in the hour from `hour`
    half = hour + timedelta(minutes=30)
    for until, hours, end in (
        (hour, 0, hour),
        (half, 1, hour + HOUR),
        (hour + HOUR, 1, hour + HOUR),
    ):
        argv = ["monitor", "recompute", "--since", (hour - HOUR).isoformat(), "--until",
                until.isoformat(), "--json"]  # fmt: skip
        assert main(argv) == 0
        done = json.loads(capsys.readouterr().out)
        assert (done["hours"], done["until"]) == (hours, end.isoformat()), until


def test_recompute_refuses_what_it_cannot_do(
    acme_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["monitor", "recompute", "--since", "yesterday"]) == 2
    assert "invalid --since 'yesterday'" in capsys.readouterr().err
    assert main(["monitor", "recompute", "--since", "1d", "--until", "3d"]) == 2
    assert "nothing to recompute: since" in capsys.readouterr().err
    assert main(["monitor", "recompute"]) == 2  # --since is required
    assert "--since" in capsys.readouterr().err
    monkeypatch.setenv("MODELYARD_URL", "http://127.0.0.1:9")
    assert main(["monitor", "recompute", "--since", "1d"]) == 2
    assert "works on the database only" in capsys.readouterr().err
