"""What `monitor` commands and the admin API's monitoring routes say: no threshold where no
drift method applied, an unknown endpoint for profiles, and API errors that name the
API's parameters rather than the CLI's flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.cli import main
from modelyard.monitoring import compute_drift


@pytest.fixture
def home(acme_home: Path) -> Path:
    return acme_home


@pytest.fixture
def admin(ops_admin: Any) -> Any:
    return ops_admin


# -- 4: no method, no threshold -----------------------------------------------------------------


def test_a_feature_no_method_applied_to_has_no_threshold_in_the_api(admin: Any) -> None:
    """Without traffic on either side no method applies (method "-"): the threshold said
    0.0, as if drift were tested against 0."""
    r = admin.get("/endpoints/acme-support/drift", params={"reference": "previous:1h"})
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert features and all(f["method"] == "-" for f in features)
    assert [f["threshold"] for f in features] == [None] * len(features)

    compute_drift(admin.store, "acme-support", reference="previous:1h")  # a stored run
    stored = admin.get("/drift", params={"endpoint": "acme-support"}).json()
    assert stored and all(f["method"] == "-" and f["threshold"] is None for f in stored)


def test_a_feature_no_method_applied_to_has_no_threshold_in_the_cli(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["monitor", "drift", "--endpoint", "acme-support", "--reference", "previous:1h"]
    assert main([*args, "--json"]) == 0
    features = json.loads(capsys.readouterr().out)["features"]
    assert features and all(f["method"] == "-" and f["threshold"] is None for f in features)
    assert main(args) == 0  # the table shows "-" (as it did)


def test_a_method_given_without_a_reference_keeps_the_method_s_threshold() -> None:
    from modelyard.monitoring import FeatureRule, compare

    got = compare("latency_ms", None, [1.0, 2.0], FeatureRule(method="psi"))
    assert (got["method"], got["threshold"], got["status"]) == ("psi", 0.1, "no_reference")
    assert compare("latency_ms", None, [1.0])["threshold"] is None


# -- 5: profiles of an endpoint that does not exist -----------------------------------------------


def test_profiles_of_an_endpoint_that_does_not_exist_is_an_error_naming_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--endpoint nope printed an empty table, exit 0."""
    code = main(["monitor", "profiles", "--endpoint", "nope"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no endpoint named 'nope'" in err and "modelyard endpoints list" in err
    assert "Traceback" not in err
    assert main(["monitor", "profiles", "--endpoint", "acme-support"]) == 0


def test_api_profiles_of_an_endpoint_that_does_not_exist_is_a_404(admin: Any) -> None:
    r = admin.get("/profiles", params={"endpoint": "nope"})
    assert r.status_code == 404, r.text
    assert "no endpoint named 'nope'" in r.json()["error"]["message"]
    assert admin.get("/profiles", params={"endpoint": "acme-support"}).status_code == 200


# -- 6: API errors name the API's parameters ------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"method": "nope=psi"}, "method"),
        ({"threshold": "prompt_chars=abc"}, "threshold"),
        ({"method": ["prompt_chars=ks", "prompt_chars=psi"]}, "method"),
        ({"method": "prompt_chars=ks", "threshold": "prompt_chars=2"}, "threshold"),
        ({"reference": "baseline:2026-12-02T00:00/2026-12-01T00:00"}, "reference"),
        ({"version": "globex-bot:1"}, "version"),
    ],
)
def test_api_drift_errors_name_the_parameter_not_the_cli_flag(
    admin: Any, params: dict[str, Any], param: str
) -> None:
    r = admin.get("/endpoints/acme-support/drift", params={"reference": "previous:1h", **params})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert "--" not in error["message"], error["message"]
    assert param in error["message"]


def test_cli_drift_errors_still_name_the_flags(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["monitor", "drift", "--endpoint", "acme-support", "--reference", "previous:1h"]
    assert main([*args, "--threshold", "prompt_chars=abc"]) == 2
    assert "invalid --threshold 'prompt_chars=abc'" in capsys.readouterr().err
    assert main([*args, "--method", "nope=psi"]) == 2
    assert "invalid --method 'nope=psi'" in capsys.readouterr().err
