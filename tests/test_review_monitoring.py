"""Review of monitoring: bad input is one line and exit 2 (or a 400), statistics match scipy."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.errors import ConfigError
from modelyard.monitoring import DriftConfig
from worlds import fake_world, home_store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("MODELYARD_URL", raising=False)
    store = home_store(home)
    fake_world(store, model="acme-bot", endpoint="acme-support")
    store.close()
    return home


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "abc"])
def test_a_drift_threshold_that_is_not_a_finite_number_of_at_least_0_is_refused(
    value: str,
) -> None:
    with pytest.raises(ConfigError) as err:
        DriftConfig.parse([], [f"prompt_chars={value}"])
    assert err.value.context["field"] == "threshold"
    assert "prompt_chars" in str(err.value)


def test_a_p_value_threshold_above_1_is_refused_where_the_method_is_given() -> None:
    with pytest.raises(ConfigError, match="p-value"):
        DriftConfig.parse(["prompt_chars=ks"], ["prompt_chars=2"])
    assert DriftConfig.parse(["prompt_chars=psi"], ["prompt_chars=2"]).features["prompt_chars"]


def test_drift_with_a_nan_threshold_is_exit_2_not_a_store_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["monitor", "drift", "--endpoint", "acme-support", "--reference",
                 "previous:1h", "--threshold", "prompt_chars=nan"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--threshold" in err and "Traceback" not in err
