"""Issue 19's judge, end to end: a judge backed by a served, fine-tuned adapter scores a
version's answers in ``evaluate``; a gate on it blocks a version; a rollout guard on it
rolls back a version whose judged quality drops, and leaves one of the same quality alone;
its calls are cached and counted with their cost.

Everything is real: the judge adapter and the helpdesk versions are trained by
``modelyard.training`` (``judgeworld``), served on the transformers engine and called over
HTTP with the openai client; the controller is ticked here, as ``modelyard serve`` would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

import judgeworld as jw
from modelyard.delivery import Controller, start_rollout
from modelyard.judges import JudgeInput, run_judge
from modelyard.store import Rollout, Store
from waiting import until
from worlds import gate_metrics

# peft warns that the adapters adapt the tied output head (judgeworld says why they do)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:peft.*")


@dataclass
class Served:
    world: jw.JudgeWorld
    store: Store
    url: str
    key: str  # acme's API key (the judge's key too)
    data: Path  # the tickets, as evaluation rows

    def judge_calls(self) -> int:
        return len(self.store.list_inference_records(endpoint="judge-ep", limit=100_000))


@pytest.fixture(scope="module")
def served_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("judgeworld")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELYARD_HOME", str(root / "home"))
        mp.delenv("MODELYARD_STORE_URL", raising=False)
        mp.delenv("MODELYARD_ARTIFACTS", raising=False)
        world = jw.build(root, root / "home")
        data = root / "tickets.jsonl"
        data.write_text("".join(json.dumps(t) + "\n" for t in jw.TICKETS), encoding="utf-8")
        store = Store.open(world.store_url)
        key = jw.setup_endpoints(store)
        with world.serve(store) as url:
            jw.define_judge(store, url)
            yield Served(world, store, url, key, data)
        store.close()


@pytest.fixture
def served(served_world: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    monkeypatch.setenv("MODELYARD_HOME", str(served_world.world.home))
    monkeypatch.setenv("JUDGE_KEY", served_world.key)
    return served_world


@pytest.mark.slow
def test_the_judge_is_trained_to_near_zero_loss_and_scores_what_it_was_trained_on(
    served: Served,
) -> None:
    world = served.world
    bad = [{**t, "output": jw.BAD_ANSWER} for t in jw.TICKETS]
    for ref, rows in [("judge:1", jw.judge_rows()), ("helpdesk:1", jw.TICKETS),
                      ("helpdesk:2", bad)]:  # fmt: skip
        loss = jw.response_loss(world.base, world.adapters[ref], rows)
        assert loss < jw.MAX_LOSS, f"{ref}'s loss on its training rows is {loss:.3f}"
    judge = served.store.get_judge("quality")
    answers = list(jw.ANSWERS)
    run = run_judge(judge, [JudgeInput(a, "any question") for a in answers])  # no cache
    assert run.scores == [float(jw.ANSWERS[a]) for a in answers], run.judgements


@pytest.mark.slow
def test_a_gate_on_the_judge_blocks_the_version_whose_answers_it_scores_low(
    served: Served,
) -> None:
    evaluate = ["evaluate", "--data", str(served.data), "--max-new-tokens", "16", "--metrics",
                "judge.quality", "--gate", "judge.quality >= 4.0", "--json"]  # fmt: skip
    code, out, err = jw.cli(*evaluate[:1], "--model", "helpdesk:2", *evaluate[1:])
    assert code == 1, err
    bad = json.loads(out)
    assert bad["metrics"]["judge.quality"] == 1.0
    assert bad["judges"]["judge.quality"]["scored"] == len(jw.TICKETS)
    code, out, err = jw.cli("registry", "show", "helpdesk:2", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["gates"]["passed"] is False

    code, out, err = jw.cli(*evaluate[:1], "--model", "helpdesk:1", *evaluate[1:])
    assert code == 0, err
    assert json.loads(out)["metrics"]["judge.quality"] == 5.0
    code, out, err = jw.cli("registry", "show", "helpdesk:1", "--json")
    assert json.loads(out)["metrics"]["gates"]["passed"] is True

    # the same answers again: every score from the cache, no call to the judge
    calls = served.judge_calls()
    code, out, err = jw.cli(*evaluate[:1], "--model", "helpdesk:1", *evaluate[1:])
    assert code == 0, err
    assert json.loads(out)["judges"]["judge.quality"]["cached"] == len(jw.TICKETS)
    assert served.judge_calls() == calls
    code, out, err = jw.cli("judges", "list", "--json")
    (listed,) = [j for j in json.loads(out) if j["name"] == "quality"]
    assert listed["usage"]["calls"] >= 2 * len(jw.TICKETS) - 1  # identical answers share one
    assert listed["usage"]["cost"] > 0


# -- rollout guards on the judge -----------------------------------------------------------


def _ask(served: Served, n: int) -> None:
    with openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0) as client:
        for i in range(n):
            ticket = jw.TICKETS[i % len(jw.TICKETS)]
            client.chat.completions.create(
                model="helpdesk-ep", max_tokens=16, temperature=0,
                messages=[{"role": "system", "content": ticket["instruction"]},
                          {"role": "user", "content": ticket["input"]}],
            )  # fmt: skip


def _baking(store: Store, ctl: Controller) -> Rollout:
    def step() -> Rollout | None:
        ctl.tick()
        r = store.latest_rollout("helpdesk-ep")
        return r if r.phase == "baking" or not r.active else None

    return until("the first step", step)


def _until_ended(
    store: Store,
    ctl: Controller,
    timeout_s: float = 60.0,
    traffic: Callable[[], None] | None = None,
) -> Rollout:
    """Tick (sending ``traffic`` before each tick) until the rollout ends."""

    def ended() -> Rollout | None:
        if traffic is not None:
            traffic()
        ctl.tick()
        r = store.latest_rollout("helpdesk-ep")
        return None if r.active else r

    return until("the end of the rollout", ended, timeout_s)


def _canary_requests(store: Store, version: int) -> int:
    records = store.list_inference_records(endpoint="helpdesk-ep", limit=100_000)
    return sum(1 for r in records if r.version == f"helpdesk:{version}")


@pytest.mark.slow
def test_a_guard_on_the_judge_rolls_back_a_version_whose_answers_it_scores_lower(
    served: Served,
) -> None:
    store = served.store
    until("a live server", lambda: store.list_servers(alive=True))
    _ask(served, len(jw.TICKETS))  # the baseline's answers, before the rollout
    start_rollout(
        store, "helpdesk-ep", "helpdesk:2", steps="50,100", bake_s=0.5, min_requests=4,
        guards=["judge.quality >= baseline - 0.5 (sample 50)"],
        override_gates="testing a judge guard",
    )  # fmt: skip
    ctl = Controller(store)
    assert _baking(store, ctl).active
    until("canary traffic", lambda: _ask(served, 4) or _canary_requests(store, 2) >= 4)
    r = _until_ended(store, ctl)
    assert r.status == "rolled_back", r.reason
    breach = r.outcome["breach"]
    assert breach["kind"] == "guard" and "judge.quality" in breach["message"]
    (guard,) = breach["guards"]
    assert guard["value"] == 1.0 and guard["baseline"] == 5.0 and guard["threshold"] == 4.5
    assert guard["n"] >= 4 and guard["failed"] == 0
    assert {rt.version: rt.weight for rt in store.get_endpoint("helpdesk-ep").routes
            if rt.weight} == {1: 100}  # fmt: skip


@pytest.mark.slow
def test_a_guard_on_the_judge_passes_a_version_of_the_same_quality_and_shows_failures(
    served: Served,
) -> None:
    store = served.store
    one = store.get_model_version("helpdesk", 1)
    same = store.create_model_version(  # helpdesk:1's adapter again: the same answers
        "helpdesk", kind="adapter", artifact_digest=one.artifact_digest, base_model=one.base_model,
        run_id=None, lineage=dict(one.lineage), metrics=gate_metrics(True),
    )  # fmt: skip
    judge = store.get_judge("quality")
    store.put_judge(  # a judge that cannot be called where the controller runs
        "unreachable", rubric="relevance", base_url=judge.base_url, model="judge-ep",
        api_key_env="JUDGE_KEY_NOT_SET",
    )  # fmt: skip
    until("a live server", lambda: store.list_servers(alive=True))
    _ask(served, len(jw.TICKETS))
    start_rollout(
        store, "helpdesk-ep", same.ref, steps="50,100", bake_s=1.0, min_requests=4,
        guards=["judge.quality >= baseline - 0.5", "judge.unreachable >= 3"],
    )  # fmt: skip
    ctl = Controller(store)
    assert _baking(store, ctl).active
    until("canary traffic", lambda: _ask(served, 4) or _canary_requests(store, same.version) >= 4)

    def verdicts() -> dict[str, Any] | None:  # the judging runs beside the controller's ticks
        ctl.tick()
        code, out, err = jw.cli("rollout", "status", "helpdesk-ep", "--json")
        assert code == 0, err
        guards = {g["guard"]: g for g in json.loads(out)["current"]["guards"]}
        judged = guards["judge.quality >= baseline - 0.5"]["status"] == "pass"
        return guards if judged and guards["judge.unreachable >= 3"]["failed"] > 0 else None

    guards = until("the judges' verdicts", verdicts)
    time.sleep(1.0)  # past the step's bake time: only the pending judge guard holds it
    ctl.tick()
    held = store.latest_rollout("helpdesk-ep")
    assert held.active and held.step_index == 0, "a pending judge guard must hold the step"
    quality = guards["judge.quality >= baseline - 0.5"]
    assert (quality["value"], quality["baseline"], quality["status"]) == (5.0, 5.0, "pass")
    unreachable = guards["judge.unreachable >= 3"]
    assert unreachable["status"] == "pending" and unreachable["failed"] > 0
    code, out, err = jw.cli("rollout", "status", "helpdesk-ep")
    assert code == 0, err
    assert "no score" in out and "judge.unreachable" in out and "not a breach" in out

    # The judge that cannot score holds the rollout until an operator decides.
    code, _, err = jw.cli("rollout", "promote", "helpdesk-ep")
    assert code == 0, err
    r = _until_ended(store, ctl, timeout_s=90, traffic=lambda: _ask(served, 2))
    assert r.status == "succeeded", r.reason


@pytest.mark.slow
@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("judge.nobody >= 3", "names judge 'nobody', which does not exist"),
        ("judge.exact >= baseline", "needs a reference for every answer, and live traffic"),
    ],
)
def test_a_guard_on_a_missing_or_reference_judge_is_refused_at_start(
    served: Served, guard: str, message: str
) -> None:
    served.store.put_judge(
        "exact", rubric="correctness", base_url=served.url + "/v1", model="judge-ep",
        replace=True,
    )  # fmt: skip
    code, _, err = jw.cli("rollout", "start", "helpdesk-ep", "--to", "helpdesk:1",
                          "--guard", guard)  # fmt: skip
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_only_records_a_judge_can_read_are_judged(store: Store) -> None:
    """Answered ok, live (not shadow, not fallback), text kept: a hash-only tenant's
    records, errors, shadows and fallbacks are never sent to a judge."""
    from datetime import UTC, datetime, timedelta

    from modelyard.store import NewInferenceRecord
    from worlds import fake_world

    v1, v2 = fake_world(store, versions=2)
    store.create_tenant("vault", storage_policy="hash")
    now = datetime.now(UTC)

    def add(rid: str, tenant: str = "acme", version: int = v1.id, **extra: Any) -> None:
        hashed = "sha256:" + "0" * 64
        text = tenant != "vault"
        store.add_inference_records([NewInferenceRecord(
            id=rid, endpoint_name="support", route="chat.completions", latency_ms=1.0,
            status=extra.pop("status", "ok"), http_status=200,
            tenant_id=store.get_tenant(tenant).id, version_id=version,
            prompt="### Instruction:\nhi\n\n### Response:\n" if text else hashed,
            response="hello" if text else hashed, created_at=now - timedelta(minutes=1),
            shadow=extra.pop("shadow", False), fallback_from_id=extra.pop("fallback", None),
        )])  # fmt: skip

    add("ok-1")
    add("ok-2", version=v2.id)
    add("hashed", tenant="vault")
    add("failed", status="error")
    add("shadow", version=v2.id, shadow=True)
    add("fallback", fallback=v2.id)
    # what a judge that was never asked could be given (the guards' pick), of both versions
    hour_ago = now - timedelta(hours=1)
    assert sorted(store.unjudged_records("nobody", "support", hour_ago, [v1.id, v2.id], 10)) == [
        "ok-1", "ok-2",
    ]  # fmt: skip
    assert store.unjudged_records("nobody", "support", hour_ago, [v2.id], 10) == ["ok-2"]
    assert store.record_texts(["ok-1", "hashed"])["ok-1"][1:] == (
        "### Instruction:\nhi\n\n### Response:\n", "hello",
    )  # fmt: skip


def test_a_judge_guard_waits_for_min_requests_scores_and_counts_what_got_none() -> None:
    from dataclasses import replace

    from modelyard.delivery import TrafficSample, evaluate_guard, parse_guard
    from modelyard.errors import ConfigError

    relative = parse_guard("judge.q >= baseline - 0.5")
    assert (relative.judge, relative.offset) == ("q", -0.5)
    ok = ("ok",) * 10
    canary = TrafficSample(ok, judged={"q": (1.0, 2.0)}, judge_failed={"q": 3})
    baseline = TrafficSample(ok, judged={"q": (5.0,) * 4}, judge_failed={"q": 1})
    r = evaluate_guard(relative, canary, baseline, min_requests=4)
    assert (r.status, r.value, r.n, r.failed) == ("pending", 1.5, 2, 4)
    r = evaluate_guard(
        relative, replace(canary, judged={"q": (1.0,) * 4}), baseline, min_requests=4
    )
    assert (r.status, r.threshold, r.baseline) == ("breach", 4.5, 5.0)
    assert "4 without a score" in r.describe()
    unscored = TrafficSample(ok, judge_failed={"q": 10})  # failures alone never breach
    assert evaluate_guard(relative, unscored, baseline, min_requests=4).status == "pending"
    absolute = parse_guard("judge.q >= 3.5")
    good = TrafficSample(ok, judged={"q": (4.0,) * 4})
    assert evaluate_guard(absolute, good, TrafficSample(), min_requests=4).status == "pass"
    with pytest.raises(ConfigError, match=r"invalid guard 'judge\. >= 3'.*'judge\.quality >= 3"):
        parse_guard("judge. >= 3")
