"""Rollout samples at scale: ``Store.rollout_samples`` reads only the records of the versions
it is asked for (and of the requests that fell back from them), not every record of the
endpoint, and gives the same samples, A/B report and guard results as its code before it
read in SQL (``_old_samples``, verbatim) on a mix of versions, fallbacks, shadows, errors,
cancelled and refused requests, feedback and another endpoint's traffic. On SQLite and
PostgreSQL (``store_url``)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from conftest import statements
from modelyard.delivery import TrafficSample, compare_versions, evaluate_guards
from modelyard.store import NewInferenceRecord, Store, VersionSample
from modelyard.store._schema import FeedbackRow, InferenceRecordRow, ModelVersionRow
from worlds import fake_world

NOW = datetime.now(UTC)
SINCE = NOW - timedelta(hours=1)
STATUSES = ["ok"] * 7 + ["error", "timeout", "cancelled", "refused", "running"]

Old = tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...], int, int]


def _old_samples(
    store: Store, endpoint: str, since: datetime, ids: Sequence[int]
) -> dict[int, Old]:
    """``rollout_samples`` before it filtered in SQL, verbatim but for what it returns
    (statuses, latencies, ttfts, feedback, fallbacks, version number as tuples): every live
    record of the endpoint since ``since``, the versions picked out in Python."""
    with store._session("old") as s:
        rows = s.execute(
            select(
                InferenceRecordRow.version_id,
                InferenceRecordRow.status,
                InferenceRecordRow.latency_ms,
                InferenceRecordRow.ttft_ms,
                InferenceRecordRow.fallback_from_id,
                FeedbackRow.score,
            )
            .outerjoin(FeedbackRow, FeedbackRow.record_id == InferenceRecordRow.id)
            .where(
                InferenceRecordRow.endpoint_name == endpoint,
                InferenceRecordRow.created_at >= since,
                InferenceRecordRow.shadow.is_(False),
            )
        ).all()
        query = select(ModelVersionRow.id, ModelVersionRow.version)
        numbers: dict[int, int] = dict(s.execute(query.where(ModelVersionRow.id.in_(ids))).all())  # type: ignore[arg-type]
    acc: dict[int, dict[str, Any]] = {
        vid: {"st": [], "lat": [], "ttft": [], "fb": [], "fallbacks": 0} for vid in ids
    }
    for version_id, status, latency, ttft, fallback_from, score in rows:
        if fallback_from in acc:
            acc[fallback_from]["fallbacks"] += 1
            continue
        if version_id not in acc:
            continue
        a = acc[version_id]
        a["st"].append(status)
        if status == "ok":
            a["lat"].append(float(latency))
            if ttft is not None:
                a["ttft"].append(float(ttft))
        if score is not None:
            a["fb"].append(float(score))
    return {
        vid: (tuple(a["st"]), tuple(a["lat"]), tuple(a["ttft"]), tuple(a["fb"]),
              int(a["fallbacks"]), numbers.get(vid, 0))
        for vid, a in acc.items()
    }  # fmt: skip


def _as_sample(vid: int, old: Old) -> VersionSample:
    statuses, lat, ttft, fb, fallbacks, number = old
    return VersionSample(statuses, lat, ttft, fb, version=number, version_id=vid,
                         fallbacks=fallbacks)  # fmt: skip


@pytest.fixture
def mixed(store_url: str) -> Iterator[tuple[Store, list[int]]]:
    """``support`` with 1,500 records of bot:1, 120 of bot:2 and 60 of bot:3 in the last
    hour (every status, a tenth shadows, a fifth of bot:1's falling back from bot:2 and a
    few of bot:2's from bot:3, a third without a time to first token, feedback on one in
    five), 300 older ones, and bot:2's records on ``other``."""
    with Store.open(store_url) as store:
        ids = [v.id for v in fake_world(store, versions=3)]
        store.create_endpoint("other", model_ref="bot:2", tenant="acme")
        tenant = store.get_tenant("acme").id
        rng = random.Random(7)
        records = []
        plan = [(ids[0], 1500, "support"), (ids[1], 120, "support"), (ids[2], 60, "support"),
                (ids[1], 200, "other")]  # fmt: skip
        for vid, count, endpoint in plan:
            for i in range(count):
                fallback = None
                if vid == ids[0] and rng.random() < 0.2:
                    fallback = ids[1]
                elif vid == ids[1] and rng.random() < 0.1:
                    fallback = ids[2]
                records.append(NewInferenceRecord(
                    id=f"{endpoint}-{vid}-{i}", endpoint_name=endpoint, route="completions",
                    latency_ms=rng.lognormvariate(3 + 0.1 * (vid - ids[0]), 0.5),
                    ttft_ms=None if rng.random() < 0.3 else rng.uniform(5, 50),
                    status=rng.choice(STATUSES), http_status=200, tenant_id=tenant, version_id=vid,
                    shadow=rng.random() < 0.1, fallback_from_id=fallback,
                    created_at=SINCE - timedelta(minutes=5) if i % 8 == 0 else
                    SINCE + timedelta(seconds=rng.uniform(1, 3000)),
                ))  # fmt: skip
        store.add_inference_records(records)
        for r in records[::5]:
            if r.status in ("refused", "error"):  # no answer: nothing to rate (a 409)
                continue
            if r.shadow:  # a copy no user saw: no tenant can rate it (a 404)
                continue
            store.add_feedback(r.id, tenant="acme", score=rng.choice([-1.0, 1.0, 0.5]))
        yield store, ids


def _rows_read(store: Store, sent: list[tuple[str, Any]]) -> int:
    """The rows the store's statements on inference records return (each run again)."""
    with store._engine.connect() as conn:
        return sum(
            len(conn.exec_driver_sql(sql, params).fetchall())
            for sql, params in sent
            if "inference_records" in sql and sql.lstrip().upper().startswith("SELECT")
        )


def test_a_versions_sample_reads_only_its_own_records(mixed: tuple[Store, list[int]]) -> None:
    store, ids = mixed
    old = _old_samples(store, "support", SINCE, [ids[1]])[ids[1]]
    with statements(store) as sent:
        new = store.rollout_samples("support", SINCE, [ids[1]])[ids[1]]
    # bot:2's live records and those that fell back from it, not bot:1's and bot:3's
    assert _rows_read(store, sent) == len(old[0]) + old[4]
    assert (dict(new.statuses), new.fallbacks) == (Counter(old[0]), old[4])
    assert new.fallbacks > 0 and new.requests > 0
    assert store.rollout_samples("support", SINCE, []) == {}


def _same(new: VersionSample, old: Old) -> None:
    statuses, lat, ttft, fb, fallbacks, number = old
    assert dict(new.statuses) == Counter(statuses)
    assert (new.requests, new.errors) == (ended_of(statuses), failed_of(statuses))
    # the same values in the same order (a bootstrap interval depends on it)
    assert new.latencies_ms.tolist() == list(lat)
    assert new.ttfts_ms.tolist() == list(ttft)
    assert new.feedback.tolist() == list(fb)
    assert (new.fallbacks, new.version) == (fallbacks, number)


def ended_of(statuses: Sequence[str]) -> int:
    return sum(1 for st in statuses if st in ("ok", "error", "timeout"))


def failed_of(statuses: Sequence[str]) -> int:
    return sum(1 for st in statuses if st in ("error", "timeout"))


@pytest.mark.parametrize("which", [(0, 1, 2), (1,), (0, 2), (2,)])
def test_samples_are_those_of_the_old_reading(
    mixed: tuple[Store, list[int]], which: tuple[int, ...]
) -> None:
    store, ids = mixed
    wanted = [ids[i] for i in which]
    for since in (SINCE, SINCE - timedelta(hours=1)):
        old = _old_samples(store, "support", since, wanted)
        new = store.rollout_samples("support", since, wanted)
        assert sorted(new) == sorted(old)
        for vid in wanted:
            _same(new[vid], old[vid])


def test_compare_and_guards_give_what_the_old_samples_gave(
    mixed: tuple[Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = mixed
    report = compare_versions(store, "support", SINCE, min_n=10).as_json()
    assert [v["version"] for v in report["versions"]] == ["bot:1", "bot:2", "bot:3"]

    def old_reading(endpoint: str, since: datetime, wanted: Sequence[int]) -> Any:
        old = _old_samples(store, endpoint, since, wanted)
        return {vid: _as_sample(vid, o) for vid, o in old.items()}

    with monkeypatch.context() as patch:
        patch.setattr(store, "rollout_samples", old_reading)
        assert compare_versions(store, "support", SINCE, min_n=10).as_json() == report

    guards = ["error_rate <= 0.02", "error_rate <= 1.5 * baseline", "p95_latency_ms <= baseline",
              "p50_latency_ms <= 30", "p99_latency_ms <= 2 * baseline", "mean_latency_ms <= 40",
              "p95_ttft_ms <= baseline", "feedback_score >= baseline - 0.1"]  # fmt: skip
    new = store.rollout_samples("support", SINCE, ids)
    old = _old_samples(store, "support", SINCE, ids)
    canary = TrafficSample.of([new[ids[1]]])
    baseline = TrafficSample.of([new[ids[0]], new[ids[2]]])
    got = evaluate_guards(guards, canary, baseline, min_requests=10)
    # the old merge: the versions' tuples one after the other
    old_base = [tuple(x for o in (old[ids[0]], old[ids[2]]) for x in o[k]) for k in range(4)]
    want = evaluate_guards(
        guards, TrafficSample(*old[ids[1]][:4]), TrafficSample(*old_base), min_requests=10
    )
    assert got == want
    assert got[2].baseline == float(np.percentile(old_base[1], 95))
    assert got[7].value == float(np.mean(old[ids[1]][3]))
    assert {r.status for r in got} >= {"pass", "breach"}
