"""A store a newer release migrated (a `helm rollback`, an older CLI against the shared
store) is used as it is: migrations since 0018 only add, so this release runs on it.

Before, every command died with Alembic's traceback ("Can't locate revision identified
by ..."), so a rolled-back release could not start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from clihelp import modelyard
from modelyard.errors import StoreMigrationError
from modelyard.store import Store, head_revision


def _as_if_newer(url: str, revision: str = "9999") -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_a_store_a_newer_release_migrated_is_used_as_it_is(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Store.open(store_url) as store:
        store.create_tenant("acme")
    _as_if_newer(store_url)
    with caplog.at_level(logging.WARNING), Store.open(store_url) as store:
        assert store.schema_revision() == "9999"  # nothing migrated, nothing changed
        assert [t.name for t in store.list_tenants()] == ["acme"]
        store.create_tenant("globex")  # and it writes
        assert store.migrate() == ("9999", "9999")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"at 9999, newer than this release's {head_revision()}" in said


def test_the_cli_runs_on_it_and_init_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    _as_if_newer(f"sqlite:///{home / 'store.db'}")
    listed = modelyard("tenants", "list", home=home)
    assert listed.code == 0, listed.err
    assert "acme" in listed.out and "Traceback" not in listed.err
    assert "newer than this release's" in listed.err  # the warning, once, on stderr
    init = modelyard("init", home=home)
    assert init.code == 0, init.err
    assert f"schema at 9999, newer than this release's {head_revision()}" in init.out


@pytest.mark.parametrize("revision", ["a1b2c3d4e5f6", "0009a"])
def test_a_revision_not_modelyards_is_refused_not_taken_for_newer(
    store_url: str, revision: str
) -> None:
    """Another application's alembic_version in the same database (its revisions are hex),
    or a revision no modelyard release has: not a newer modelyard's schema, so running
    on it 'as it is' would fail later on tables that are not there."""
    with Store.open(store_url):
        pass
    _as_if_newer(store_url, revision)
    with pytest.raises(StoreMigrationError) as refused:
        Store.open(store_url)
    assert f"at revision {revision!r}" in str(refused.value)
    assert "not one of modelyard's" in str(refused.value)
