"""A rollout that ended (rolled back, aborted, succeeded) says so in its phase: ``done``, in
`rollout status --json`, `rollout wait --json` and the admin API, never ``baking``."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest

from modelyard.admin._delivery import rollout_json
from modelyard.cli import main
from modelyard.store import NewInferenceRecord, Store
from worlds import fake_world

START = (
    "rollout start support --to bot:2 --steps 20,100 --bake 0s --min-requests 5 "
    '--guard "error_rate <= 0.05" --json'
)


@pytest.fixture
def store(home: Path) -> Store:
    home.mkdir(parents=True)
    s = Store.open(f"sqlite:///{home / 'store.db'}")
    fake_world(s, versions=3, template=None)
    return s


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def _errors_on_the_canary(store: Store) -> None:
    v2 = store.get_model_version("bot", 2).id
    store.add_inference_records(
        NewInferenceRecord(
            id=f"cmpl-{uuid.uuid4().hex}", endpoint_name="support", route="completions",
            latency_ms=12.0, status="error", http_status=500, version_id=v2,
        )
        for _ in range(7)
    )  # fmt: skip


def test_a_rolled_back_rollout_is_done_not_baking(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, START)[0] == 0
    assert run(capsys, "controller --once")[0] == 0
    code, out, _ = run(capsys, "rollout status support --json")
    assert code == 0 and json.loads(out)["phase"] == "baking"  # while it bakes, it says so
    _errors_on_the_canary(store)
    assert run(capsys, "controller --once")[0] == 0

    code, out, err = run(capsys, "rollout status support --json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["phase"]) == ("rolled_back", "done")
    code, out, _ = run(capsys, "rollout wait support --json")
    assert json.loads(out)["phase"] == "done"  # exit 1 (rolled back), its JSON all the same
    assert rollout_json(store, store.latest_rollout("support"))["phase"] == "done"


def test_an_aborted_rollout_is_done(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, START)[0] == 0
    assert run(capsys, "controller --once")[0] == 0
    assert run(capsys, "rollout abort support --reason oops")[0] == 0
    code, out, _ = run(capsys, "rollout status support --json")
    assert code == 0 and (json.loads(out)["status"], json.loads(out)["phase"]) == (
        "aborted",
        "done",
    )
