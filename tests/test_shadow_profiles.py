"""A shadow version has profiles of its own: the copies mirrored to it, per hour and day,
shown marked as a shadow's beside the endpoint's users' profiles, which stay what they
were (no shadow copy in them).

Profiles counted users' requests only, and a shadow copy went into none: a version that
only ever ran as a shadow had no profile at all, and an operator who compared the
candidate before promoting it (``monitor profiles``, the admin API's ``/profiles``) saw
nothing of its requests, errors or latency there.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.monitoring import update_profiles
from modelyard.monitoring._profiles import floor_hour
from modelyard.store import Judgement, NewInferenceRecord, Store
from worlds import home_store

LIVE = [100.0 + 10 * i for i in range(20)]  # what users waited: 100 to 290 ms
SHADOW_SLOW = 5000.0  # the shadow's answers that came, 5 s each
URL = "http://127.0.0.1:9/v1"  # never called: the judge's scores are saved as given


def _shadowed_hour(store: Store, hour: datetime) -> None:
    """One hour of ``acme-support``: 20 answers of acme-bot:1 (100-290 ms, 10 + 5 tokens
    each), and its shadow acme-bot:2's copies of 40 requests: 20 failed, 20 answered in
    5 s. A judge scored one answer of each (as ``rollout compare --shadow --judge`` does):
    the live one 5, the shadow's 2."""
    store.set_shadow("acme-support", 2, 1.0)
    store.put_judge("quality", rubric="relevance", base_url=URL, model="m")
    tid = store.get_tenant("acme").id
    v1, v2 = (store.get_model_version("acme-bot", n).id for n in (1, 2))

    def record(rid: str, i: int, **kw: object) -> NewInferenceRecord:
        at = hour + timedelta(seconds=30 * i)
        fields = {"id": rid, "endpoint_name": "acme-support", "route": "completions",
                  "status": "ok", "http_status": 200, "tenant_id": tid, "prompt_tokens": 10,
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
    store.save_judgements([
        Judgement("quality", 1, f"h-{rid}", rid, score, str(score), None, 1, 1, 0.0, 1.0)
        for rid, score in (("r0", 5.0), ("s0-shadow", 2.0))
    ])  # fmt: skip


@pytest.fixture
def hour() -> datetime:
    return floor_hour(datetime.now(UTC)) - timedelta(hours=3)


def _rows(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(version, shadow, requests, errors, p95 latency, judges) of each profile; a day's
    p95 is read from its hours' merged histograms, within about 2.5 %."""
    return sorted(
        (p["version"], p["shadow"], p["requests"], p["errors"],
         pytest.approx(p["latency_p95_ms"], rel=0.03), p["judges"])
        for p in found
    )  # fmt: skip


LIVE_ROW = ("acme-bot:1", False, 20, 0, float(np.percentile(LIVE, 95)),
            {"judge.quality": {"scored": 1, "mean": 5.0}})  # fmt: skip
SHADOW_ROW = ("acme-bot:2", True, 40, 20, SHADOW_SLOW,
              {"judge.quality": {"scored": 1, "mean": 2.0}})  # fmt: skip


@pytest.mark.parametrize("window", ["hour", "day"])
def test_monitor_profiles_shows_the_shadow_s_own_profile_marked(
    acme_home: Path, hour: datetime, window: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with home_store(acme_home) as store:
        _shadowed_hour(store, hour)
    args = ["monitor", "profiles", "--endpoint", "acme-support", "--window", window]
    assert main([*args, "--json"]) == 0
    assert _rows(json.loads(capsys.readouterr().out)) == [LIVE_ROW, SHADOW_ROW]
    # the users' profile alone: the endpoint's numbers, as before
    assert main([*args, "--traffic", "live", "--json"]) == 0
    assert _rows(json.loads(capsys.readouterr().out)) == [LIVE_ROW]
    assert main([*args, "--traffic", "shadow", "--json"]) == 0
    assert _rows(json.loads(capsys.readouterr().out)) == [SHADOW_ROW]
    # the table marks the shadow's row
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "acme-bot:2 (shadow)" in table and "acme-bot:1 (shadow)" not in table
    assert main([*args, "--traffic", "users"]) == 2  # a wrong value, as for every flag
    assert "invalid --traffic 'users': use live, shadow or all" in capsys.readouterr().err


def test_the_admin_api_lists_the_shadow_s_profile_marked(ops_admin: Any, hour: datetime) -> None:
    store: Store = ops_admin.store
    _shadowed_hour(store, hour)
    update_profiles(store, now=hour + timedelta(hours=2))
    found = ops_admin.get("/profiles", params={"endpoint": "acme-support"})
    assert found.status_code == 200, found.text
    assert _rows(found.json()) == [LIVE_ROW, SHADOW_ROW]
    live = ops_admin.get("/profiles", params={"endpoint": "acme-support", "shadow": "false"})
    assert _rows(live.json()) == [LIVE_ROW]
    (shadow,) = ops_admin.get("/profiles", params={"shadow": "true"}).json()
    assert (shadow["version"], shadow["error_rate"], shadow["tokens_in"]) == (
        "acme-bot:2",
        0.5,
        400,
    )
    # what the endpoint's numbers are read from (the report, the gauges): the users' alone
    assert [p.version for p in store.list_profiles(endpoint="acme-support")] == ["acme-bot:1"]
