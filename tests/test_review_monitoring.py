"""Review of monitoring: bad input is one line and exit 2 (or a 400), statistics match scipy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from modelyard.cli import main
from modelyard.errors import ConfigError
from modelyard.monitoring import (
    AlertRules,
    DriftConfig,
    FeatureRule,
    apply_retention,
    compare,
    evaluate_rules,
    export_records,
    text_features,
)
from modelyard.monitoring._stats import Pair, SortedValues, ks_pvalue
from modelyard.store import Store
from worlds import fake_world


@pytest.fixture
def home(acme_home: Path) -> Path:
    return acme_home


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


@pytest.mark.parametrize(
    ("n", "m", "shift"), [(200, 300, 0.2), (500, 500, 0.1), (12_000, 11_000, 0.02)]
)
def test_the_ks_p_value_is_scipy_s(n: int, m: int, shift: float) -> None:
    """200 against 300 values gave 0.1418 where scipy (and so Evidently) says 0.1351: an
    asymptotic formula where scipy computes the exact p-value."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
    got = ks_pvalue(Pair(SortedValues.of(a), SortedValues.of(b)))
    assert got == pytest.approx(stats.ks_2samp(a, b).pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("where", ["dir", "under-a-file"])
def test_export_to_a_directory_or_under_a_file_is_one_line_and_exit_2(
    home: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("keep")
    out = tmp_path if where == "dir" else tmp_path / "afile" / "records.jsonl"
    code = main(["monitor", "export", "--format", "jsonl", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--out" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_an_alert_rule_threshold_that_is_not_finite_is_refused_when_loaded(value: float) -> None:
    """nan compares false with everything: the rule loaded and could never fire."""
    with pytest.raises(ConfigError, match="threshold"):
        AlertRules.parse({"rules": [{"name": "x", "metric": "error_rate", "threshold": value}]})


def test_a_rule_summary_with_a_number_format_and_no_data_does_not_stop_the_evaluation(
    store: Store,
) -> None:
    """``{value:.2f}`` with no data (value None) raised a TypeError out of evaluate_rules."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    rules = AlertRules.parse({"rules": [
        {"name": "slow", "metric": "p95_latency_ms", "threshold": 1, "summary": "p95 {value:.2f}"},
        {"name": "quiet", "metric": "requests", "comparison": "<", "threshold": 1,
         "summary": "only {value:.0f} requests on {endpoint}"},
    ]})  # fmt: skip
    evaluate_rules(store, rules, datetime.now(UTC))
    states = {a.rule: a for a in store.list_alert_states()}
    assert states["slow"].summary == "p95 {value:.2f}" and states["slow"].state == "inactive"
    assert states["quiet"].summary == "only 0 requests on acme-support"
    assert states["quiet"].state == "firing"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout_s", 1e9),
        ("timeout_s", float("inf")),
        ("backoff_s", 1e9),
        ("backoff_s", float("nan")),
    ],
)
def test_a_webhook_timeout_or_backoff_that_would_hold_the_tick_for_days_is_refused(
    key: str, value: float
) -> None:
    """The tick waits for every delivery: backoff_s 1e9 slept 31 years after a failure."""
    hook = {"url": "http://127.0.0.1:9/hook", key: value}
    with pytest.raises(ConfigError, match=key):
        AlertRules.parse({"notify": {"webhook": hook}, "rules": []})


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("baseline:2999-01-01/2999-01-02", "future"),
        ("baseline:1900-01-01/1900-01-02", "before 1970"),
        ("baseline:2026-12-01T06:00/2026-12-01T00:00", "before its end"),
    ],
)
def test_a_baseline_no_record_can_be_in_is_one_line_and_exit_2(
    home: Path, reference: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A baseline in 2999 or in 1900 said 'not enough data' for every feature, exit 0."""
    code = main(["monitor", "drift", "--endpoint", "acme-support", "--reference", reference])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--reference" in err and why in err and len(err.strip().splitlines()) == 1


def test_drift_version_naming_another_model_is_refused_not_read_as_the_endpoint_s(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--version other:1 compared acme-bot:1, as if the model name had not been given."""
    args = ["monitor", "drift", "--endpoint", "acme-support", "--reference", "previous:1h"]
    assert main([*args, "--version", "other:1"]) == 2
    err = capsys.readouterr().err
    assert "--version" in err and "acme-bot" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--version", "acme-bot:1", "--json"]) == 0
    assert '"version": "acme-bot:1"' in capsys.readouterr().out


def test_wasserstein_against_a_constant_reference_is_finite_as_evidently_s() -> None:
    """A constant reference gave inf (``monitor drift --json`` printed Infinity, which is not
    JSON); Evidently divides by max(std, 0.001)."""
    got = compare("prompt_tokens", [10.0] * 50, [12.0] * 50, FeatureRule("wasserstein"))
    assert got["value"] == pytest.approx(
        stats.wasserstein_distance([10.0] * 50, [12.0] * 50) / 0.001
    )
    assert got["drifted"] is True
    same = compare("prompt_tokens", [10.0] * 50, [10.0] * 50, FeatureRule("wasserstein"))
    assert same["value"] == 0 and same["drifted"] is False


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_reads_records_a_page_at_a_time_and_writes_each_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The export read every record as a Python dict at once (limit=None): a year of
    traffic had to fit in memory. Pages of 3 here, with 5 records made at one time."""
    import pyarrow.parquet as pq

    from modelyard.monitoring import _export
    from modelyard.store import NewInferenceRecord

    monkeypatch.setattr(_export, "PAGE", 3)
    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    t0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    times = [t0, t0 + timedelta(seconds=1)] + [t0 + timedelta(seconds=2)] * 5
    times += [t0 + timedelta(seconds=3 + i) for i in range(4)]
    records = [
        NewInferenceRecord(
            id=f"rec-{i:02d}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=10.0, status="ok", http_status=200, tenant_id=tid, version_id=vid,
            prompt_tokens=1, completion_tokens=1, created_at=at,
        )
        for i, at in enumerate(times)
    ]  # fmt: skip
    store.add_inference_records(records)
    store.add_feedback("rec-10", tenant="acme", score=1.0, label="late label")
    calls: list[dict[str, Any]] = []
    query = store.query_records

    def spy(**kw: Any) -> list[dict[str, Any]]:
        calls.append(kw)
        return query(**kw)

    monkeypatch.setattr(store, "query_records", spy)
    out = tmp_path / f"records.{fmt}"
    assert export_records(store, out, format=fmt) == len(times)
    assert all(c["limit"] == 3 or c.get("until") is not None for c in calls), calls
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == [r.id for r in records]
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)
    assert [r["feedback_label"] for r in rows if r["id"] == "rec-10"] == ["late label"]


@pytest.mark.parametrize("command", ["records", "export"])
def test_records_and_export_of_an_endpoint_that_never_existed_say_so(
    home: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--endpoint acme-suport printed '0 record(s)' (or wrote an empty file), exit 0, where
    --tenant of a missing tenant is an error."""
    out = tmp_path / "records.jsonl"
    extra = ["--out", str(out)] if command == "export" else []
    code = main(["monitor", command, "--endpoint", "acme-suport", *extra])
    err = capsys.readouterr().err
    assert code != 0 and "acme-suport" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["monitor", command, "--endpoint", "acme-support", *extra]) == 0


def test_the_report_s_requests_per_hour_are_0_in_an_hour_without_requests() -> None:
    """Hours without records had no point: the line went straight from 100 at 10:00 to 100
    at 20:00, as if traffic had never stopped."""
    from types import SimpleNamespace

    from modelyard.monitoring._report import _by_version, _overall

    t0 = datetime(2026, 12, 1, 10, tzinfo=UTC)
    profiles: Any = [
        SimpleNamespace(version="bot:1", start=t0, requests=100, tokens_in=5),
        SimpleNamespace(version="bot:1", start=t0 + timedelta(hours=10), requests=100, tokens_in=5),
        SimpleNamespace(version="bot:2", start=t0 + timedelta(hours=9), requests=7, tokens_in=5),
    ]
    series = _by_version(profiles, lambda ps: float(sum(p.requests for p in ps)), zero=True)
    assert [v for _, v in series["bot:1"]] == [100.0] + [0.0] * 9 + [100.0]
    assert [v for _, v in series["bot:2"]] == [0.0] * 9 + [7.0, 0.0]
    tokens = _overall(profiles, {"in": lambda ps: float(sum(p.tokens_in for p in ps))}, zero=True)
    assert len(tokens["in"]) == 11 and tokens["in"][5][1] == 0.0


@pytest.mark.parametrize(
    ("methods", "thresholds"),
    [(["prompt_chars=ks", "prompt_chars=psi"], []), ([], ["latency_ms=0.1", "latency_ms=0.2"])],
)
def test_a_feature_given_two_methods_or_thresholds_is_refused(
    methods: list[str], thresholds: list[str]
) -> None:
    """The last one won and the first was dropped without a word."""
    with pytest.raises(ConfigError, match="twice"):
        DriftConfig.parse(methods, thresholds)


@pytest.mark.parametrize("label", ["endpoint", "severity"])
def test_a_rule_label_the_evaluation_sets_is_refused_not_overwritten(label: str) -> None:
    """labels: {severity: page} was replaced by the rule's severity without a word."""
    rule = {"name": "x", "metric": "error_rate", "threshold": 0.1, "labels": {label: "mine"}}
    with pytest.raises(ConfigError, match=f"labels.*{label}"):
        AlertRules.parse({"rules": [rule]})


@pytest.fixture
def admin(ops_admin: Any) -> Any:
    return ops_admin


@pytest.mark.parametrize("path", ["/profiles", "/feedback", "/feedback/summary"])
def test_admin_since_in_the_future_is_a_400_naming_since(admin: Any, path: str) -> None:
    """since=2999-01-01 answered [] (200), where the CLI's --since says it is in the future."""
    r = admin.get(path, params={"since": "2999-01-01T00:00:00"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "since" and "future" in r.json()["error"]["message"]
    assert admin.get(path, params={"since": "2026-01-01T00:00:00"}).status_code == 200


def test_semantic_drift_embeds_a_sample_of_the_prompts_not_every_one(store: Store) -> None:
    """Every prompt of both windows went through MiniLM, to use 500 a side in the MMD test
    (an hour of busy traffic took hours on a CPU); n counts every usable prompt."""
    from modelyard.monitoring import compute_drift
    from modelyard.monitoring._semantic import DIMENSIONS
    from modelyard.store import NewInferenceRecord

    class Counting:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def embed(self, texts: list[str]) -> np.ndarray:
            self.sizes.append(len(texts))
            rng = np.random.default_rng(len(self.sizes))
            v = rng.normal(size=(len(texts), DIMENSIONS)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    now = datetime.now(UTC)
    items = []
    for i in range(1400):
        at = now - timedelta(minutes=90 if i % 2 else 30, seconds=i)
        rec = NewInferenceRecord(
            id=f"p{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=10.0, status="ok", http_status=200, tenant_id=tid, version_id=vid,
            prompt=f"prompt {i}", prompt_tokens=2, completion_tokens=1, created_at=at,
        )  # fmt: skip
        items.append((rec, text_features(f"prompt {i}", "ok")))
    store.add_monitored_records(items)
    embedder = Counting()
    report = compute_drift(
        store, "acme-support", reference="previous:1h", window=timedelta(hours=1),
        semantic=True, embedder=embedder, save=False,  # type: ignore[arg-type]
    )  # fmt: skip
    assert max(embedder.sizes) <= 500 and sum(embedder.sizes) <= 1000
    row = next(r for r in report.results if r.feature == "prompt_embedding")
    assert (row.n_reference, row.n_current) == (700, 700) and row.value is not None


def test_budget_alerts_of_one_rule_are_distinct_series_in_the_metrics(store: Store) -> None:
    """modelyard_alert_firing had only rule, endpoint and severity: every budget of a
    budget_used rule was the series {rule, endpoint="", severity}, repeated in one scrape."""
    from prometheus_client import CollectorRegistry, generate_latest

    from modelyard.monitoring import MonitoringCollector

    fake_world(store, model="acme-bot", endpoint="acme-support")
    store.set_budget("acme", "day", 2.0)
    store.set_budget("acme", "month", 10.0)
    rules = AlertRules.parse(
        {"rules": [{"name": "spend", "metric": "budget_used", "comparison": ">=", "threshold": 0}]}
    )
    evaluate_rules(store, rules, datetime.now(UTC))
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(store))
    lines = [
        line.rsplit(" ", 1)[0]
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("modelyard_alert_firing{")
    ]
    assert len(lines) == 2 and len(set(lines)) == 2, lines
    assert any('scope="acme/*/day"' in line for line in lines)


@pytest.mark.parametrize(
    "reference", ["baseline:2026-12-01T06:00/2026-12-01T00:00", "baseline:nonsense", "bogus"]
)
def test_a_bad_drift_reference_in_a_rules_file_names_the_file_and_the_key(
    tmp_path: Path, reference: str
) -> None:
    """It said "invalid --reference ...", an option the user never gave, and no file."""
    path = tmp_path / "alerts.yml"
    path.write_text(f"drift:\n  reference: {reference}\nrules: []\n")
    with pytest.raises(ConfigError) as err:
        AlertRules.load(path)
    assert str(err.value).startswith(f"{path}: drift.reference: ")
    assert "--reference" not in str(err.value)
    assert err.value.context["field"] == "drift.reference"


@pytest.mark.parametrize("url", ["http://[::1", "http://", "https:///path", "ftp://host/x"])
def test_a_webhook_url_httpx_cannot_use_is_refused_when_the_rules_load(url: str) -> None:
    """http://[::1 loaded, then httpx.InvalidURL raised out of evaluate_rules at the first
    alert to notify (after its state was saved: the page was lost, later rules unevaluated)."""
    with pytest.raises(ConfigError, match="url"):
        AlertRules.parse({"notify": {"webhook": {"url": url}}, "rules": []})


def test_a_retention_longer_than_the_calendar_does_not_break_the_tick(store: Store) -> None:
    """retention set --days 1000000 was accepted, then every tick (and the controller's
    monitoring loop) raised OverflowError computing now - 1,000,000 days."""
    fake_world(store, model="acme-bot", endpoint="acme-support")
    store.set_retention("acme", 1_000_000)
    assert apply_retention(store, datetime.now(UTC)) == {}


def test_retention_set_beyond_100_years_is_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["monitor", "retention", "set", "--tenant", "acme", "--days", "99999999999"])
    err = capsys.readouterr().err
    assert code == 2 and "--days" in err and "Traceback" not in err
    assert main(["monitor", "retention", "set", "--tenant", "acme", "--days", "36500"]) == 0


def test_an_online_judging_lookback_beyond_a_year_is_refused_when_the_rules_load(
    store: Store,
) -> None:
    """lookback: 1000000d loaded, then every tick raised OverflowError (now - lookback)."""
    entry = {"judge": "quality", "endpoint": "acme-support", "lookback": "1000000d"}
    with pytest.raises(ConfigError, match=r"judging\.0\.lookback.*at most 366 days"):
        AlertRules.parse({"judging": [entry], "rules": []})
    assert AlertRules.parse({"judging": [entry | {"lookback": "366d"}], "rules": []}).judging


def test_a_drift_end_before_1970_names_end_not_the_window(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--end 1960-01-01 said 'the window of 0.0416667 days reaches back before 1970 ...; use
    a shorter one': no window is short enough, the --end is the mistake."""
    code = main(["monitor", "drift", "--endpoint", "acme-support", "--reference",
                 "previous:1h", "--end", "1960-01-01"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--end" in err and "shorter" not in err, err


def test_a_firing_alert_whose_webhook_delivery_failed_is_sent_again_until_it_gets_through(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook down when the alert fired lost the page for good: the state was saved as
    firing, and only changes of state were ever notified."""
    from modelyard.monitoring import _notify
    from modelyard.store import NewInferenceRecord

    answers = [False, False, True]
    posted: list[str] = []

    def post(config: Any, payload: Any) -> _notify.Delivery:
        posted.append(payload["status"])
        ok = answers.pop(0)
        return _notify.Delivery(ok, 1, None if ok else "ConnectError: down")

    monkeypatch.setattr(_notify, "post_webhook", post)
    fake_world(store, model="acme-bot", endpoint="acme-support")
    tid = store.get_tenant("acme").id
    vid = store.get_model_version("acme-bot", 1).id
    now = datetime.now(UTC)
    store.add_inference_records([
        NewInferenceRecord(
            id=f"e{i}", endpoint_name="acme-support", route="chat.completions",
            latency_ms=10.0, status="error", http_status=503, tenant_id=tid, version_id=vid,
            prompt_tokens=1, completion_tokens=0, created_at=now - timedelta(seconds=i + 1),
        )
        for i in range(3)
    ])  # fmt: skip
    rules = AlertRules.parse({
        "notify": {"webhook": {"url": "http://127.0.0.1:9/hook"}},
        "rules": [{"name": "errors", "metric": "error_rate", "threshold": 0.5, "window": "1h"}],
    })  # fmt: skip
    for _ in range(4):
        evaluate_rules(store, rules, now)
    assert posted == ["firing"] * 3
    notes = store.list_alert_notifications(limit=20)
    assert [n.ok for n in notes if n.target != "log"] == [True, False, False]
    assert sum(1 for n in notes if n.target == "log") == 1
