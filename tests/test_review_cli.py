"""An outside review of the CI and tenant-onboarding journeys: each test is a defect found by
attacking them (a traceback, a silently ignored option, a failure after the work was done, a
message that says what did not happen), fixed, and checked by exit code, output and store."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from clihelp import modelyard
from modelyard.cli import main
from modelyard.store import Store
from worlds import fake_world


def one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("error: "), err
    return lines[0]


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def _store(home: Path) -> Store:
    return Store.open(f"sqlite:///{home / 'store.db'}")


@pytest.fixture
def world(home: Path) -> Store:
    """Tenant acme owning model bot (versions 1-3, gates passed), endpoint support on bot:1."""
    home.mkdir(parents=True)
    s = _store(home)
    fake_world(s, versions=3, template=None)
    s.create_tenant("globex", storage_policy="full")
    return s


def _config(tmp_path: Path, **registry: str) -> Path:
    """A finetune config whose data and base are never reached by the checks under test."""
    path = tmp_path / "config.yaml"
    config = {
        "base_model": str(tmp_path / "base"),
        "data": {"train": "train.jsonl"},
        "registry": {"model": "support-bot", **registry},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# --- finetune: the config file ------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes("base_model: café\n".encode("latin-1"))
    r = modelyard("finetune", "-c", str(config), "--check", home=tmp_path / "h")
    assert r.code == 2
    assert "is not UTF-8" in one_error(r.err) and "config.yaml" in r.err


def test_a_key_given_twice_is_refused_not_silently_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "base_model: ./base\ndata:\n  train: train.jsonl\nregistry:\n  model: bot\n"
        "training:\n  max_steps: 3\ntraining:\n  max_steps: 1000\n",
        encoding="utf-8",
    )
    code, _, err = run(capsys, f"finetune -c {config} --check")
    assert code == 2
    line = one_error(err)
    assert "'training' twice (lines 6 and 8)" in line


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ({"model": "Support Bot"}, "registry.model': invalid model name 'Support Bot'"),
        ({"model": "bot", "alias_on_pass": "Champion!"}, "registry.alias_on_pass"),
        ({"model": "bot", "tenant": "ACME"}, "registry.tenant': invalid tenant name"),
    ],
)
def test_names_the_store_would_refuse_after_training_are_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: dict[str, str], expected: str
) -> None:
    config = _config(tmp_path)
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    values["registry"] = registry
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    code, _, err = run(capsys, f"finetune -c {config} --check")
    assert code == 2
    line = one_error(err)
    assert expected in line and "Value error" not in line


def test_a_missing_tenant_fails_before_training_and_leaves_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "tenants create acme")[0] == 0
    config = _config(tmp_path, tenant="ghost")  # neither data nor base exist: never reached
    for extra in ("--check", ""):
        code, _, err = run(capsys, f"finetune -c {config} {extra}")
        assert code == 2
        assert "registry.tenant" in one_error(err) and "ghost" in err
    with _store(home) as store:
        assert store.list_runs() == [] and store.list_datasets() == []
        assert store.list_registered_models() == []


def test_a_tenant_the_existing_model_does_not_belong_to_is_not_silently_ignored(
    world: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tenant="globex")
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    values["registry"]["model"] = "bot"  # exists, owned by acme
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    code, _, err = run(capsys, f"finetune -c {config}")
    assert code == 2
    line = one_error(err)
    assert "belongs to tenant 'acme'" in line and "tenant 'globex'" in line
    assert world.list_runs() == []
    assert world.get_registered_model("bot").latest_version == 3


# --- finetune: options that would be ignored -----------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("--check --nodes 4", "--nodes only apply with --slurm"),
        ("--partition gpu --out job.sbatch", "--partition, --out only apply with --slurm"),
        ("--slurm --check", "--check cannot be combined with --slurm"),
        ("--slurm --resume", "--resume cannot be combined with --slurm"),
        ("--slurm --gpus 2", "--gpus cannot be combined with --slurm"),
        ("--slurm --time forever", "invalid --time 'forever'"),
        ("--slurm --partition 'gpu; rm -rf ~'", "invalid --partition"),
    ],
)
def test_options_that_would_be_silently_ignored_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    expected: str,
) -> None:
    config = _config(tmp_path)
    monkeypatch.chdir(tmp_path)  # where --out's default, finetune.sbatch, would go
    code, _, err = run(capsys, f"finetune -c {config} {options}")
    assert code == 2
    assert expected in one_error(err)
    assert not list(tmp_path.glob("*.sbatch"))


def test_slurm_script_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    for out in (tmp_path / "no-such-dir" / "job.sbatch", tmp_path):
        code, _, err = run(capsys, f"finetune -c {config} --slurm --out {out}")
        assert code == 2
        assert f"cannot write the sbatch script to {out}" in one_error(err)
    code, _, err = run(
        capsys,
        f"finetune -c {config} --slurm --time 2-04:00:00 --partition gpu,a100 "
        f"--out {tmp_path / 'ok.sbatch'}",
    )
    assert code == 0, err
    assert "#SBATCH --time=2-04:00:00" in (tmp_path / "ok.sbatch").read_text(encoding="utf-8")


# --- data validate ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.base import create_tiny_base
    from modelyard.data import DOMAINS, domain_corpus
    from tinymodels import QUICK_BASE

    corpus = domain_corpus(DOMAINS, 50, seed=0)
    return create_tiny_base(corpus, tmp_path_factory.mktemp("base") / "tiny", **QUICK_BASE).path


def test_data_validate_takes_a_base_registered_by_name(
    home: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    tiny_base: Path,
) -> None:
    home.mkdir(parents=True)
    with _store(home) as store:
        store.register_base_model("tiny-reviewed", str(tiny_base), {})
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # no ./tiny-reviewed here
    r = modelyard(
        "data", "validate", str(data), "--format", "alpaca", "--base-model", "tiny-reviewed",
        "--json", home=home, env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert r.code == 0, r.err
    lengths = json.loads(r.out)["lengths"]
    assert lengths["unit"] == "tokens" and lengths["tokenizer"] == str(tiny_base)


def _tiny_run(tmp_path: Path, tiny_base: Path, **sections: object) -> None:
    """``tmp_path/config.yaml``: one step on 12 it-support rows (``train.jsonl``) of the tiny
    base, registered as helpdesk; ``sections`` are added to the config."""
    from modelyard.data import synthetic_domain

    rows = synthetic_domain("it-support", 12, seed=0)
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    config = {
        "base_model": str(tiny_base),
        "data": {"train": "train.jsonl", "eval_fraction": 0.25},
        "training": {"max_steps": 1, "batch_size": 4},
        "registry": {"model": "helpdesk"},
        **sections,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def test_a_passing_run_with_no_alias_on_pass_says_no_alias_moved(
    tmp_path: Path, tiny_base: Path
) -> None:
    _tiny_run(
        tmp_path, tiny_base,
        method={"type": "lora", "r": 2, "alpha": 4},
        evaluation={"max_new_tokens": 2, "gates": ["exact_match >= 0"], "compare_base": False},
    )  # fmt: skip
    r = modelyard("finetune", "-c", str(tmp_path / "config.yaml"), home=tmp_path / "h")
    assert r.code == 0, r.err
    assert "registered helpdesk:1" in r.out
    assert "no alias moved" in r.err and "modelyard registry alias helpdesk champion 1" in r.err
    with _store(tmp_path / "h") as store:
        assert store.get_registered_model("helpdesk").aliases == {}


# --- endpoints create ------------------------------------------------------------------------


def test_endpoint_for_a_tenant_and_shared_at_once_is_refused(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "endpoints create both --tenant acme --shared --model bot:1")
    assert code == 2
    assert "--tenant and --shared exclude each other" in one_error(err)
    assert [e.name for e in world.list_endpoints()] == ["support"]


@pytest.mark.parametrize("where", ["--tenant globex", "--shared"], ids=["other-tenant", "shared"])
def test_a_tenants_model_is_not_served_to_other_tenants(
    world: Store, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    code, _, err = run(capsys, f"endpoints create leak {where} --model bot:2")
    assert code == 2
    assert "bot:2 belongs to tenant 'acme'" in one_error(err)
    assert [e.name for e in world.list_endpoints()] == ["support"]
    code, _, err = run(capsys, "endpoints create acme-two --tenant acme --model bot:2")
    assert code == 0, err


# --- rollouts ----------------------------------------------------------------------------------


def test_an_invalid_promote_alias_is_refused_before_traffic_moves(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "rollout start support --to bot:2 --steps 100 --promote-alias 'Bad Alias'"
    )
    assert code == 2
    assert "invalid alias name 'Bad Alias'" in one_error(err)
    assert world.list_rollouts(endpoint="support") == []


def test_the_rollout_says_when_the_alias_was_not_moved(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "actors add root --role admin")[0] == 0
    assert run(capsys, "--actor root actors add ann --role approver")[0] == 0
    code, _, err = run(
        capsys,
        "--actor ann rollout start support --to bot:2 --steps 100 --bake 0 --min-requests 0 "
        "--promote-alias champion",
    )
    assert code == 0, err
    # ann may no longer move it when the rollout ends (promoted here, as by the controller)
    assert run(capsys, "--actor root actors add ann --role developer")[0] == 0
    assert run(capsys, "controller --once")[0] == 0  # prepared (no live server): baking
    code, out, err = run(capsys, "--actor root rollout promote support")
    assert code == 0, err
    assert "NOT moved" in out
    r = world.latest_rollout("support")
    assert r.status == "succeeded" and r.outcome["alias"]["moved"] is False
    assert "champion" not in world.get_registered_model("bot").aliases

    # traffic moved but the alias did not: a job gating on `rollout wait` must not go on
    code, out, err = run(capsys, "--actor root rollout wait support --timeout 1s")
    assert code == 1
    assert out == ""  # said once, on the error line
    assert "succeeded, but bot@champion was NOT moved" in one_error(err)
    assert err.count("NOT moved") == 1 and "points at it" not in err
    assert "`modelyard registry alias bot champion 2`" in err
    code, out, _ = run(capsys, "--actor root rollout status support")
    assert "NOT moved" in out and "{'name'" not in out


def test_the_timeline_says_the_alias_moved_in_words(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "rollout start support --to bot:2 --steps 100 --bake 0 --min-requests 0 "
        "--promote-alias champion",
    )
    assert code == 0, err
    assert run(capsys, "controller --once")[0] == 0  # prepared (no live server): baking
    assert run(capsys, "rollout promote support")[0] == 0
    code, out, _ = run(capsys, "rollout status support")
    assert code == 0 and "{'name'" not in out and "bot@champion → bot:2" in out
    code, out, _ = run(capsys, "rollout wait support --timeout 1s")
    assert code == 0 and "and bot@champion points at it" in out


# --- keys and tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("keys create --tenant acme --expires 5x", "--expires"),
        ("keys rotate somekey --grace 5x", "--grace"),
        ("tokens create --expires 5x", "--expires"),
        ("endpoints show support --window 5x", "--window"),
    ],
)
def test_a_bad_duration_names_its_option(
    world: Store, capsys: pytest.CaptureFixture[str], line: str, option: str
) -> None:
    code, _, err = run(capsys, line)
    assert code == 2
    assert f"invalid duration '5x' for {option}" in one_error(err)
    assert world.list_api_keys() == []


# --- a rollout with no controller ------------------------------------------------------------


def test_start_and_wait_say_when_no_controller_will_move_the_rollout(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "rollout start support --to bot:2 --steps 100")
    assert code == 0
    assert err.startswith("warning: no rollout controller is running on this store")
    code, _, err = run(capsys, "rollout wait support --timeout 1s --poll 0.1")
    assert code == 3
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "No rollout controller is running" in line and "modelyard controller" in line
    assert "goes on" not in line

    assert world.acquire_lease("controller", "elsewhere", 60)  # a controller runs somewhere
    assert run(capsys, "rollout abort support")[0] == 0
    code, _, err = run(capsys, "rollout start support --to bot:2 --steps 100")
    assert code == 0 and "warning" not in err
    code, _, err = run(capsys, "rollout wait support --timeout 1s --poll 0.1")
    assert code == 3 and "The rollout goes on" in err and "No rollout controller" not in err


# --- help ------------------------------------------------------------------------------------


def test_every_option_and_argument_of_every_command_is_explained() -> None:
    import typer

    from modelyard.cli._app import app

    missing: list[str] = []

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        if not hasattr(command, "commands"):
            for param in getattr(command, "params", []):
                if param.name != "help" and not getattr(param, "help", None):
                    missing.append(f"{' '.join(path)}: {param.name}")

    walk(typer.main.get_command(app), [])
    assert missing == []


def test_resume_with_no_checkpoint_fails_before_anything_is_written(
    tmp_path: Path, tiny_base: Path
) -> None:
    _tiny_run(tmp_path, tiny_base)
    home = tmp_path / "h"
    assert modelyard("tenants", "create", "acme", home=home).code == 0  # the store exists
    r = modelyard("finetune", "-c", str(tmp_path / "config.yaml"), "--resume", home=home)
    assert r.code == 1
    assert "no checkpoint to resume from in" in one_error(r.err)
    with _store(home) as store:
        assert store.list_runs() == [] and store.list_datasets() == []


def test_controller_once_says_when_another_controller_holds_the_lease(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "rollout start support --to bot:2 --steps 100")[0] == 0
    assert world.acquire_lease("controller", "elsewhere", 60)
    code, out, err = run(capsys, "controller --once")
    assert code == 0 and out == ""
    assert "another controller (elsewhere) holds the lease" in err
    assert world.latest_rollout("support").phase == "preparing"  # untouched


def test_outputs_that_cannot_be_files_are_one_line_before_anything_is_written(
    world: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--out of audit export and registry card: a directory, or under a file or a missing
    directory, were tracebacks (IsADirectoryError, NotADirectoryError)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    for command in ("audit export", "registry card bot:1"):
        code, _, err = run(capsys, f"{command} --out {tmp_path}")
        assert code == 2 and f"--out {tmp_path} is a directory" in one_error(err)
        for under in (a_file / "x.md", tmp_path / "missing" / "x.md"):
            code, _, err = run(capsys, f"{command} --out {under}")
            assert code == 2 and "cannot write" in one_error(err)
    assert a_file.read_text(encoding="utf-8") == "x"
    assert not (tmp_path / "missing").exists()


def test_an_unknown_alert_state_is_refused_not_an_empty_list(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "monitor alerts --state bogus")
    assert code == 2 and out == ""
    assert "unknown --state 'bogus': alerts are pending, firing, resolved, inactive" in (
        one_error(err)
    )
    assert run(capsys, "monitor alerts --state firing --json")[0] == 0


def test_a_since_in_the_future_is_refused_and_an_empty_comparison_says_why(
    world: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("audit export", "rollout compare support", "monitor report --endpoint support"):
        code, _, err = run(capsys, f"{command} --since 2099-01-01")
        assert code == 2 and "--since '2099-01-01' is in the future" in one_error(err), command
    code, out, err = run(capsys, "rollout compare support")
    assert code == 0 and "support: control" in out
    assert "note: no inference records of support: nothing to compare yet" in err
