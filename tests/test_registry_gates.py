"""Gate verdicts govern promotion, as a user meets it on the command line (issue 15):
`registry list`/`show` say whether a version's gates passed, failed or were never
evaluated; a protected alias and a rollout refuse a version whose gates did not pass
unless an approver overrides with a reason, which is audited and shown on the version;
an endpoint following the alias moves through a rollout, never all at once; and
`modelyard evaluate --gate` records its verdicts on the version as a fine-tune run does."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.delivery import Controller
from modelyard.store import Store
from tinymodels import QUICK_BASE, random_adapter, register_adapter
from worlds import fake_world, gate_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def store(home: Path) -> Store:
    """bot:1 passed its gates (champion, served by `support`), bot:2 failed them, bot:3 was
    never evaluated (as an imported version)."""
    home.mkdir(parents=True)
    s = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(s, versions=1, endpoint=None, template=None)
    for passed in (False, None):
        s.create_model_version(
            "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
            lineage={}, metrics=gate_metrics(passed),
        )  # fmt: skip
    s.set_alias("bot", "champion", 1)
    s.create_endpoint("support", model_ref="bot@champion", tenant="acme")
    return s


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    return code, out, err


def _plan(store: Store) -> dict[int, int]:
    return {r.version: r.weight for r in store.get_endpoint("support").routes if r.weight}


def test_list_and_show_say_passed_failed_or_not_evaluated(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "modelyard registry list")
    assert code == 0 and "gates of latest" in out and "not evaluated" in out
    code, out, _ = run(capsys, "modelyard registry list bot")
    rows = {line.split()[1]: line for line in out.splitlines() if re.match(r"^\W*\d \W", line)}
    assert "passed" in rows["1"] and "failed 1/1" in rows["2"] and "not evaluated" in rows["3"]
    assert "champion" in rows["1"]
    code, out, _ = run(capsys, "modelyard registry show bot:2")
    assert code == 0
    assert "gates      failed 1 of 1 gates: exact_match 0.2 is not >= 0.8" in out
    assert "{" not in out and "verdicts" not in out  # sentences, not the raw dict
    assert "no protected alias or rollout without --override-gates --reason" in out
    code, out, _ = run(capsys, "modelyard registry show bot:1")
    assert "gates      passed (1 of 1 gates)" in out and "✓ exact_match 0.9 >= 0.8" in out
    code, out, _ = run(capsys, "modelyard registry show bot:3 --json")
    assert json.loads(out)["gate_status"]["state"] == "not_evaluated"


@pytest.mark.parametrize(
    ("version", "why"),
    [
        (2, "its gates failed (exact_match 0.2 is not >= 0.8)"),
        (3, "its gates were never evaluated (no gate verdicts recorded)"),
    ],
)
def test_a_protected_alias_refuses_a_version_whose_gates_did_not_pass(
    store: Store, capsys: pytest.CaptureFixture[str], version: int, why: str
) -> None:
    code, _, err = run(capsys, f"modelyard registry alias bot champion {version}")
    assert code == 1
    assert err.strip().startswith(
        f"error: bot:{version} may not take the protected alias bot@champion: {why}"
    )
    assert f"registry alias bot champion {version} --override-gates --reason" in err
    assert store.resolve_model_ref("bot@champion").version == 1 and _plan(store) == {1: 100}
    refused = store.list_audit_events(action="permission.denied", limit=1)[0]
    assert refused.subject == "bot@champion" and why in refused.payload["reason"]
    # an alias that is not protected moves to any version that is not archived
    assert run(capsys, f"modelyard registry alias bot challenger {version}")[0] == 0


def test_an_override_needs_a_reason_and_is_audited_and_shown(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "modelyard registry alias bot champion 2 --override-gates")
    assert code == 2 and "--override-gates needs a reason" in err
    code, _, err = run(capsys, "modelyard registry alias bot champion 2 --reason because")
    assert code == 2 and "--reason is the reason of --override-gates" in err
    code, out, err = run(
        capsys,
        'modelyard registry alias bot champion 2 --override-gates --reason "risk board OK, RB-7"',
    )
    assert code == 0, err
    assert "gates overridden (failed): risk board OK, RB-7" in out
    assert store.resolve_model_ref("bot@champion").version == 2
    (event,) = store.list_audit_events(action="gate.overridden")
    assert event.subject == "bot:2" and event.payload["reason"] == "risk board OK, RB-7"
    assert event.payload["failed"] == ["exact_match 0.2 is not >= 0.8"]
    moved = store.list_audit_events(action="alias.set", limit=1)[0]
    assert moved.payload["gates_overridden"] == "risk board OK, RB-7"
    code, out, _ = run(capsys, "modelyard registry show bot:2")
    words = " ".join(out.split())  # as read, whatever the terminal's width wrapped
    assert re.search(r"override gates overridden by \S+ at \S+ to take the protected alias "
                     r"bot@champion: risk board OK, RB-7", words)  # fmt: skip
    code, out, _ = run(capsys, "modelyard registry list bot")
    assert "failed 1/1, overridden" in out


def test_the_protected_set_is_a_setting(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_PROTECTED_ALIASES", "production, prod-eu")
    assert run(capsys, "modelyard registry alias bot champion 3")[0] == 0  # not protected now
    code, _, err = run(capsys, "modelyard registry alias bot prod-eu 3")
    assert code == 1 and "may not take the protected alias bot@prod-eu" in err


def test_a_rollout_to_a_version_whose_gates_did_not_pass_needs_an_override(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "modelyard rollout start support --to bot:2")
    assert code == 1
    assert "bot:2 may not be rolled out on endpoint 'support': its gates failed" in err
    assert "rollout start support --to bot:2 --override-gates --reason" in err
    assert store.list_rollouts(endpoint="support") == []
    monkeypatch.setenv("MODELYARD_ACTOR", "bob")  # role developer: may roll out, not override
    code, _, err = run(
        capsys, 'modelyard rollout start support --to bot:3 --override-gates --reason "hotfix"'
    )
    assert code == 1 and "may not override the gates of bot:3: it needs role approver" in err
    monkeypatch.delenv("MODELYARD_ACTOR")
    code, out, err = run(
        capsys,
        "modelyard rollout start support --to bot:3 --steps 100 --bake 0s --min-requests 0 "
        '--promote-alias champion --override-gates --reason "vendor model, evaluated offline"',
    )
    assert code == 0, err
    assert "gates overridden for bot:3: vendor model, evaluated offline" in out
    started = store.list_audit_events(action="rollout.started", limit=1)[0]
    assert started.payload["gates_overridden"] == "vendor model, evaluated offline"
    ctl = Controller(store)
    for _ in range(3):
        ctl.tick()
    r = store.latest_rollout("support")
    assert r.status == "succeeded" and _plan(store) == {3: 100}
    # the promotion at the end carries the override (audited again, as the starter)
    assert store.resolve_model_ref("bot@champion").version == 3
    overrides = store.resolve_model_ref("bot:3").gates.overrides
    assert [o["for"] for o in overrides] == [
        "be rolled out on endpoint 'support'",
        "take the protected alias bot@champion",
    ]
    assert overrides[1]["reason"] == f"vendor model, evaluated offline (rollout {r.id})"


def test_a_passed_version_needs_no_override(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.create_model_version(
        "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
        lineage={}, metrics=gate_metrics(True),
    )  # fmt: skip
    code, out, err = run(capsys, "modelyard registry alias bot champion 4")
    assert code == 0, err
    assert "endpoint support follows through a rollout (steps 10,50,100%)" in out
    assert store.list_audit_events(action="gate.overridden") == []


def test_an_endpoint_following_the_alias_moves_through_the_default_rollout(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """What KServe's canaryTrafficPercent does: the new version takes a step, not all."""
    store.create_model_version(
        "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
        lineage={}, metrics=gate_metrics(True),
    )  # fmt: skip
    assert run(capsys, "modelyard registry alias bot champion 4")[0] == 0
    assert _plan(store) == {1: 100}  # nothing moved yet: the rollout is preparing
    r = store.latest_rollout("support")
    assert (r.target, r.steps, r.reason) == (4, (10, 50, 100), "bot@champion moved to 4")
    Controller(store).tick()
    assert _plan(store) == {1: 90, 4: 10}
    code, out, _ = run(capsys, "modelyard endpoints show support")
    assert code == 0 and "rollout in progress" in out


def test_the_docs_refusal_is_what_the_cli_prints(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (DOCS / "registry.md").read_text(encoding="utf-8")
    block = re.search(r"## Gates govern promotion\n.*?```console\n(.*?)```", text, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    command = next(line for line in lines if line.startswith("$ modelyard registry alias"))
    expected = next(line for line in lines if line.startswith("error: "))
    store.create_registered_model("bank-intent", tenant="acme")
    for passed in (True, True, True, False):
        store.create_model_version(
            "bank-intent", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
            run_id=None, lineage={}, metrics=_bank_metrics(passed),
        )  # fmt: skip
    code, _, err = run(capsys, command[2:])
    assert code == 1 and err.strip() == expected


def _bank_metrics(passed: bool) -> dict[str, object]:
    observed = 0.95 if passed else 0.2
    verdicts = [
        {"gate": "exact_match >= 0.9", "passed": passed,
         "reason": f"exact_match {observed} {'>=' if passed else 'is not >='} 0.9"},
        {"gate": "p95_latency_ms <= 500", "passed": True, "reason": "p95_latency_ms 41 <= 500"},
    ]  # fmt: skip
    return {"exact_match": observed, "gates": {"passed": passed, "verdicts": verdicts}}


def test_a_config_without_gates_is_not_a_pass(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune` with no `evaluation.gates` records an empty verdict list: nothing vouched."""
    store.create_model_version(
        "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
        lineage={}, metrics={"gates": {"passed": True, "verdicts": []}},
    )  # fmt: skip
    code, out, _ = run(capsys, "modelyard registry show bot:4")
    assert code == 0 and "gates      not evaluated (no gates configured)" in out
    code, _, err = run(capsys, "modelyard registry alias bot champion 4")
    assert code == 1 and "its gates were never evaluated (no gates configured)" in err


def test_the_card_says_why_a_champion_gate_with_no_champion_passed(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first version's `not_worse_than: champion` has no numbers: dashes and the reason
    in the card, not `None`."""
    verdicts = [
        {"gate": "exact_match >= 0.9", "metric": "exact_match", "observed": 1.0,
         "threshold": 0.9, "margin": 0.1, "passed": True, "reason": "exact_match 1 >= 0.9"},
        {"gate": "not_worse_than: champion", "metric": None, "observed": None, "threshold": None,
         "margin": None, "passed": True, "reason": "no champion to compare with"},
    ]  # fmt: skip
    store.create_model_version(
        "bot", kind="adapter", artifact_digest="00" * 32, base_model="tiny", run_id=None,
        lineage={}, metrics={"exact_match": 1.0, "gates": {"passed": True, "verdicts": verdicts}},
    )  # fmt: skip
    code, out, err = run(capsys, "modelyard registry card bot:4")
    assert code == 0, err
    assert "| `exact_match >= 0.9` | 1 | 0.9 | 0.1 | pass |" in out
    row = "| `not_worse_than: champion` | — | — | — | pass: no champion to compare with |"
    assert row in out and "None" not in out


# -- `modelyard evaluate --gate` records the verdicts it judged (issue 15) -------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, two LoRA adapters with random weights on it, and six held-out rows."""
    root = tmp_path_factory.mktemp("evaluate")
    corpus = domain_corpus(DOMAINS, 200, seed=0)
    base = create_tiny_base(corpus, root / "base", **QUICK_BASE).path
    rows = synthetic_domain("it-support", 6, seed=0)
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "base": base,
        "a1": random_adapter(base, root / "a1", seed=1),
        "a2": random_adapter(base, root / "a2", seed=2),
        "data": root / "eval.jsonl",
    }


def test_evaluate_with_gates_records_the_verdicts_that_govern_promotion(
    home: Path, tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    store.register_base_model("tiny", str(tiny["base"]), {})
    store.create_registered_model("bot")
    artifacts = ArtifactStore(home / "artifacts")
    for adapter in (tiny["a1"], tiny["a2"]):
        register_adapter(store, artifacts, adapter)
    evaluate = f"modelyard evaluate --data {tiny['data']} --max-new-tokens 4"

    code, out, err = run(capsys, f'{evaluate} --model bot:1 --gate "exact_match >= 0.9"')
    assert code == 1
    assert err.strip().startswith("error: a gate failed for bot:1. See the table above.")
    assert "FAIL" in out and "gates of bot:1 recorded: failed 1 of 1 gates: exact_match" in out
    code, out, _ = run(capsys, "modelyard registry show bot:1")
    assert "gates      failed 1 of 1 gates: exact_match" in out
    assert f"by `modelyard evaluate` on {tiny['data']} (6 rows)" in " ".join(out.split())
    code, _, err = run(capsys, "modelyard registry alias bot champion 1")
    assert code == 1 and "may not take the protected alias bot@champion: its gates failed" in err

    # Judged again: the latest verdict is the version's; both stay in the audit chain.
    code, out, err = run(capsys, f'{evaluate} --model bot:1 --gate "exact_match >= 0"')
    assert code == 0, err
    assert "gates of bot:1 recorded: passed (1 of 1 gates)" in out
    assert run(capsys, "modelyard registry alias bot champion 1")[0] == 0
    code, out, _ = run(capsys, "modelyard registry list bot")
    rows = {line.split()[1]: line for line in out.splitlines() if re.match(r"^\W*\d \W", line)}
    assert "passed" in rows["1"] and "not evaluated" in rows["2"]

    # A champion gate scores the champion on the same rows, as a fine-tune run does.
    code, out, err = run(
        capsys,
        f'{evaluate} --model bot:2 --metrics token_f1 --gate "not_worse_than: champion" --json',
    )
    result = json.loads(out)
    assert result["champion"] == "bot:1" and set(result["champion_metrics"]) == {"token_f1"}
    (verdict,) = result["verdicts"]
    assert verdict["champion"] == result["champion_metrics"]["token_f1"]
    assert "vs champion" in verdict["reason"]
    assert code == (0 if result["passed"] else 1), err
    recorded = store.get_model_version("bot", 2).metrics["gates"]
    assert recorded["passed"] is result["passed"] and recorded["verdicts"] == result["verdicts"]
    assert recorded["source"]["champion"] == "bot:1" and recorded["source"]["rows"] == 6
    assert result["gate_status"]["state"] == ("passed" if result["passed"] else "failed")
    events = store.list_audit_events(action="gate.verdict", newest_first=False)
    assert [e.subject for e in events] == ["bot:1", "bot:1", "bot:2"]
    assert [e.payload["passed"] for e in events[:2]] == [False, True]
    assert events[0].payload["source"]["by"] == "evaluate"
    store.close()


def test_evaluate_writes_every_rows_answer_and_a_classifiers_confusion_matrix(
    home: Path, tiny: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    store.register_base_model("tiny", str(tiny["base"]), {})
    store.create_registered_model("bot")
    version = register_adapter(store, ArtifactStore(home / "artifacts"), tiny["a1"])
    store.create_model_version(  # the same weights, as a classifier trained on labels
        "bot", kind="adapter", artifact_digest=version.artifact_digest, base_model="tiny",
        run_id=None, lineage={"prompt_template": "classification"}, metrics={},
    )  # fmt: skip
    store.close()
    evaluate = f"modelyard evaluate --model bot:1 --max-new-tokens 3 --data {tiny['data']}"

    out_file = tmp_path / "predictions.csv"
    code, out, err = run(capsys, f"{evaluate} --predictions {out_file}")
    assert code == 0, err
    assert f"wrote 6 predictions to {out_file}" in out
    lines = out_file.read_text().splitlines()
    assert len(lines) == 7  # a header and one line per row
    assert lines[0].split(",")[-3:] == ["reference", "predicted", "matched"]

    labels = ["hardware", "network", "hardware", "access", "network", "hardware"]
    rows = [{"text": f"ticket {i}: it broke", "label": label} for i, label in enumerate(labels)]
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "intents-predictions.parquet"
    code, out, err = run(
        capsys,
        f"modelyard evaluate --model bot:2 --data {data} --format classification "
        f"--metrics accuracy --max-new-tokens 3 --predictions {parquet} --json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert "predictions" not in result  # in the file, not on the screen
    matrix = result["confusion_matrix"]
    assert matrix["labels"] == ["access", "hardware", "network"]
    assert [sum(row) for row in matrix["counts"]] == [1, 3, 2]  # every row counted once
    import pandas as pd

    written = pd.read_parquet(parquet)
    assert list(written["label"]) == labels and len(written) == 6
    correct = sum(written["matched"])
    assert correct == sum(matrix["counts"][i][i] for i in range(3))
    assert result["metrics"]["accuracy"] == pytest.approx(correct / 6)

    # nothing is generated for a perplexity alone: the answers cannot be written
    code, _, err = run(capsys, f"{evaluate} --metrics perplexity --predictions {out_file}")
    assert code == 2 and "--predictions needs the model's answers" in err
    code, _, err = run(capsys, f"{evaluate} --predictions {tmp_path / 'p.txt'}")
    assert code == 2 and "has the extension '.txt'" in err
