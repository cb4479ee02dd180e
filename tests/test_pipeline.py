"""`modelyard pipeline run`: production records → dataset → gated fine-tune → rollout.

The proof (issue 19): a champion serves traffic through the real app, people give
feedback, and docs/closing-the-loop.md's pipeline runs: from-records builds the
dataset, the fine-tune on it is gated against the champion and registered, a rollout
with guards starts, `registry lineage` of the new version lists the record ids, and
the audit chain holds one event per stage, each naming the one before it. Around it:
a failed gate stops before the rollout, no usable records stop before training, bad
files are one line naming the field, and an alert rule starts the pipeline.

One world (a tiny base, ``helpdesk:1`` the champion behind endpoint ``support``, a
week of feedback) is built once per module; each test runs on its own copy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from clihelp import Result, modelyard
from modelyard.access import create_api_key
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.delivery import Controller, abort_rollout, check_policy, promote_rollout
from modelyard.errors import ConfigError, RolloutFailed, RolloutTimedOut, status_of
from modelyard.monitoring import AlertRules
from modelyard.pipeline import RolloutPlan, check_against_store, load_pipeline, parse_pipeline
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import AlertState, Store
from tinymodels import QUICK_BASE
from worlds import fake_world, home_store

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "closing-the-loop.md").read_text(encoding="utf-8")
INSTRUCTION = "Which queue should take this ticket: network, hardware or access?"


def _files_of_the_guide() -> dict[str, str]:
    """The guide's YAML files: each ```yaml block whose first line is ``# NAME.yaml``."""
    files = {}
    for block in re.findall(r"```yaml\n(.*?)```", GUIDE, re.S):
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w.-]+\.yaml", first):
            files[first[2:]] = block
    return files


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _ask(client: openai.OpenAI, ticket: str) -> str:
    reply = client.chat.completions.create(
        model="support",
        messages=[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": ticket}],
    )
    return reply.id


def _feedback(url: str, key: str, request_id: str, **body: Any) -> None:
    reply = httpx.post(
        url + "/v1/feedback",
        json={"request_id": request_id, **body},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert reply.status_code == 200, reply.text


def _serve_a_week(home: Path, trained: list[dict[str, Any]]) -> list[str]:
    """The guide's week on ``support``: three good answers (two corrected with a label),
    one bad, a repeat, one already trained on, two of a hash-only tenant. The good ids."""
    with home_store(home) as store:
        store.create_tenant("acme")
        store.create_tenant("vault", storage_policy="hash")
        store.create_endpoint("support", model_ref="helpdesk:1", tenant=None, shared=True)
        acme, vault = create_api_key(store, "acme")[1], create_api_key(store, "vault")[1]
        with (
            BackgroundServer(create_app(store, EchoEngine(), refresh_seconds=0.1)) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=acme, max_retries=0) as ask,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=vault, max_retries=0) as hashed,
        ):
            url = server.base_url
            good = []
            for ticket, label in [
                ("The office printer jams on every page.", "hardware"),
                ("I cannot log in to the payroll portal since Monday.", "access"),
                ("Wi-Fi on the third floor keeps dropping.", None),
            ]:
                good.append(_ask(ask, ticket))
                _feedback(url, acme, good[-1], thumbs="up", label=label)
            _feedback(url, acme, _ask(ask, "My monitor shows nothing."), thumbs="down")
            again = _ask(ask, "The office printer jams on every page.")
            _feedback(url, acme, again, score=0.8, label="hardware")
            known = _ask(ask, trained[0]["input"])
            _feedback(url, acme, known, thumbs="up", label=trained[0]["output"])
            for ticket in ("Private: my badge is blocked.", "Private: VPN is slow."):
                _feedback(url, vault, _ask(hashed, ticket), thumbs="up")
    return good


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``world/home`` and ``world/project`` (the guide's files, ``tiny-base`` a link to the
    base outside it, so a copy trains on the same registered base)."""
    root = tmp_path_factory.mktemp("world")
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), root / "base", **QUICK_BASE)
    project, home = root / "project", root / "home"
    project.mkdir()
    (project / "tiny-base").symlink_to(base.path, target_is_directory=True)
    for name, text in _files_of_the_guide().items():
        (project / name).write_text(text, encoding="utf-8")
    trained = synthetic_domain("it-support", 24, seed=0)
    _jsonl(project / "train.jsonl", trained[:16])
    _jsonl(project / "eval.jsonl", trained[16:])
    first = modelyard("finetune", "-c", str(project / "finetune.yaml"), "--json", home=home)
    assert first.code == 0, first.err
    assert json.loads(first.out)["alias"] == "champion"
    good = _serve_a_week(home, trained)
    return {"root": root, "good": good}


@pytest.fixture
def project(world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's copy of the world; the working directory is its project."""
    shutil.copytree(world["root"] / "project", tmp_path / "project", symlinks=True)
    shutil.copytree(world["root"] / "home", tmp_path / "home")
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def _store(project: Path) -> Store:
    return home_store(project.parent / "home")


def _run(project: Path, *args: str) -> Result:
    return modelyard(*args, home=project.parent / "home")


def _shown(line: str) -> re.Pattern[str]:
    """A line the guide shows, as a pattern: ``…`` stands for the run's own ids."""
    return re.compile(".*".join(re.escape(part) for part in line.split("…")))


def _console_steps(start: str) -> list[tuple[str, list[str]]]:
    """The commands of the guide's console block that begins with ``$ start`` and what
    each prints (``...`` lines skipped)."""
    block = re.search(r"```console\n(\$ " + re.escape(start) + r".*?)```", GUIDE, re.S)
    assert block is not None, f"docs/closing-the-loop.md lost its `{start}` example"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip() and not line.startswith("..."):
            steps[-1][1].append(line.strip())
    return steps


def _run_shown(project: Path, start: str) -> None:
    for command, shown in _console_steps(start):
        args, jq = shlex.split(command)[1:], None
        if "|" in args:
            at = args.index("|")
            args, jq = args[:at], args[at + 1 :]
        r = _run(project, *args)
        assert r.code == 0, (command, r.out, r.err)
        out = r.out + r.err
        if jq is not None:
            out = subprocess.run(jq, input=r.out, capture_output=True, text=True, check=True).stdout
        for line in shown:
            assert _shown(line).search(out), f"{command!r} did not print {line!r}:\n{out}"


# -- the proof: the guide's loop, end to end -----------------------------------------------


def test_the_guides_loop_registers_a_gated_version_rolls_it_out_and_links_the_chain(
    world: dict[str, Any], project: Path
) -> None:
    _run_shown(project, "modelyard pipeline run loop.yaml --dry-run")
    lineage = _run(project, "registry", "lineage", "helpdesk:2", "--json")
    derived = json.loads(lineage.out)["lineage"]["dataset"]["derived_from"]
    assert derived["record_ids"] == world["good"]  # the requests it learned from
    _run_shown(project, "modelyard audit log --action 'pipeline.*'")
    with _store(project) as store:
        events = [e.to_json() for e in store.list_audit_events(action="pipeline.*")]
    events.reverse()
    for before, event in itertools.pairwise(events):
        assert event["payload"]["previous"] == {
            "seq": before["seq"], "hash": before["hash"], "action": before["action"],
        }  # fmt: skip
    started, collected, trained, rolled, finished = (e["payload"] for e in events)
    assert len({e["payload"]["pipeline_run"] for e in events}) == 1
    assert started["trigger"] is None and started["stages"] == [
        "from_records",
        "finetune",
        "rollout",
    ]
    assert collected["record_ids"] == world["good"]
    assert collected["dataset"]["ref"] == "support-feedback:1"
    assert trained["model_version"] == "helpdesk:2" and trained["passed"] is True
    assert trained["derived_from"]["dataset"] == "support-feedback:1"
    assert rolled["target"] == "helpdesk:2" and rolled["steps"] == [10, 50, 100]
    assert rolled["promote_alias"] == "champion" and rolled["status"] == "running"
    assert rolled["guards"] == ["error_rate <= 0.02", "p95_latency_ms <= 1.2 * baseline"]
    assert finished["status"] == "succeeded"

    # Again: those records are helpdesk:2's training data now, so nothing is left to
    # learn from and the run stops before training.
    again = _run(project, "pipeline", "run", "loop.yaml")
    assert again.code == 2, again.err
    last = again.err.strip().splitlines()[-1]
    assert last.startswith("error: pipeline helpdesk-loop stopped at from_records: no training "
                           "rows in 8 records"), again.err  # fmt: skip
    assert "already in the training data" in last and "Traceback" not in again.err
    with _store(project) as store:
        assert [v.version for v in store.list_model_versions("helpdesk")] == [1, 2]
        failed = store.list_audit_events(action="pipeline.failed")[0].payload
    assert failed["stage"] == "from_records" and failed["not_run"] == ["finetune", "rollout"]


def test_a_failed_gate_stops_before_the_rollout(project: Path) -> None:
    loop = yaml.safe_load((project / "loop.yaml").read_text())
    loop["finetune"]["overrides"]["evaluation"] = {
        "gates": ["exact_match >= 0.99", "not_worse_than: champion"]
    }
    (project / "strict.yaml").write_text(yaml.safe_dump(loop), encoding="utf-8")
    r = _run(project, "pipeline", "run", "strict.yaml", "--json", "--alert", "a1b2c3")
    assert r.code == 1, (r.out, r.err)
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("error: pipeline helpdesk-loop stopped at finetune: 1 of 2 gates "
                           "failed for helpdesk:2: exact_match >= 0.99"), r.err  # fmt: skip
    assert "Traceback" not in r.err
    result = json.loads(r.out)
    assert result["status"] == "failed"
    assert [(s["stage"], s["status"]) for s in result["stages"]] == [
        ("from_records", "done"), ("finetune", "failed"),
    ]  # fmt: skip
    assert result["stages"][1]["artifacts"]["passed"] is False
    with _store(project) as store:
        assert store.list_rollouts(endpoint="support") == []  # no rollout row
        assert store.get_model_version("helpdesk", 2).tags["pipeline"] == "helpdesk-loop"
        (started,) = store.list_audit_events(action="pipeline.started")
    assert started.payload["trigger"] == {"alert": "a1b2c3"}
    verified = _run(project, "audit", "verify")
    assert verified.code == 0 and "audit chain OK" in verified.out, verified.err


# -- bad files: one line naming the field, before anything runs ----------------------------


BAD: list[tuple[dict[str, Any], str]] = [
    (
        {"from_records": {"min_scor": 0.5}},
        "from_records.min_scor: unknown key. Did you mean 'min_score'?",
    ),
    ({"rolout": {}}, "rolout: unknown key. Did you mean 'rollout'?"),
    ({"from_records": {"out": "rows.csv"}}, "from_records.out: rows.csv is not named .jsonl"),
    (
        {"from_records": {"out": "train.jsonl", "exclude": ["train.jsonl"]}},
        "from_records.out: train.jsonl is also an exclude file: writing the rows would replace",
    ),
    (
        {"from_records": {"min_score": 3}},
        "from_records.min_score: Input should be less than or equal to 1",
    ),
    ({"from_records": {"since": "yesterday"}}, "invalid from_records.since 'yesterday'"),
    (
        {"from_records": {"since": None, "window": "2000-01-01"}},
        "from_records.window: '2000-01-01' is not a duration",
    ),
    ({"from_records": {"window": "7d"}}, "from_records.window: give since or window, not both"),
    (
        {"from_records": {"format": "text"}},
        "from_records.format: 'text' differs from the fine-tune's data.format 'alpaca'",
    ),
    ({"from_records": {"fail_on": ["pi"]}}, "unknown rule 'pi'"),
    ({"from_records": {"out": None}}, "from_records.out: "),
    ({"finetune": {"config": "nope.yaml"}}, "finetune.config: "),
    (
        {"finetune": {"overrides": {"training": {"learning_rat": 1}}}},
        "finetune.training.learning_rat (in finetune.yaml or finetune.overrides): unknown "
        "config key",
    ),
    (
        {"finetune": {"overrides": {"registry": {"alias_on_pass": "champion"}}}},
        "finetune.registry.alias_on_pass: moves 'champion' at once",
    ),
    (
        {"finetune": {"overrides": {"evaluation": {"gates": []}}}},
        "finetune.evaluation.gates: empty: a rollout needs a version whose gates passed",
    ),
    ({"rollout": {"steps": [50, 10]}}, "rollout.steps: invalid steps [50, 10]"),
    ({"rollout": {"strategy": "blue-green"}}, "rollout.steps: blue-green switches at once"),
    ({"rollout": {"guards": ["error_rat <= 1"]}}, "rollout.guards"),
    ({"rollout": {"bake": "5 minutes"}}, "rollout.bake"),
    ({"rollout": {"wait": "maybe"}}, "rollout.wait: Input should be a valid boolean"),
]


def test_a_tripped_data_rule_stops_before_training_with_exit_1(project: Path) -> None:
    """A fail_on rule that trips is a failed check (exit 1, as `data validate` exits), not bad
    input (exit 2): the records were read fine."""
    with _store(project) as store:
        key = create_api_key(store, "acme")[1]
        with (
            BackgroundServer(create_app(store, EchoEngine(), refresh_seconds=0.1)) as server,
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as ask,
        ):
            # the week's first ticket, said again in nearly the same words
            again = _ask(ask, "The office printer jams on every single page.")
            _feedback(server.base_url, key, again, thumbs="up", label="hardware")
    loop = yaml.safe_load((project / "loop.yaml").read_text())
    loop["from_records"]["fail_on"] = ["near-duplicates"]
    (project / "picky.yaml").write_text(yaml.safe_dump(loop), encoding="utf-8")
    r = _run(project, "pipeline", "run", "picky.yaml")
    assert r.code == 1, (r.out, r.err)
    assert "the rows failed validation, nothing written: near-duplicates (1)" in r.err, r.err
    assert "Traceback" not in r.err
    with _store(project) as store:
        assert [v.version for v in store.list_model_versions("helpdesk")] == [1]


def _edited(project: Path, change: dict[str, Any]) -> dict[str, Any]:
    loop: dict[str, Any] = yaml.safe_load((project / "loop.yaml").read_text())
    for section, values in change.items():
        if isinstance(values, dict) and isinstance(loop.get(section), dict):
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(loop[section].get(key), dict):
                    loop[section][key] = {**loop[section][key], **value}
                else:
                    loop[section][key] = value
        else:
            loop[section] = values
    return loop


@pytest.mark.parametrize(("change", "expected"), BAD, ids=[e[:40] for _, e in BAD])
def test_a_bad_file_is_one_error_naming_the_field(
    world: dict[str, Any], tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    project = world["root"] / "project"
    path = tmp_path / "loop.yaml"
    for name in ("finetune.yaml", "tiny-base", "train.jsonl", "eval.jsonl"):
        (tmp_path / name).symlink_to(project / name)
    path.write_text(yaml.safe_dump(_edited(project, change)), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert expected in info.value.one_line(), info.value.one_line()


def test_bad_files_exit_2_with_one_line_and_the_store_is_checked(project: Path) -> None:
    typo = _edited(project, {"from_records": {"min_scor": 0.5}})
    del typo["from_records"]["min_score"]
    (project / "typo.yaml").write_text(yaml.safe_dump(typo), encoding="utf-8")
    _run_shown_error(project)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"from_records": {"endpoint": "nope"}}, "from_records.endpoint: no endpoint named 'nope'"),
        ({"from_records": {"status": "fine"}}, "from_records.status: unknown record status"),
        ({"from_records": {"version": 7}}, "from_records.version: endpoint 'support' serves "
         "model 'helpdesk', which has no version 7"),
        ({"rollout": {"guards": ["judge.qualty >= 3"]}},
         "rollout.guards: guard 'judge.qualty >= 3' names judge 'qualty', which does not exist"),
        ({"finetune": {"overrides": {"evaluation": {"gates": ["judge.nope >= 4"]}}}},
         "finetune.evaluation: no judge named 'nope'"),
        ({"finetune": {"overrides": {"registry": {"alias_on_pass": None, "tenant": "acme"}}}},
         "finetune registry.model 'helpdesk' exists already and belongs to no tenant (shared), but "
         "registry.tenant asks for tenant 'acme'"),
        ({"finetune": {"overrides": {"registry": {"alias_on_pass": None, "tenant": "globex"}}}},
         "finetune registry.tenant names no tenant: there is no tenant 'globex'"),
        ({"finetune": {"overrides": {"registry": {"alias_on_pass": None, "model": "other"}}}},
         "rollout.endpoint: 'support' serves model 'helpdesk', but the fine-tune registers "
         "'other'"),
    ]  # fmt: skip
    with home_store(project.parent / "home") as store:
        for change, expected in cases:
            (project / "bad.yaml").write_text(yaml.safe_dump(_edited(project, change)))
            with pytest.raises(ConfigError) as info:
                check_against_store(store, load_pipeline(project / "bad.yaml"))
            assert expected in info.value.one_line(), info.value.one_line()
    r = _run(project, "pipeline", "run", "bad.yaml")  # the last case, through the command
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert cases[-1][1] in lines[0], lines[0]
    with _store(project) as store:  # nothing ran, nothing was written
        assert store.list_audit_events(action="pipeline.*") == []


def _run_shown_error(project: Path) -> None:
    """The guide's typo example prints exactly its line and exits 2."""
    ((command, shown),) = _console_steps("modelyard pipeline run typo.yaml")
    r = _run(project, *shlex.split(command)[1:])
    assert r.code == 2, r.err
    assert r.err.strip().splitlines() == shown, r.err


def test_dry_run_json_prints_the_plan_and_writes_nothing(project: Path) -> None:
    r = _run(project, "pipeline", "run", "loop.yaml", "--dry-run", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["store_checked"] is True and plan["name"] == "helpdesk-loop"
    assert plan["plan"]["from_records"]["out"] == str(project.resolve() / "from-traffic.jsonl")
    assert plan["plan"]["finetune"]["train"] == plan["plan"]["from_records"]["out"]
    assert plan["plan"]["rollout"]["endpoint"] == "support"
    assert not (project / "from-traffic.jsonl").exists()


def test_the_whole_config_may_be_inline_and_relative_paths_are_the_files(tmp_path: Path) -> None:
    inline = {
        "base_model": "./tiny-base",
        "data": {"eval": "eval.jsonl"},
        "evaluation": {"gates": ["not_worse_than: champion"]},
        "registry": {"model": "helpdesk"},
    }
    spec = {
        "from_records": {"endpoint": "support", "window": "1d", "out": "rows.jsonl"},
        "finetune": {"overrides": inline},
    }
    pipeline = parse_pipeline(spec, tmp_path / "sub" / "inline.yaml")
    assert pipeline.name == "inline" and pipeline.rollout is None
    assert pipeline.stages == ("from_records", "finetune")
    assert pipeline.finetune.data.train == tmp_path / "sub" / "rows.jsonl"
    assert pipeline.finetune.data.eval == tmp_path / "sub" / "eval.jsonl"
    blue = parse_pipeline({**spec, "rollout": {"strategy": "blue-green"}}, tmp_path / "b.yaml")
    assert blue.rollout is not None and blue.rollout.policy.steps == (100,)
    assert blue.rollout.endpoint == "support"


# -- from an alert -------------------------------------------------------------------------


def test_an_alert_rule_names_a_pipeline_to_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.monitoring import _alerts

    block = re.search(r"## From an alert\n.*?```yaml\n(.*?)```", GUIDE, re.S)
    assert block is not None
    rules = AlertRules.parse(yaml.safe_load(block.group(1)))
    assert rules.rules[0].pipeline == Path("/etc/modelyard/loop.yaml")
    with pytest.raises(ConfigError, match="give retrain or pipeline, not both"):
        AlertRules.parse({"rules": [{"name": "x", "metric": "errors", "threshold": 1,
                                     "retrain": "true", "pipeline": "loop.yaml"}]})  # fmt: skip
    rule = rules.rules[0].model_copy(update={"pipeline": project / "loop.yaml"})
    started: list[list[str]] = []

    class Recorded:  # what Popen was asked to start; the run below is its dry run
        pid = 4242

        def __init__(self, argv: list[str], **_: Any) -> None:
            started.append(argv)

        def poll(self) -> int:
            return 0

    now = datetime.now(UTC)
    alert = AlertState(
        id="a1b2c3", rule=rule.name, labels={"endpoint": "support"}, severity="warning",
        state="firing", value=0.1, summary="feedback dropped", active_since=now, fired_at=now,
        resolved_at=None, last_evaluated=now,
    )  # fmt: skip
    with home_store(project.parent / "home") as store, monkeypatch.context() as patched:
        patched.setattr("modelyard.monitoring._alerts.subprocess.Popen", Recorded)
        assert _alerts.start_retraining(store, rule, alert) == 4242
        (event,) = store.list_audit_events(action="alert.retrain_started")
    assert started == [[sys.executable, "-m", "modelyard", "pipeline", "run",
                        str(project / "loop.yaml"), "--alert", alert.id]]  # fmt: skip
    assert event.payload["pipeline"] == str(project / "loop.yaml")
    dry = _run(project, *started[0][3:], "--dry-run")
    assert dry.code == 0 and "pipeline helpdesk-loop is valid" in dry.out, dry.err


# -- waiting for the rollout ---------------------------------------------------------------


class _Quiet:
    """A reporter that keeps the lines (the ``finetune.Reporter`` protocol)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    @contextlib.contextmanager
    def bar(self, description: str, total: int, unit: str) -> Iterator[Any]:
        yield lambda done, total, info="": None


def test_with_wait_the_rollouts_end_is_the_stages_outcome(home: Path) -> None:
    """Succeeded: done; aborted or rolled back: RolloutFailed (exit 1); still running at the
    timeout: RolloutTimedOut (exit 3), the rollout going on."""
    from modelyard.pipeline._stages import roll_out

    def plan(timeout_s: float) -> RolloutPlan:
        policy = check_policy("10,100", 60, 1, ["error_rate <= 0.02"])
        return RolloutPlan("support", "canary", policy, None, True, timeout_s)

    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=3)
        ui = _Quiet()

        def promote() -> None:  # once the controller has it baking (promote waits for it)
            Controller(store).tick()
            promote_rollout(store, "support")

        threading.Timer(0.3, promote).start()
        done = roll_out(store, plan(30), "bot:2", ui=ui)
        assert done.failure is None and done.artifacts["status"] == "succeeded"
        assert "rollout running, step 1 of 2" in ui.lines
        threading.Timer(0.3, abort_rollout, (store, "support", "wrong rows")).start()
        aborted = roll_out(store, plan(30), "bot:3", ui=ui)
        assert isinstance(aborted.failure, RolloutFailed)
        assert "ended aborted (wrong rows)" in aborted.failure.message
        late = roll_out(store, plan(0.2), "bot:3", ui=ui)
        assert isinstance(late.failure, RolloutTimedOut) and late.artifacts["timed_out"]
        assert status_of(late.failure).exit_code == 3
        assert store.latest_rollout("support").status == "running"
