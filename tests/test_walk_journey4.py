"""Journey 4 (the SRE and the compliance officer), walked as the docs tell it.

Each test here is a defect a user met following docs/monitoring.md, docs/audit.md or
docs/operations.md, pinned at what the user relies on: exit codes and the line printed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from clihelp import modelyard


def _sql(home: Path, statement: str) -> None:
    with sqlite3.connect(home / "store.db") as db:
        db.execute(statement)


def test_verify_after_the_audit_tables_were_restored_says_to_acknowledge_not_restore(
    tmp_path: Path,
) -> None:
    """docs/audit.md: restore the events from a backup, then acknowledge the recorded break.

    A compliance officer who did restore them ran `audit verify` again and was told, as
    before, to "restore the audit tables from a backup": the same advice in a loop. The
    chain verifies now; only the record of the break is left, and the line says so and
    names the one step that ends it.
    """
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0  # event 2
    _sql(home, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    found = modelyard("audit", "verify", home=home)
    assert found.code == 1 and "broken at seq 2" in found.err
    assert "restore the audit tables from a backup" in found.err  # the chain shows it: right
    _sql(
        home,
        "UPDATE audit_events SET actor = (SELECT actor FROM audit_events WHERE seq = 1) "
        "WHERE seq = 2",
    )  # restored as it was

    again = modelyard("audit", "verify", home=home)
    assert again.code == 1  # the break stays on record until acknowledged (documented)
    assert "broken at seq 2" in again.err
    assert "restore the audit tables from a backup" not in again.err
    assert "events themselves verify now" in again.err
    assert "modelyard audit acknowledge --reason" in again.err

    ack = modelyard("audit", "acknowledge", "--reason", "restored event 2", home=home)
    assert ack.code == 0, ack.err
    assert modelyard("audit", "verify", home=home).code == 0
    assert modelyard("tenants", "create", "initech", home=home).code == 0
