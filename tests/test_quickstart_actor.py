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
        "the quickstart stops before building anything: actor 'bob' (role developer) may "
        "not move the protected alias acme-claims@champion: it needs role approver"
    )
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        assert store.list_tenants() == []  # no tenant half built
        (refusal,) = store.list_audit_events(action="permission.denied")
        assert (refusal.actor, refusal.subject) == ("bob", "acme-claims@champion")


def test_under_segregation_of_duties_an_approver_is_refused_by_the_stores_own_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart trains the versions it would approve: the store's rule refuses it."""
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path))
    monkeypatch.setenv("MODELYARD_SEGREGATION_OF_DUTIES", "1")
    monkeypatch.setattr(quickstart, "_ensure_base", _built_nothing)
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.add_actor("ann", "approver")
    with pytest.raises(PermissionDenied) as caught:
        quickstart.run_quickstart(load_settings(), RichReporter(), actor="ann")
    assert caught.value.message == (
        "the quickstart stops before building anything: actor 'ann' would train the version "
        "and may not approve it (segregation of duties): moving acme-claims@champion needs "
        "another approver"
    )


def test_the_cli_exits_1_naming_the_actor_and_the_role_it_needs(tmp_path: Path) -> None:
    r = modelyard("quickstart", home=tmp_path, env={"MODELYARD_ACTOR": "bob"}, timeout=120)
    assert r.code == 1, r.err[-2000:]
    assert "Traceback" not in r.err
    assert "the quickstart stops before building anything: actor 'bob' (role developer)" in r.err
    assert "has no alias" not in r.err
    assert "actors add" in r.err  # what to do next


def test_the_global_actor_option_is_the_quickstarts_actor(tmp_path: Path) -> None:
    r = modelyard("--actor", "carol", "quickstart", home=tmp_path, timeout=120)
    assert r.code == 1, r.err[-2000:]
    assert "actor 'carol' (role developer) may not move the protected alias" in r.err
