"""Done-when for monitoring: traffic through the server whose prompts shift, then the CLI.

Short English prompts, then longer German ones, through the real server (the
tenant keeps only hashes of its text). Drift is found on the prompt features
and not on the unchanged ones; records, export, metrics, report and tick work
on the same store.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from typer.testing import CliRunner

from clihelp import Result, modelyard
from modelyard.access import create_api_key
from modelyard.cli import app
from modelyard.monitoring import AlertRules, tick
from modelyard.serving import BackgroundServer, EchoEngine, create_app
from modelyard.store import Store

pytestmark = pytest.mark.slow  # a server and CLI runs: about half a minute

EN = [
    "printer",
    "invoice",
    "account",
    "password",
    "order",
    "refund",
    "delivery",
    "screen",
    "laptop",
    "login",
]
DE = [
    "Drucker",
    "Rechnung",
    "Überweisung",
    "Passwort",
    "Bestellung",
    "Rückerstattung",
    "Lieferung",
    "Bildschirm",
    "Gerät",
    "Anmeldung",
    "größer",
    "schön",
]


@dataclass
class Traffic:
    home: Path
    start: datetime
    mid: datetime
    end: datetime


def _ask(client: openai.OpenAI, words: list[str]) -> None:
    client.chat.completions.create(
        model="acme-support", messages=[{"role": "user", "content": " ".join(words)}]
    )


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELYARD_HOME", str(home))
    rng = random.Random(5)
    try:
        with Store.open(f"sqlite:///{home / 'store.db'}") as store:
            store.register_base_model("tiny", "/models/tiny", {})
            store.create_tenant("acme", storage_policy="hash")
            store.create_registered_model("acme-bot", tenant="acme")
            store.create_model_version(
                "acme-bot",
                kind="adapter",
                artifact_digest="00" * 32,
                base_model="tiny",
                run_id=None,
                lineage={"prompt_template": "chat-fallback"},
                metrics={},
            )
            store.create_endpoint("acme-support", model_ref="acme-bot:1", tenant="acme")
            key = create_api_key(store, "acme")[1]
            app = create_app(store, EchoEngine(), refresh_seconds=0.1)
            with (
                BackgroundServer(app) as server,
                openai.OpenAI(
                    base_url=server.base_url + "/v1", api_key=key, max_retries=0
                ) as client,
            ):
                start = datetime.now(UTC)
                for _ in range(60):
                    _ask(client, rng.choices(EN, k=rng.randint(4, 10)))
                time.sleep(0.05)
                mid = datetime.now(UTC)
                time.sleep(0.05)
                for _ in range(60):
                    _ask(client, rng.choices(DE, k=rng.randint(20, 35)))
                deadline = time.monotonic() + 10
                while len(store.query_records(limit=None)) < 120 and time.monotonic() < deadline:
                    time.sleep(0.05)
            yield Traffic(home, start, mid, datetime.now(UTC))
    finally:
        mp.undo()


def _cli(*args: str, home: Path) -> Result:
    """The same command in this process (Typer's runner): the subprocess runs above cover
    the real entry point and its error handling; these save the interpreter start-ups."""
    r = CliRunner().invoke(app, list(args), env={"MODELYARD_HOME": str(home), "COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, "")


def _window(t: Traffic) -> tuple[str, str, str]:
    """(reference, window, end): the English phase against the German one."""
    end = t.end + timedelta(seconds=1)
    window = math.floor((end - t.mid).total_seconds() * 1000) / 1000
    ref = f"baseline:{(t.start - timedelta(seconds=1)).isoformat()}/{t.mid.isoformat()}"
    return ref, f"{window}s", end.isoformat()


def _drift_args(t: Traffic, *extra: str) -> list[str]:
    ref, window, end = _window(t)
    return [
        "monitor",
        "drift",
        "--endpoint",
        "acme-support",
        "--reference",
        ref,
        "--window",
        window,
        "--end",
        end,
        *extra,
    ]


def test_shifted_prompts_drift_on_the_right_features_only(traffic: Traffic) -> None:
    r = modelyard(*_drift_args(traffic, "--json"), home=traffic.home)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    by = {f["feature"]: f for f in out["features"]}
    assert by["prompt_chars"]["n_reference"] == 60 and by["prompt_chars"]["n_current"] == 60
    for feature in ("prompt_chars", "prompt_tokens", "prompt_non_ascii"):
        assert by[feature]["drifted"] is True, by[feature]
    # 60 reference rows: Evidently's small-sample tests, KS, or chi-squared where the
    # reference has 5 or fewer distinct values (English prompts: no non-ASCII at all)
    assert by["prompt_chars"]["method"] == by["prompt_tokens"]["method"] == "ks"
    assert by["prompt_non_ascii"]["method"] == "chisquare"
    # The echo engine answers with the last line of the prompt template: unchanged.
    for feature in ("completion_tokens", "response_chars", "response_non_ascii", "prompt_digits"):
        assert by[feature]["drifted"] is False, by[feature]
    # no engine here counts unknown tokens: no verdict, not a false one
    assert by["unknown_token_rate"]["status"] == "not_enough_data"
    assert by["unknown_token_rate"]["drifted"] is None

    table = modelyard(*_drift_args(traffic, "--threshold", "prompt_chars=0.0"),
                      home=traffic.home, env={"COLUMNS": "80"})  # a usual terminal  # fmt: skip
    assert table.code == 0, table.err
    assert "drifted: prompt_tokens, prompt_non_ascii" in table.out
    # every feature's name and value whole at 80 columns, and which way each value drifts:
    # a p-value below its threshold, a distance above it
    rows = {line.split("│")[1].strip(): line for line in table.out.splitlines() if "│" in line}
    assert {"prompt_tokens", "prompt_non_ascii", "unknown_token_rate"} <= set(rows), table.out
    assert "< 0.05" in rows["prompt_tokens"] and "< 0 " in rows["prompt_chars"]
    assert "…" not in table.out and "60/60" in rows["prompt_tokens"]


def test_fail_on_drift_gates_ci_and_cron(traffic: Traffic) -> None:
    drifted = _cli(*_drift_args(traffic, "--fail-on-drift", "--json"), home=traffic.home)
    assert drifted.code == 1  # the report still prints, then the exit fails the job
    assert "prompt_chars" in json.loads(drifted.out)["drifted_features"]
    # the English phase against itself: nothing drifts, exit 0
    ref = f"baseline:{(traffic.start - timedelta(seconds=1)).isoformat()}/{traffic.mid.isoformat()}"
    window = f"{math.ceil((traffic.mid - traffic.start).total_seconds()) + 1}s"
    same = _cli(
        "monitor", "drift", "--endpoint", "acme-support", "--reference", ref,
        "--window", window, "--end", traffic.mid.isoformat(), "--fail-on-drift",
        home=traffic.home,
    )  # fmt: skip
    assert same.code == 0 and "no drift detected in" in same.out, same.out
    # a window before any traffic: nothing was compared, and it does not say "no drift"
    empty = _cli(
        "monitor", "drift", "--endpoint", "acme-support", "--reference", ref,
        "--window", "1m", "--end", (traffic.start - timedelta(hours=1)).isoformat(),
        home=traffic.home,
    )  # fmt: skip
    assert empty.code == 0, empty.out
    assert "nothing compared" in empty.out and "no drift" not in empty.out, empty.out
    flat = " ".join(empty.out.split())  # the console wraps the line
    assert "--min-samples 30 on each side" in flat and "Widen --window" in flat, flat


def test_records_are_hashed_but_features_and_exports_are_there(
    traffic: Traffic, tmp_path: Path
) -> None:
    r = _cli(
        "monitor",
        "records",
        "--endpoint",
        "acme-support",
        "--tenant",
        "acme",
        "--status",
        "ok",
        "--limit",
        "5",
        "--json",
        home=traffic.home,
    )
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert len(rows) == 5
    assert all(row["prompt"].startswith("sha256:") for row in rows)
    assert all(row["prompt_chars"] > 100 and row["prompt_non_ascii"] > 0 for row in rows)
    out = tmp_path / "records.parquet"
    r = _cli("monitor", "export", "--format", "parquet", "--out", str(out), home=traffic.home)
    assert r.code == 0, r.err
    table = pq.read_table(out)
    assert table.num_rows == 120
    assert {"prompt_chars", "latency_ms", "feedback_score", "version"} <= set(table.column_names)
    bad = modelyard("monitor", "records", "--status", "weird", home=traffic.home)
    assert bad.code == 2
    assert bad.err.strip().startswith("error: unknown record status 'weird'")


def test_bad_reference_is_one_clear_error(traffic: Traffic) -> None:
    r = modelyard(
        "monitor",
        "drift",
        "--endpoint",
        "acme-support",
        "--reference",
        "lastweek",
        home=traffic.home,
    )
    assert r.code == 2
    assert r.err.strip().startswith("error: invalid --reference 'lastweek'")
    assert "Traceback" not in r.err
    r = modelyard("monitor", "drift", "--endpoint", "acme-support", home=traffic.home)
    assert r.code == 2
    assert "records no evaluation dataset" in r.err
    r = modelyard("monitor", "drift", "--endpoint", "acme-support", "--min-samples", "0",
                  home=traffic.home)  # fmt: skip
    assert r.code == 2 and "Invalid value for '--min-samples'" in r.err  # was "min_samples"
    r = modelyard("monitor", "drift", "--endpoint", "acme-support", "--reference", "previous:24",
                  home=traffic.home)  # fmt: skip
    assert r.code == 2 and "invalid duration '24' for --reference:" in r.err  # "for reference"


def test_tick_fires_a_drift_alert_and_metrics_and_report_show_it(
    traffic: Traffic, tmp_path: Path
) -> None:
    ref, _, end = _window(traffic)
    now = datetime.fromisoformat(end) + timedelta(seconds=0.5)  # not the CLI drift's moment
    window = f"{(now - traffic.mid).total_seconds():.3f}s"
    rules = AlertRules.parse(
        {
            "drift": {"reference": ref, "window": window, "every": "0.1s"},
            "rules": [
                {
                    "name": "prompts-drifted",
                    "metric": "drifted_features",
                    "window": "1h",
                    "comparison": ">=",
                    "threshold": 2,
                    "severity": "warning",
                }
            ],
        }
    )
    with Store.open(f"sqlite:///{traffic.home / 'store.db'}") as store:
        report = tick(store, rules=rules, now=now, home=traffic.home)
    assert report.drift[0].endpoint == "acme-support"
    assert "prompt_chars" in report.drift[0].drifted_features
    assert [(t.alert.rule, t.alert.state) for t in report.transitions] == [
        ("prompts-drifted", "firing")
    ]
    # the CLI's tick (no rules file in this home): profiles only, nothing fires or resolves
    r = _cli("monitor", "tick", "--json", home=traffic.home)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["profiles"]["rows"] >= 2 and summary["transitions"] == []
    profiles = json.loads(_cli("monitor", "profiles", "--json", home=traffic.home).out)
    assert sum(p["requests"] for p in profiles) == 120
    r = _cli("monitor", "alerts", "--state", "firing", "--json", home=traffic.home)
    assert [a["rule"] for a in json.loads(r.out)] == ["prompts-drifted"]

    metrics = _cli("monitor", "metrics", home=traffic.home)
    assert metrics.code == 0, metrics.err
    assert 'modelyard_drift_detected{endpoint="acme-support",feature="prompt_chars"' in metrics.out
    assert 'modelyard_alert_firing{endpoint="acme-support",rule="prompts-drifted"' in metrics.out
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics.out,
            text=True,
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    out = tmp_path / "report.html"
    r = _cli(
        "monitor", "report", "--endpoint", "acme-support", "--out", str(out), home=traffic.home
    )
    assert r.code == 0, r.err
    page = out.read_text()
    # four time charts with data (no prices, no feedback here: those say "no data") and a
    # histogram per feature with a verdict (all but unknown_token_rate)
    assert page.count("<svg") == 4 + 9
    assert page.count('<p class="empty">no data</p>') == 2
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Requests per hour, per version" in page and "acme-bot:1" in page
    assert '<figure class="drifted"><figcaption>prompt_chars: ks' in page
    assert "endpoint.created" in page  # the version/rollout timeline from the audit chain


def test_a_drift_run_made_by_hand_does_not_replace_the_ticks_for_alerts_and_gauges(
    traffic: Traffic,
) -> None:
    """An SRE's own `monitor drift` (another reference, to look around) is stored, but the
    alerts, the gauges and the tick's schedule keep reading the tick's last run: it used to
    resolve a firing drift alert and make the tick skip its own next run."""
    ref, _, end = _window(traffic)
    now = datetime.fromisoformat(end) + timedelta(seconds=0.6)
    window = f"{(now - traffic.mid).total_seconds():.3f}s"

    def rules(every: str) -> AlertRules:
        return AlertRules.parse(
            {
                "drift": {"reference": ref, "window": window, "every": every},
                "rules": [{"name": "drifted-by-hand", "metric": "drifted_features",
                           "window": "1h", "comparison": ">=", "threshold": 2}],
            }
        )  # fmt: skip

    with Store.open(f"sqlite:///{traffic.home / 'store.db'}") as store:
        fired = tick(store, rules=rules("0.1s"), now=now, home=traffic.home)
        assert ("drifted-by-hand", "firing") in [
            (t.alert.rule, t.alert.state) for t in fired.transitions
        ]
        ticks_run = store.list_drift_results(endpoint="acme-support", latest=True)[0].run_id
        # by hand: the German phase against itself, no drift, stored a moment later
        same = f"baseline:{traffic.mid.isoformat()}/{now.isoformat()}"
        by_hand = ["--reference", same, "--window", window, "--end", now.isoformat()]
        r = _cli("monitor", "drift", "--endpoint", "acme-support", *by_hand, "--json",
                 home=traffic.home)  # fmt: skip
        assert r.code == 0, r.out
        made = json.loads(r.out)
        assert made["drifted_features"] == []
        later = tick(store, rules=rules("1h"), now=now + timedelta(seconds=1), home=traffic.home)
        assert later.drift == () and later.transitions == ()  # nothing ran, nothing resolved
        latest = store.list_drift_results(endpoint="acme-support", latest=True)
        assert {r.run_id for r in latest} == {ticks_run}
        assert any(r.drifted for r in latest)
        shown = {(e, f): d for e, _, f, _, _, d in store.latest_drift_values()}
        assert shown[("acme-support", "prompt_chars")] is True
        kinds = {r.run_id: r.scheduled for r in store.list_drift_results(endpoint="acme-support")}
        assert (kinds[made["run_id"]], kinds[ticks_run]) == (False, True)  # by hand: kept
