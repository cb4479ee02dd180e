"""`--guard` reads as what it takes, "METRIC OP VALUE", in `rollout start --help` (and the
other commands that take guards), not as Python's type `<list[str]>`."""

from __future__ import annotations

from pathlib import Path

import pytest

from clihelp import modelyard


@pytest.mark.parametrize("command", [("rollout", "start"), ("endpoints", "policy")])
def test_the_guard_option_reads_as_metric_op_value(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    r = modelyard(*command, "--help", home=tmp_path)
    assert r.code == 0, r.err
    assert '--guard "METRIC OP VALUE"' in r.out
    assert "list[str]" not in r.out
