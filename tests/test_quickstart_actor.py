"""`modelyard quickstart` run by an actor who may not move ``champion``: it stops before
building anything, with the permission error's own line, not after the first tenant's
training with a missing alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard import quickstart
from modelyard.cli._common import RichReporter
from modelyard.errors import PermissionDenied
from modelyard.settings import load_settings
from modelyard.store import Store


def _built_nothing(*_: object) -> None:
    raise AssertionError("the quickstart built its base before checking the actor's role")


def test_a_developer_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path))
    monkeypatch.setattr(quickstart, "_ensure_base", _built_nothing)
    with pytest.raises(PermissionDenied) as caught:
        quickstart.run_quickstart(load_settings(), RichReporter(), actor="bob")
    assert caught.value.message == (
        "actor 'bob' (role developer) may not run the quickstart: it moves the protected "
        "alias champion of each tenant's model, which needs role approver"
    )
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        assert store.list_tenants() == []  # no tenant half built


def test_the_cli_exits_1_naming_the_actor_and_the_role_it_needs(tmp_path: Path) -> None:
    r = modelyard("quickstart", home=tmp_path, env={"MODELYARD_ACTOR": "bob"}, timeout=120)
    assert r.code == 1, r.err[-2000:]
    assert "Traceback" not in r.err
    assert "actor 'bob' (role developer) may not run the quickstart" in r.err
    assert "has no alias" not in r.err
    assert "actors add" in r.err  # what to do next


def test_the_global_actor_option_is_the_quickstarts_actor(tmp_path: Path) -> None:
    r = modelyard("--actor", "carol", "quickstart", home=tmp_path, timeout=120)
    assert r.code == 1, r.err[-2000:]
    assert "actor 'carol' (role developer) may not run the quickstart" in r.err
