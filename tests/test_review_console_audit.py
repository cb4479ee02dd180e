"""Review of the console, the audit chain's commands and ``modelyard tokens``/``actors``:
bad input is a one-line error naming what was wrong, never a traceback or a 500, and a
user's mistake never changes what the store accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from clihelp import modelyard


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    return home


# -- audit verify --head --------------------------------------------------------------------


def test_a_made_up_head_from_a_non_admin_is_reported_and_not_recorded(home: Path) -> None:
    """As the admin API does: a break only the caller's --head shows does not stop every
    audited change unless an admin passed it (a typo, or any developer, froze the store)."""
    for head in ("1:" + "a" * 64, "99:" + "b" * 64):
        made_up = modelyard("--actor", "dev", "audit", "verify", "--head", head, home=home)
        assert made_up.code == 1
        assert "audit chain broken" in _one_error_line(made_up.err)
    still = modelyard("--actor", "dev", "tenants", "create", "globex", home=home)
    assert still.code == 0, still.err
    assert modelyard("audit", "verify", home=home).code == 0


def test_a_head_that_matches_still_passes_for_a_non_admin(home: Path) -> None:
    head = modelyard("audit", "head", home=home).out.strip()
    ok = modelyard("--actor", "dev", "audit", "verify", "--head", head, home=home)
    assert ok.code == 0 and f"matches head {head}" in ok.out, ok.err
