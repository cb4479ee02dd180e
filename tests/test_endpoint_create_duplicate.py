"""A second `modelyard endpoints create` of a name in use says what to do next: look at the
endpoint (`endpoints show`), move its traffic (`endpoints set-traffic`, `rollout start`), or
pick another name; one error line, exit 1, and the endpoint is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

from clihelp import modelyard
from modelyard.store import Store
from worlds import fake_world


def test_a_duplicate_endpoint_says_what_to_do_next(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        fake_world(store, versions=2, template=None)  # endpoint 'support' on bot:1
    dup = modelyard(
        "endpoints", "create", "support", "--model", "bot:2", "--tenant", "acme", home=home
    )
    assert dup.code == 1, dup.out
    lines = [line for line in dup.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in dup.err, dup.err
    assert lines[0].startswith("error: endpoint 'support' exists already")
    assert "`modelyard endpoints show support`" in lines[0]
    assert "`modelyard endpoints set-traffic support VERSION=PERCENT`" in lines[0]
    shown = modelyard("endpoints", "show", "support", "--json", home=home)
    assert [r["version"] for r in json.loads(shown.out)["routes"]] == [1]  # left as it was
