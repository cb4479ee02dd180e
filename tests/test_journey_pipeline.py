"""Journey 1, the gated deployment pipeline: what a CI job meets when a step fails or is
stopped (exit codes, one-line errors, nothing left half done)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.store import Store

QUICK_BASE = {"steps": 8, "batch_size": 4, "seq_len": 64, "hidden_size": 32, "vocab_size": 512}


def _project(tmp_path: Path, **training: object) -> Path:
    base = create_tiny_base(domain_corpus(DOMAINS, 300, seed=0), tmp_path / "base", **QUICK_BASE)
    rows = synthetic_domain("it-support", 40, seed=0)
    for name, part in (("train.jsonl", rows[:30]), ("eval.jsonl", rows[30:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part), "utf-8")
    config = {
        "base_model": str(base.path),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "format": "alpaca"},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 400, "batch_size": 4, "seed": 0, "save_every": 4, **training},
        "evaluation": {"metrics": ["exact_match"], "max_new_tokens": 2},
        "registry": {"model": "helpdesk", "alias_on_pass": "challenger"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def test_a_cancelled_ci_job_sigterm_marks_the_fine_tune_interrupted(tmp_path: Path) -> None:
    """CI runners and Kubernetes stop a job with SIGTERM, not Ctrl-C. It used to kill the
    process outright: the run stayed 'running' (until `modelyard doctor`), its scratch
    stayed, and the job saw -15 with no word. Now it ends as Ctrl-C does, with exit 143."""
    config = _project(tmp_path)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(MODELYARD_HOME=str(home), COLUMNS="200", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "finetune", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(home.glob("checkpoints/*/checkpoint-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    time.sleep(0.5)  # let the checkpoint's files land
    proc.send_signal(signal.SIGTERM)  # what a cancelled CI job or an evicted pod gets
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "fine-tuning interrupted at step" in err and "is marked interrupted" in err
    assert f"modelyard finetune -c {config} --resume" in err
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        (run,) = store.list_runs()
        assert run.status == "interrupted"
        assert not store.list_registered_models()  # nothing half registered
    assert not any((home / "runs").glob("*"))  # the run's scratch is gone


def test_a_hung_on_breach_notifier_holds_no_tick(home: Path) -> None:
    """A custom ``on_breach`` (a caller's notifier) ran in the tick, so one that hung held
    every other rollout and the lease. Now it runs on a thread of its own: while it hangs
    on the first rollback, the next tick still rolls the other endpoint back; ``close``
    waits for both notices, made in the order the rollbacks happened."""
    import threading
    import uuid

    from modelyard.delivery import Controller, start_rollout
    from modelyard.store import NewInferenceRecord
    from worlds import fake_world

    home.mkdir(parents=True)
    store = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(store, versions=3, template=None)
    store.create_endpoint("helpdesk", model_ref="bot:1", tenant="acme")
    for name in ("support", "helpdesk"):
        start_rollout(store, name, "bot:2", steps="100", bake_s=3600, min_requests=5)
    release = threading.Event()
    noticed: list[tuple[str, str, bool]] = []

    def hung_notifier(s: Store, r: object, breach: object) -> None:
        # a pager that does not answer until the test has seen the next ticks go on
        released = release.wait(20)
        noticed.append((r.endpoint, r.status, released))  # type: ignore[attr-defined]

    def errors(name: str) -> None:
        vid = store.get_model_version("bot", 2).id
        store.add_inference_records(
            NewInferenceRecord(
                id=f"cmpl-{uuid.uuid4().hex}", endpoint_name=name, route="completions",
                latency_ms=5.0, status="error", http_status=503, version_id=vid,
            )
            for _ in range(10)
        )  # fmt: skip

    ctl = Controller(store, on_breach=hung_notifier)
    ctl.tick()  # both bake
    errors("support")
    (first,) = ctl.tick()
    assert first.endpoint == "support" and first.status == "rolled_back"
    errors("helpdesk")
    (second,) = ctl.tick()  # the first notice still hangs: this tick was not held by it
    assert second.endpoint == "helpdesk" and second.status == "rolled_back"
    assert not release.is_set()
    release.set()
    assert ctl.close(timeout_s=30)
    # in the tick, the notifier waited its 20 s out with nothing released: the ticks were held
    assert noticed == [("support", "rolled_back", True), ("helpdesk", "rolled_back", True)]
    store.close()


@pytest.mark.parametrize(
    ("guard", "says"),
    [
        ("p95_latency_ms <= 1.2 * basline", "'basline' in the threshold is not a word it knows "
         "(did you mean 'baseline'?)"),
        ("p95_latency_ms <= baseline * 1.2", "put the factor first: '1.2 * baseline'"),
        ("error_rate <= 2%", "'2%' is not a number: write a share, 0.02 for 2%"),
        ("error_rate =< 0.02", "'=<' is not an operator (use <=, <, >= or >)"),
        ("Error_rate <= 0.02", "'Error_rate' is not a metric name (did you mean 'error_rate'?)"),
        ("error_rate <=", "the threshold is missing"),
    ],
)  # fmt: skip
def test_a_guard_typo_in_the_pipeline_is_named(
    home: Path, capsys: pytest.CaptureFixture[str], guard: str, says: str
) -> None:
    """The pipeline's `rollout start --guard` with a typo said only the grammar; the CI log
    now points at the part that is wrong. Exit 2, one line, nothing started."""
    from modelyard.cli import main
    from worlds import fake_world

    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=3, template=None)
    capsys.readouterr()
    code = main(["rollout", "start", "support", "--to", "bot:2", "--guard", guard])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith(f"error: invalid guard {guard!r}: {says}; write METRIC OP THRESHOLD")
    assert len(err.strip().splitlines()) == 1, err
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert store.list_rollouts(endpoint="support") == []


def test_rollout_wait_rides_out_a_store_that_is_away_for_a_moment(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout wait --timeout 30m` polls for half an hour; one failed read (the database
    restarting, a proxy's 502 in front of the admin API) made it exit 1 while the rollout
    went on, and the pipeline went red for nothing. It now reads again until the timeout;
    what asking again cannot change (no such endpoint) still fails at once."""
    from modelyard.cli import main
    from modelyard.delivery import Controller, start_rollout
    from modelyard.errors import StoreUnavailable
    from worlds import fake_world

    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=3, template=None)
        start_rollout(store, "support", "bot:2", steps="100", bake_s=0, min_requests=0)
        ctl = Controller(store)
        for _ in range(3):
            ctl.tick()
        ctl.close()
        assert store.latest_rollout("support").status == "succeeded"
    real = Store.latest_rollout
    outages = [StoreUnavailable("the store at sqlite:///x cannot be reached: restarting")] * 2

    def flaky(self: Store, endpoint: str) -> object:
        if outages:
            raise outages.pop()
        return real(self, endpoint)

    monkeypatch.setattr(Store, "latest_rollout", flaky)
    capsys.readouterr()
    code = main(["rollout", "wait", "support", "--timeout", "30s", "--poll", "0.05"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "succeeded" in out and not outages
    code = main(["rollout", "wait", "nope", "--timeout", "30s", "--poll", "0.05"])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: no endpoint named 'nope'"), err


def test_fail_on_takes_a_comma_separated_list_as_the_other_lists_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--metrics a,b` and `--steps 10,50,100` take commas; `--fail-on pii,duplicates` was
    refused as one unknown rule ("did you mean 'duplicates'?"), misleading a pipeline's
    author. Both rules now apply; a typo inside the list is still named."""
    from modelyard.cli import main

    rows = [
        {"instruction": "Route it.", "input": "VPN down", "output": "network"},
        {"instruction": "Route it.", "input": "VPN down", "output": "network"},
        {"instruction": "Route it.", "input": "Mail jane.doe@example.com", "output": "access"},
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    capsys.readouterr()
    code = main(["data", "validate", str(data), "--format", "alpaca", "--fail-on",
                 "pii, duplicates"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1, err
    assert "validation failed: pii (1), duplicates (1)" in err
    code = main(["data", "validate", str(data), "--format", "alpaca", "--fail-on", "pii,dupes"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: unknown --fail-on rule 'dupes'"), err


def test_rollout_start_run_again_by_a_retried_ci_job_is_not_a_failure(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipeline's `rollout start` run again (a retried job) was refused, exit 1: "a rollout
    in progress already" for its own rollout, "already sends all its traffic" once it had
    succeeded. Like `kubectl apply` of an unchanged spec, it now says so and exits 0,
    starting nothing; a different plan or target is still refused."""
    from modelyard.cli import main
    from modelyard.delivery import Controller
    from worlds import fake_world

    home.mkdir(parents=True)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=3, template=None)
    line = ["rollout", "start", "support", "--to", "bot:2", "--steps", "100", "--bake", "0s",
            "--min-requests", "0", "--guard", "error_rate <= 0.02"]  # fmt: skip
    capsys.readouterr()
    assert main(line) == 0
    assert main(line) == 0  # the same step again, while it runs
    out, _ = capsys.readouterr()
    assert "with this plan is in progress already" in out and "nothing new started" in out
    assert main([*line[:-1], "error_rate <= 0.05"]) == 1  # another plan: refused as before
    _, err = capsys.readouterr()
    assert "has a rollout in progress already" in err
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        ctl = Controller(store)
        for _ in range(3):
            ctl.tick()
        ctl.close()
        assert store.latest_rollout("support").status == "succeeded"
    assert main(line) == 0  # the pipeline run again after it succeeded
    out, _ = capsys.readouterr()
    assert "support already sends all its traffic to bot:2" in out and "nothing to do" in out
    assert main(["rollout", "wait", "support", "--timeout", "5s"]) == 0
    assert main([*line[:4], "bot:3", *line[5:]]) == 0  # another target: a new rollout
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert [r.target for r in store.list_rollouts(endpoint="support")] == [3, 2]


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_while_the_version_is_registered_leaves_no_half_registered_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    signum: int, exit_code: int,
) -> None:  # fmt: skip
    """A Ctrl-C (or a CI's SIGTERM) landing just after the version row was written left a
    version with no gate verdicts, its alias not moved and its run 'running' beside it. The
    signal now waits until the version, its verdicts, its run and its alias are written."""
    from modelyard.cli import main

    config = _project(tmp_path, max_steps=2, save_every=None)
    edited = yaml.safe_load(config.read_text(encoding="utf-8"))
    edited["evaluation"]["gates"] = ["exact_match >= 0"]
    config.write_text(yaml.safe_dump(edited, sort_keys=False), encoding="utf-8")
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    real = Store.create_model_version

    def then_ctrl_c(self: Store, *args: object, **kwargs: object) -> object:
        version = real(self, *args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signum)  # lands now, as a Ctrl-C (or SIGTERM) at this moment would
        time.sleep(0.2)
        return version

    monkeypatch.setattr(Store, "create_model_version", then_ctrl_c)
    code = main(["finetune", "-c", str(config)])
    _, err = capsys.readouterr()
    assert code == exit_code, err  # 128 + the signal, as when training is interrupted
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        (run,) = store.list_runs()
        assert run.status == "finished"
        version = store.get_model_version("helpdesk", 1)
        assert version.gates.state == "passed"  # its verdicts were recorded
        assert store.resolve_model_ref("helpdesk@challenger").version == 1
    assert "interrupted once helpdesk:1 was registered with its gate verdicts" in err


def test_fail_on_leakage_without_eval_says_it_checks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--fail-on leakage` without `--eval` passed in silence: a pipeline that forgot the
    eval file believed it had a leakage gate. It still exits 0 (as documented) but says so."""
    from modelyard.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"instruction": "Route it.", "output": "network"}) + "\n", "utf-8")
    capsys.readouterr()
    assert main(["data", "validate", str(data), "--format", "alpaca", "--fail-on", "leakage"]) == 0
    _, err = capsys.readouterr()
    assert "warning: --fail-on leakage checks nothing without --eval FILE" in err
    assert main(["data", "validate", str(data), "--format", "alpaca", "--fail-on", "pii"]) == 0
    _, err = capsys.readouterr()
    assert "leakage" not in err


def test_finetune_whose_alias_on_pass_is_refused_stops_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`registry.alias_on_pass: champion` refused (here: no gates to vouch for the version)
    exited 0, so the pipeline's next step delivered the version champion still pointed at,
    and a `rollout start` to it now says "nothing to do". It exits 1 now, as `rollout wait`
    does when its --promote-alias is refused; the version stays registered."""
    from modelyard.cli import main

    config = _project(tmp_path, max_steps=2, save_every=None)
    edited = yaml.safe_load(config.read_text(encoding="utf-8"))
    edited["registry"]["alias_on_pass"] = "champion"  # and no evaluation.gates
    config.write_text(yaml.safe_dump(edited, sort_keys=False), encoding="utf-8")
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    capsys.readouterr()
    code = main(["finetune", "-c", str(config)])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "registered helpdesk:1" in out
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: helpdesk:1 has no gates configured, but helpdesk@champion "
                           "was NOT moved to it")  # fmt: skip
    assert "--override-gates" in line
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert [v.version for v in store.list_model_versions("helpdesk")] == [1]
        assert "champion" not in store.get_model_version("helpdesk", 1).aliases
