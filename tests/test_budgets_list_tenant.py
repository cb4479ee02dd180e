"""`modelyard budgets list --tenant T` on a local store: a tenant that does not exist is
"no tenant named 'T'" (exit 1), as `keys list --tenant` and the admin API's 404 say, not
"no budgets for T" (exit 0), which read as "this tenant has no budgets"."""

from __future__ import annotations

import json
from pathlib import Path

from clihelp import modelyard


def test_budgets_list_of_a_tenant_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("tenants", "create", "acme", home=home).code == 0

    typo = modelyard("budgets", "list", "--tenant", "nosuch", home=home)
    assert typo.code == 1, typo.out
    assert "no tenant named 'nosuch'" in typo.err and "modelyard tenants list" in typo.err
    assert "no budgets" not in typo.out and "Traceback" not in typo.err
    as_json = modelyard("budgets", "list", "--tenant", "nosuch", "--json", home=home)
    assert as_json.code == 1 and as_json.out == ""

    empty = modelyard("budgets", "list", "--tenant", "acme", home=home)
    assert empty.code == 0 and "no budgets for acme" in empty.out  # a tenant with none yet
    rows = modelyard("budgets", "list", "--tenant", "acme", "--json", home=home)
    assert rows.code == 0 and json.loads(rows.out) == []
