"""Journey 4 (the auditor): `registry card MODEL@champion` says when the champion's gates
were overridden, by whom and why, as `registry show` and the audit chain do."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from modelyard.cli import main
from worlds import fake_world, gate_metrics, home_store


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def test_card_of_a_champion_whose_gates_were_overridden_names_the_approver_and_reason(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store, model="acme-support", endpoint=None, versions=1)
        store.create_model_version(
            "acme-support", kind="adapter", artifact_digest="00" * 32, base_model="tiny",
            run_id=None, lineage={}, metrics=gate_metrics(False),
        )  # fmt: skip
        store.add_actor("alice", "approver")
    code, _, err = run(
        capsys,
        "--actor alice registry alias acme-support champion 2 --override-gates "
        "--reason 'INC-12 | hotfix,\nCAB-7 approved'",
    )
    assert code == 0, err
    code, card, err = run(capsys, "registry card acme-support@champion")
    assert code == 0, err
    assert "Overall: **at least one gate failed**." in card
    section = card.split("### Gate overrides\n", 1)[1].split("## Limitations", 1)[0]
    assert "**The gates were overridden 1 time(s)**" in section
    [row] = [line for line in section.splitlines() if "alice" in line]
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[1:] == [
        "alice",
        "failed: exact_match 0.2 is not >= 0.8",
        "take the protected alias acme-support@champion",
        "INC-12 \\| hotfix, CAB-7 approved",  # one row: no column break, no new line
    ]


def test_card_of_a_version_never_overridden_has_no_override_section(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store, model="acme-support", endpoint=None, versions=1, gates=None)
    code, card, err = run(capsys, "registry card acme-support:1")
    assert code == 0, err
    assert "_no quality gates were applied_" in card
    assert "No scores are recorded: judge it with `modelyard evaluate` before use." in card
    assert "Gate overrides" not in card
