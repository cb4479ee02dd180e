"""A running server's monitoring tick reads the rules file again each time: an edit takes
effect without a restart, and an edit with a mistake keeps the rules last loaded (as
Prometheus keeps its last good rules on a failed reload) instead of stopping every alert;
a file that never loaded is an error."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelyard.errors import ConfigError
from modelyard.monitoring import tick
from worlds import answered, fake_world, home_store

RULE = """
rules:
  - name: requests-seen
    metric: requests
    endpoint: support
    window: 1h
    comparison: ">"
    threshold: {threshold}
"""


def test_a_broken_edit_keeps_the_last_rules_and_a_fixed_one_takes_effect(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home.mkdir()
    rules = tmp_path / "alerts.yml"
    rules.write_text(RULE.format(threshold=1))
    with home_store(home) as store:
        fake_world(store)
        now = datetime.now(UTC)
        store.add_inference_records(answered(store, f"r{i}", 1, now) for i in range(3))

        fired = tick(store, rules=rules, home=home)
        assert [(t.alert.rule, t.alert.state) for t in fired.transitions] == [
            ("requests-seen", "firing")
        ]

        rules.write_text(RULE.format(threshold="three"))  # a typo, saved on the server
        with caplog.at_level(logging.ERROR, logger="modelyard.alerts"):
            kept = tick(store, rules=rules, home=home)
        assert kept.transitions == ()  # the old rule still holds: still firing, no change
        [state] = [a for a in store.list_alert_states() if a.rule == "requests-seen"]
        assert state.state == "firing" and state.last_evaluated is not None
        assert state.last_evaluated > fired.transitions[0].alert.last_evaluated
        [line] = [r.getMessage() for r in caplog.records if "until it is fixed" in r.getMessage()]
        assert f"{rules}: rules.0.threshold" in line
        assert "evaluating the rules loaded from it at" in line

        rules.write_text(RULE.format(threshold=10))  # fixed, and changed: in effect at once
        resolved = tick(store, rules=rules, home=home)
        assert [(t.alert.rule, t.alert.state) for t in resolved.transitions] == [
            ("requests-seen", "resolved")
        ]


def test_a_file_that_never_loaded_is_an_error(home: Path, tmp_path: Path) -> None:
    home.mkdir()
    rules = tmp_path / "never.yml"
    rules.write_text(RULE.format(threshold="three"))
    with home_store(home) as store:
        fake_world(store)
        with pytest.raises(ConfigError, match=r"rules\.0\.threshold"):
            tick(store, rules=rules, home=home)
