"""A judge reads, and its scores count for, one kind of record: a live answer (a user's
request, ``user_facing``, answered ok, ``answered_ok``). The records online judging and
rollout guards pick, an endpoint's mean (alert rules on a judge) and ``judges scores``
(per version) all use that one definition (``store._judges._live_answer``).

The picks asked for an ok status and no shadow; the mean and the summary only for no
shadow: a score given to a record that did not end ok counted in the endpoint's mean and
in ``judges scores``, though no judge is ever given such a record to read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.store import Judgement, NewInferenceRecord, Store
from worlds import home_store

URL = "http://127.0.0.1:9/v1"  # never called: the scores are saved as a judge gave them


def _scored_store(store: Store, now: datetime) -> None:
    """acme-support: bot 1 live, bot 2 its shadow; a live answer (4), the shadow's copy of
    it (1, as ``rollout compare --shadow --judge`` scores it), a live answer that failed
    (2), and a live answer no judge was asked about."""
    store.set_shadow("acme-support", 2, 1.0)
    store.put_judge("quality", rubric="relevance", base_url=URL, model="m")
    tenant = store.get_tenant("acme").id
    v1, v2 = (store.get_model_version("acme-bot", n).id for n in (1, 2))

    def record(rid: str, version: int, **kw: object) -> NewInferenceRecord:
        fields = {"id": rid, "endpoint_name": "acme-support", "route": "chat.completions",
                  "latency_ms": 10.0, "status": "ok", "http_status": 200, "tenant_id": tenant,
                  "version_id": version, "prompt": "### Instruction:\nhi\n\n### Response:\n",
                  "response": "hello", "created_at": now - timedelta(minutes=10)} | kw  # fmt: skip
        return NewInferenceRecord(**fields)  # type: ignore[arg-type]

    store.add_inference_records([
        record("live", v1),
        record("live-shadow", v2, shadow=True),
        record("failed", v1, status="error", http_status=500),
        record("unjudged", v1),
    ])  # fmt: skip
    store.save_judgements([
        Judgement("quality", 1, f"h-{rid}", rid, score, str(score), None, 1, 1, 0.0, 1.0)
        for rid, score in (("live", 4.0), ("live-shadow", 1.0), ("failed", 2.0))
    ])  # fmt: skip


def test_judges_read_and_count_live_answers_only(
    acme_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    since = now - timedelta(hours=1)
    with home_store(acme_home) as store:
        _scored_store(store, now)
        v1, v2 = (store.get_model_version("acme-bot", n).id for n in (1, 2))
        # what a judge is given: the live answer it was not asked about, nothing else
        assert store.unjudged_records("quality", "acme-support", since, [v1, v2], 10) == [
            "unjudged"
        ]
        # what alert rules on the judge read: the live answer's score alone
        assert store.judge_mean("quality", "acme-support", since, now) == (4.0, 1)

    code = main(["judges", "scores", "quality", "--endpoint", "acme-support", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out) == [
        {"version": "acme-bot:1", "scores": 1, "mean": 4.0, "min": 4.0, "max": 4.0}
    ]
