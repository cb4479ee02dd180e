"""One duration grammar for every option: keys, rollouts, drift, alert rules and --since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clihelp import modelyard
from modelyard.durations import parse_duration, parse_since
from modelyard.errors import ConfigError
from modelyard.monitoring import AlertRules

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1.5h", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("90d", timedelta(days=90)),
        (" 12h ", timedelta(hours=12)),
        ("0.5s", timedelta(milliseconds=500)),
    ],
)
def test_durations_are_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["90", "soon", "5x", "1h30m", "-5m", "", "h", "1.h", "0"])
def test_a_bad_duration_names_the_field_the_value_and_examples(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, field="--bake")
    message = caught.value.message
    assert message.startswith(f"invalid duration {text!r} for --bake: ")
    assert "e.g. 30s, 5m, 1.5h, 7d" in message
    assert caught.value.context.get("field") == "--bake"


def test_zero_only_where_allowed() -> None:
    for zero in ("0", "0s", "0m", "0.0h"):
        assert parse_duration(zero, allow_zero=True) == timedelta(0)
    with pytest.raises(ConfigError, match="use 0 or a number and a unit"):
        parse_duration("-1s", allow_zero=True)
    for zero in ("0s", "0m", "0.0d"):  # the shape is right: the message says what is not
        with pytest.raises(ConfigError, match=rf"duration '{zero}' for --window is zero: give"):
            parse_duration(zero, field="--window")


def test_since_is_a_duration_back_or_an_iso_time() -> None:
    assert parse_since("12h", now=NOW) == NOW - timedelta(hours=12)
    assert parse_since("1.5h", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_since("2026-01-31T12:00Z") == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert parse_since("2026-01-31T14:00+02:00") == datetime(2026, 1, 31, 12, tzinfo=UTC)


def test_a_bad_since_names_its_flag() -> None:
    with pytest.raises(ConfigError, match=r"invalid --end 'last tuesday': use a date"):
        parse_since("last tuesday", field="--end")
    with pytest.raises(ConfigError, match=r"duration '0h' for --since is zero"):
        parse_since("0h")
    for edge in ("0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"):  # past the years in UTC
        with pytest.raises(ConfigError, match=r"--since '.*' is out of the range of dates"):
            parse_since(edge, allow_future=True)


def test_alert_rules_read_the_same_grammar() -> None:
    rule = {"name": "slow", "metric": "error_rate", "threshold": 0.1, "window": "1.5h", "for": "0"}
    rules = AlertRules.parse({"rules": [rule]})
    assert rules.rules[0].window_td == timedelta(minutes=90)
    assert rules.rules[0].for_td == timedelta(0)
    with pytest.raises(ConfigError, match=r"rules\.0\.window: invalid duration '5 min'"):
        AlertRules.parse(
            {"rules": [{"name": "x", "metric": "error_rate", "threshold": 1, "window": "5 min"}]}
        )
    with pytest.raises(ConfigError, match=r"invalid duration '2x' for drift\.every"):
        AlertRules.parse({"drift": {"every": "2x"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("999999d", "'999999d' reaches back before the year 1"),  # a timedelta, too far back
        ("99999999999999d", "'99999999999999d' for --since is longer than a date can reach"),
    ],
)
def test_a_since_too_far_back_is_one_clear_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        parse_since(text, now=NOW)
    assert caught.value.context["field"] == "--since"


def test_every_since_flag_refuses_a_duration_too_long_without_a_traceback(
    tmp_path: Path,
) -> None:
    assert modelyard("init", home=tmp_path).code == 0
    r = modelyard("audit", "export", "--since", "999999d", home=tmp_path)
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert "--since '999999d' reaches back before the year 1" in r.err
