"""``modelyard rollout compare --shadow``: shadow answers beside production's on the same
requests, served for real (``openai`` SDK over HTTP), judged by a judge endpoint on the
same server whose scores are written in the answers it is shown."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from modelyard.access import create_api_key
from modelyard.cli import main
from modelyard.delivery import compare_shadow
from modelyard.delivery._shadow import decide, share_interval
from modelyard.errors import ConfigError
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.serving._engine import Generation, TokenStream
from modelyard.store import NewInferenceRecord, Store
from waiting import until
from worlds import fake_world

JUDGE_PROMPT = "Rate the answer.\n{answer}"
_SCORE = re.compile(r"Score: [1-5]")


class TwoVoices(EchoEngine):
    """Deterministic answers that differ by version.

    ``bot``: the prompt's last line, where a word ``vN=text`` is version N's whole answer
    (``_`` for spaces); a line without one is everyone's answer. ``judge``: the last
    ``Score: N`` of what it is shown, else ``unsure`` (no score)."""

    name = "two-voices"

    def stream(self, version: Any, prompt: str, params: Any) -> TokenStream:
        if version.ref.startswith("judge:"):
            found = _SCORE.findall(prompt)
            text = found[-1] if found else "unsure"
        else:
            line = prompt.strip().splitlines()[-1]
            voices = dict(w.split("=", 1) for w in line.split() if "=" in w)
            text = voices.get(f"v{version.version}", line).replace("_", " ")
        stream = TokenStream()
        stream.push(text)
        stream.finish(Generation(text, len(prompt.split()), len(text.split()), "stop", 0.0))
        return stream


@dataclass
class Yard:
    store: Store
    client: openai.OpenAI
    base_url: str

    def ask(self, prompts: list[str]) -> None:
        for prompt in prompts:
            self.client.completions.create(model="support", prompt=prompt, max_tokens=16)
        want = 2 * len(prompts)
        until(f"{want} finished records", lambda: _finished(self.store) >= want, timeout_s=30)


def _finished(store: Store) -> int:
    return sum(
        r.status != "running" for r in store.list_inference_records(endpoint="support", limit=1000)
    )


@pytest.fixture
def yard(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Yard]:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, template="text")
    store.create_registered_model("judge", tenant="acme")
    store.create_model_version(
        "judge", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
        lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
    store.create_endpoint("judge-ep", model_ref="judge:1", tenant="acme")
    store.set_shadow("support", 2, 1.0)
    _, key = create_api_key(store, "acme")
    monkeypatch.setenv("JUDGE_KEY", key)
    app = create_app(store, TwoVoices(), refresh_seconds=0.1, heartbeat_s=None)
    with (
        BackgroundServer(app) as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client,
    ):
        yield Yard(store, client, server.base_url + "/v1")
    store.close()


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


def _add_hashed_pairs(store: Store, count: int) -> None:
    """Pairs of a tenant that keeps only hashes, written as a batch's rows are (``ID-shadow``)."""
    store.create_tenant("globex", storage_policy="hash")
    tenant = store.get_tenant("globex").id
    v1, v2 = (store.get_model_version("bot", n).id for n in (1, 2))

    def digest(text: str) -> str:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    store.add_inference_records(
        NewInferenceRecord(
            id=f"h{i}{suffix}", endpoint_name="support", route="completions", latency_ms=3.0,
            status="ok", http_status=200, tenant_id=tenant, version_id=version,
            prompt=digest(f"secret {i}"), response=digest(f"answer {i}{suffix}"), shadow=shadow,
        )
        for i in range(count)
        for suffix, version, shadow in (("", v1, False), ("-shadow", v2, True))
    )  # fmt: skip


def test_pairs_show_identical_and_different_answers(
    yard: Yard, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    same = [f"ticket {i} printer jammed" for i in range(4)]
    differ = ["ticket 8 v1=reboot_it v2=call_IT", "ticket 9 v1=Reset v2=RESET"]
    yard.ask([*same, *differ])
    _add_hashed_pairs(yard.store, 3)
    code, out, err = run(capsys, "modelyard rollout compare support --shadow --json")
    assert code == 0, err
    report = json.loads(out)
    assert report["shadow_version"] == "bot:2" and report["production_versions"] == {"bot:1": 6}
    assert (report["pairs"], report["identical"], report["shadow_records"]) == (6, 5, 9)
    assert report["skipped"] == {"hashed": 3}  # counted, with the reason
    assert report["verdict"] == "no judge given" and report["judge"] is None
    rows = {r["question"]: r for r in report["rows"]}
    assert rows[differ[0]]["production_answer"] == "reboot it"
    assert rows[differ[0]]["shadow_answer"] == "call IT" and not rows[differ[0]]["identical"]
    assert rows[differ[1]]["identical"]  # "Reset" and "RESET": the same after normalisation
    assert {r["paired_by"] for r in report["rows"]} == {
        "id"
    }  # each shadow is its request's id + -shadow

    code, out, _ = run(capsys, f"modelyard rollout compare support --shadow --limit 2 "
                               f"--out {tmp_path / 'pairs.csv'}")  # fmt: skip
    assert code == 0
    assert "shadow bot:2 vs production bot:1 (6)" in out
    assert "identical answers: 5 of 6 (83.3%)" in out
    assert "3 the tenant keeps only hashes" in out and "4 more pairs" in out
    assert "verdict: no judge given" in out
    with (tmp_path / "pairs.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 6 and {r["shadow_version"] for r in written} == {"bot:2"}


def test_a_judge_gives_the_shadows_win_rate_interval_and_verdict(
    yard: Yard, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prompt = tmp_path / "judge.txt"
    prompt.write_text(JUDGE_PROMPT)
    code, _, err = run(capsys, f"modelyard judges add quality --rubric custom --url "
                               f"{yard.base_url} --model judge-ep --api-key-env JUDGE_KEY "
                               f"--prompt-file {prompt}")  # fmt: skip
    assert code == 0, err
    wins = [f"q{i} v1=Score:_2 v2=Score:_5" for i in range(12)]
    ties = ["q12 Score:_3", "q13 Score:_3"]  # the same answer on both sides
    loss = ["q14 v1=Score:_4 v2=Score:_1"]
    failed = ["q15 v1=Score:_4 v2=no_idea"]  # the judge finds no score in the shadow's
    yard.ask([*wins, *ties, *loss, *failed])

    code, out, err = run(capsys, "modelyard rollout compare support --shadow --judge quality "
                                 "--min-pairs 10 --json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    judge = report["judge"]
    assert (judge["wins"], judge["ties"], judge["losses"], judge["failed"]) == (12, 2, 1, 1)
    assert judge["judged"] == 15 and judge["win_rate"] == pytest.approx(13 / 15)
    low, high = judge["interval"]
    assert (low, high) == pytest.approx(share_interval(13, 15))
    assert 0.6 < low < 0.65 and high > 0.9
    assert judge["production_mean"] == pytest.approx(34 / 15)
    assert judge["shadow_mean"] == pytest.approx(67 / 15)
    assert judge["calls"] == 16 + 14  # identical answers are judged once
    assert report["verdict"] == "shadow better"
    failures = [r for r in report["rows"] if r["winner"] is None]
    assert len(failures) == 1 and "no score" in failures[0]["judge_error"]
    assert failures[0]["production_score"] == 4.0 and failures[0]["shadow_score"] is None

    # Again: every answer comes from the cache; too few pairs for --min-pairs 20
    code, out, err = run(capsys, "modelyard rollout compare support --shadow --judge quality")
    assert code == 0, err
    assert "shadow won 12, tied 2, lost 1 of 15 judged pairs; 1 without a score" in out
    assert "win rate of the shadow: 0.867 [" in out
    assert "judge calls: 1 (29 from the cache)" in out  # a failure is asked again
    assert "verdict: not enough pairs" in out and "15 judged pairs; --min-pairs asks for 20" in out


def test_pairs_by_request_when_the_ids_do_not_say(home: Path) -> None:
    """API shadows have ids of their own: paired by key, route and the user's words (parsed
    back from each version's template), nearest in time, whichever answer ended first."""
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, template="alpaca")
    store.set_shadow("support", 2, 1.0)
    v1, v2 = (store.get_model_version("bot", n).id for n in (1, 2))
    now = datetime.now(UTC)

    def record(rid: str, version: int, question: str, answer: str, at: float, **kw: Any) -> Any:
        return NewInferenceRecord(
            id=rid, endpoint_name="support", route="completions", latency_ms=1.0, status="ok",
            http_status=200, version_id=version, api_key_id=kw.pop("key", "k1"),
            prompt=f"### Instruction:\n{question}\n\n### Response:\n", response=answer,
            created_at=now - timedelta(seconds=at), **kw,
        )  # fmt: skip

    store.add_inference_records(
        [
            record("p-a", v1, "reset my password", "use the portal", 30),
            record("p-b", v1, "printer jammed", "call the desk", 20),  # ended 8 s after its shadow
            record("p-c", v1, "printer jammed", "call the desk", 10, key="k2"),  # another key's
            record("s-a", v2, "reset my password", "Use the  portal", 31, shadow=True),
            record("s-b", v2, "printer jammed", "open a ticket", 28, shadow=True),
            record("s-x", v2, "vpn is down", "restart it", 15, shadow=True),  # no production
            record("row-7", v1, "label this", "spam", 5, key=None),  # a batch row's, by its id
            record("row-7-shadow", v2, "label this", "ham", 4, key=None, shadow=True),
        ]
    )  # fmt: skip
    report = compare_shadow(store, "support", now - timedelta(hours=1))
    pairs = {row.shadow_id: row for row in report.rows}
    assert {k: (r.production_id, r.identical) for k, r in pairs.items()} == {
        "s-a": ("p-a", True),
        "s-b": ("p-b", False),
        "row-7-shadow": ("row-7", False),
    }
    assert pairs["row-7-shadow"].paired_by == "id" and pairs["s-a"].paired_by == "request"
    assert pairs["s-b"].question == "printer jammed"  # the user's words, not the template's
    assert {k: n for k, n in report.skipped.items() if n} == {"unpaired": 1}
    store.close()


def test_the_verdict_rule() -> None:
    assert decide(30, share_interval(25, 30), 20)[0] == "shadow better"
    assert decide(30, share_interval(5, 30), 20)[0] == "shadow worse"
    assert decide(30, share_interval(15, 30), 20)[0] == "no clear difference"
    assert decide(19, share_interval(19, 19), 20)[0] == "not enough pairs"
    assert share_interval(0, 0) is None
    low, high = share_interval(7.5, 15) or (0, 0)  # ties count as halves
    assert low < 0.5 < high


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, template="text")
    store.put_judge("exact", rubric="correctness", base_url="http://127.0.0.1:9/v1", model="m")
    store.put_judge("rel", rubric="relevance", base_url="http://127.0.0.1:9/v1", model="m")
    cases = {
        "--shadow --judge nobody": "no judge named 'nobody'",
        "--shadow --judge exact": "needs a reference for every answer",
        "--shadow --since yesterday": "invalid --since 'yesterday'",
        "--shadow --min-pairs 0": "--min-pairs is 0",
        "--shadow --out pairs.txt": "has the extension '.txt'",
        "--judge rel": "--judge: only with --shadow",
        "--limit 5": "--limit: only with --shadow",  # never silently ignored
        "--shadow": "has no shadow version and no shadow records",
    }
    for args, message in cases.items():
        code, _, err = run(capsys, f"modelyard rollout compare support {args}")
        assert code == 2, (args, err)
        assert message in _one_line_error(err), (args, err)
    store.set_shadow("support", 2, 0.5)
    code, _, err = run(capsys, "modelyard rollout compare support --shadow")
    assert code == 2 and "no shadow answers of bot:2" in _one_line_error(err)
    store.add_inference_records(
        [
            NewInferenceRecord(
                id="p1-shadow", endpoint_name="support", route="completions", latency_ms=1.0,
                status="error", http_status=500, version_id=store.get_model_version("bot", 2).id,
                shadow=True,
            )
        ]
    )  # fmt: skip
    code, _, err = run(capsys, "modelyard rollout compare support --shadow")
    assert code == 2
    assert "no pairs to compare in 1 shadow records" in _one_line_error(err)
    assert "1 no production record of the same request" in err
    with pytest.raises(ConfigError, match="no pairs"):
        compare_shadow(store, "support", store.get_endpoint("support").created_at)
    store.close()
