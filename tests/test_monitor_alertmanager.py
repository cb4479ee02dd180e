"""modelyard's alerts in a real Prometheus Alertmanager (``notify.alertmanager``), through
``modelyard monitor tick``: a firing alert is active there with its labels and annotations
and reaches Alertmanager's receiver; a resolved one is resolved there; an Alertmanager that
is down costs one log line and nothing else; a bad section is refused, naming the field."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alertmanagerserver import alertmanager_server
from clihelp import modelyard
from modelyard.cli import main
from worlds import answered, fake_world, home_store

RULES = """
rules:
  - name: requests-seen
    metric: requests
    endpoint: support
    window: 1h
    comparison: ">"
    threshold: 1
    severity: warning
    labels: {team: support}
    annotations: {runbook_url: "https://runbooks.example/{endpoint}/requests"}
"""
TOKENS = """
  - name: tokens-seen
    metric: requests
    endpoint: support
    window: 1h
    comparison: ">="
    threshold: 3
    severity: critical
"""


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def tick(home: Path, rules: Path) -> tuple[int, str, str]:
    """``modelyard monitor tick --rules RULES`` as a command: its log is on its stderr."""
    r = modelyard("monitor", "tick", "--rules", str(rules), home=home)
    return r.code, r.out, r.err


def world(home: Path) -> None:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store)
        now = datetime.now(UTC)
        store.add_inference_records(answered(store, f"r{i}", 1, now) for i in range(3))


def notify(*urls: str, interval: str = "15s") -> str:
    listed = ", ".join(urls)
    return (
        f"notify:\n  alertmanager:\n    url: [{listed}]\n    timeout_s: 2\n"
        f"    evaluation_interval: {interval}\n"
    )


def named(alerts: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"] == name]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_firing_alert_is_active_in_alertmanager_reaches_its_receiver_and_resolves(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    world(home)
    with alertmanager_server(tmp_path) as am:
        rules = tmp_path / "alerts.yml"
        rules.write_text(notify(am.url) + RULES)
        code, out, err = run(capsys, f"monitor tick --rules {rules}")
        assert code == 0, err
        assert "alert requests-seen [support]: inactive → firing" in out
        assert "alertmanager" not in err  # nothing went wrong

        [alert] = am.alerts()
        assert alert["labels"] == {
            "alertname": "requests-seen",
            "endpoint": "support",
            "severity": "warning",
            "team": "support",
        }
        assert alert["annotations"]["summary"].startswith("requests over 1h is 3 (> 1)")
        assert alert["annotations"]["description"] == (
            "modelyard rule requests-seen: requests over 1h > 1"
        )
        assert alert["annotations"]["value"] == "3"
        # the rule's own annotations, filled in as its summary is
        assert alert["annotations"]["runbook_url"] == "https://runbooks.example/support/requests"
        assert alert["status"]["state"] == "active"
        # valid for 4 x the longer of the evaluation interval (15 s here) and Prometheus's
        # resend delay (1 min) from the evaluation that sent it, as Prometheus does
        ends = at(alert["endsAt"])
        assert (ends - at(alert["startsAt"])).total_seconds() == 240

        body = am.receiver.wait_for(lambda b: b["status"] == "firing")
        [got] = body["alerts"]
        assert got["labels"]["alertname"] == "requests-seen"
        assert got["labels"]["endpoint"] == "support"
        assert got["annotations"]["summary"].startswith("requests over 1h is 3 (> 1)")

        # still firing: sent again, valid for longer (Alertmanager keeps it active)
        code, out, err = run(capsys, f"monitor tick --rules {rules}")
        assert code == 0, err
        assert "firing" not in out  # no change of state
        [again] = am.alerts()
        assert again["status"]["state"] == "active"
        assert at(again["endsAt"]) > ends
        assert again["startsAt"] == alert["startsAt"]

        rules.write_text(notify(am.url) + RULES.replace("threshold: 1", "threshold: 5"))
        code, out, err = run(capsys, f"monitor tick --rules {rules}")
        assert code == 0, err
        assert "alert requests-seen [support]: firing → resolved" in out
        assert am.alerts() == []  # resolved: no longer among the alerts it holds
        body = am.receiver.wait_for(lambda b: b["status"] == "resolved")
        [gone] = body["alerts"]
        assert gone["labels"]["alertname"] == "requests-seen"
        assert gone["status"] == "resolved"
        assert gone["annotations"]["summary"].startswith("requests over 1h is 3 (not > 5)")


def test_alertmanager_down_costs_one_log_line_and_the_next_evaluation_delivers(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from alertmanagerserver import Receiver

    world(home)
    hook = Receiver()  # modelyard's own webhook, the other channel
    try:
        with alertmanager_server(tmp_path) as am:
            am.stop()
            rules = tmp_path / "alerts.yml"
            section = notify(am.url) + f"  webhook:\n    url: {hook.url}\n"
            rules.write_text(section + RULES + TOKENS)
            code, out, err = tick(home, rules)
            assert code == 0, err
            assert "alert requests-seen [support]: inactive → firing" in out
            assert "alert tokens-seen [support]: inactive → firing" in out
            assert sorted(b["alert"]["rule"] for b in hook.bodies) == [
                "requests-seen",
                "tokens-seen",
            ]  # the webhook got both, each with its rule's annotations
            runbooks = {b["alert"]["rule"]: b["alert"]["annotations"] for b in hook.bodies}
            assert runbooks == {
                "requests-seen": {"runbook_url": "https://runbooks.example/support/requests"},
                "tokens-seen": {},
            }
            assert "alert requests-seen firing" in err  # and the log
            down = [line for line in err.splitlines() if "alertmanager" in line]
            assert len(down) == 1, err
            assert f"alertmanager {am.url}/api/v2/alerts is down" in down[0]
            assert "2 alert(s) not sent" in down[0]

            am.start()
            code, out, err = tick(home, rules)
            assert code == 0, err
            assert "alertmanager" not in err
            active = am.alerts()
            assert sorted(a["labels"]["alertname"] for a in active) == [
                "requests-seen",
                "tokens-seen",
            ]
            assert all(a["status"]["state"] == "active" for a in active)
            assert len(hook.bodies) == 2  # the webhook was told once, not again
    finally:
        hook.close()


def test_every_alertmanager_of_an_ha_pair_gets_the_alerts(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    world(home)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with alertmanager_server(tmp_path / "a") as one, alertmanager_server(tmp_path / "b") as two:
        rules = tmp_path / "alerts.yml"
        rules.write_text(notify(one.url, two.url + "/") + RULES)
        code, _, err = run(capsys, f"monitor tick --rules {rules}")
        assert code == 0, err
        for am in (one, two):
            [alert] = am.alerts()
            assert alert["labels"]["alertname"] == "requests-seen"


def test_both_channels_send_their_headers_with_secrets_from_the_environment(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An on-call webhook and an Alertmanager behind a proxy that want a token: the rules
    file names an environment variable, never the secret, and neither log shows it."""
    from alertmanagerserver import Receiver

    world(home)
    monkeypatch.setenv("ONCALL_TOKEN", "s3cret-oncall")
    monkeypatch.setenv("AM_TOKEN", "s3cret-am")
    hook, proxy = Receiver(), Receiver()  # the proxy stands in front of an Alertmanager
    try:
        rules = tmp_path / "alerts.yml"
        rules.write_text(
            "notify:\n"
            f"  webhook:\n    url: {hook.url}\n"
            "    headers: {Authorization: 'Bearer ${ONCALL_TOKEN}', X-Team: support}\n"
            f"  alertmanager:\n    url: {proxy.url.removesuffix('/hook')}\n"
            "    headers: {Authorization: 'Bearer ${AM_TOKEN}'}\n" + RULES
        )
        code, out, err = run(capsys, f"monitor tick --rules {rules}")
        assert code == 0, err
        [sent] = hook.headers
        assert sent["Authorization"] == "Bearer s3cret-oncall" and sent["X-Team"] == "support"
        [pushed] = proxy.headers
        assert pushed["Authorization"] == "Bearer s3cret-am"
        assert [a["labels"]["alertname"] for a in proxy.bodies[0]] == ["requests-seen"]
        assert "s3cret" not in out + err
    finally:
        hook.close()
        proxy.close()


def test_an_alert_alertmanager_refuses_is_logged_with_its_name_and_the_reason(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A rules file that fired with a label Alertmanager refuses (``on-call``), then had it
    renamed to be sent there: the old alert's resolve is refused, by name, with
    Alertmanager's reason; the renamed one is active there."""
    world(home)
    with alertmanager_server(tmp_path) as am:
        rules = tmp_path / "alerts.yml"
        rules.write_text(RULES.replace("team: support", "on-call: ops"))
        assert run(capsys, f"monitor tick --rules {rules}")[0] == 0

        rules.write_text(notify(am.url) + RULES.replace("team: support", "on_call: ops"))
        code, out, err = tick(home, rules)
        assert code == 0, err
        assert "firing → resolved" in out  # the alert of the old labels
        refused = [line for line in err.splitlines() if "refused" in line]
        assert len(refused) == 1, err
        assert (
            "alert requests-seen [endpoint=support, on-call=ops, severity=warning]" in (refused[0])
        )
        assert 'HTTP 400: invalid label set: invalid name "on-call"' in refused[0]
        [alert] = am.alerts()
        assert alert["labels"]["on_call"] == "ops"
        assert alert["status"]["state"] == "active"


def test_a_wrong_alertmanager_url_is_one_line_not_a_refusal_per_alert(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A 404 (a route prefix Alertmanager does not have), like a proxy's 401 or 403, says
    nothing of the alerts: one line naming the URL and the answer, not each alert said to
    be refused."""
    world(home)
    with alertmanager_server(tmp_path) as am:
        rules = tmp_path / "alerts.yml"
        rules.write_text(notify(am.url + "/alertmanager") + RULES + TOKENS)
        code, out, err = tick(home, rules)
        assert code == 0, err
        assert "alert tokens-seen [support]: inactive → firing" in out
        said = [line for line in err.splitlines() if "alertmanager" in line]
        assert len(said) == 1, err
        assert f"alertmanager {am.url}/alertmanager/api/v2/alerts answered HTTP 404" in said[0]
        assert "2 alert(s) not sent" in said[0] and "notify.alertmanager.url" in said[0]
        assert "refused it" not in err
        assert am.alerts() == []


@pytest.mark.parametrize(
    ("section", "field", "why"),
    [
        ("alertmanager: {url: alertmanager:9093}", "notify.alertmanager.url", "is not an http"),
        ("alertmanager: {url: []}", "notify.alertmanager.url", "at least one"),
        ("alertmanager: {url: 9093}", "notify.alertmanager.url", "a list of URLs"),
        (
            "alertmanager: {url: 'http://am:9093/api/v2/alerts'}",
            "notify.alertmanager.url",
            "modelyard adds /api/v2/alerts",
        ),
        (
            "alertmanager: {url: [http://am:9093, 'http://am:9093/']}",
            "notify.alertmanager.url",
            "more than once",
        ),
        (
            "alertmanager: {url: http://am:9093, bearer_token: x}",
            "notify.alertmanager.bearer_token",
            "Extra inputs",
        ),
        (
            "webhook: {url: http://hook:8080, headers: {Authorization: 'Bearer ${NO_SUCH_VAR}'}}",
            "notify.webhook.headers",
            "names the environment variable NO_SUCH_VAR, which is not set",
        ),
        (
            "alertmanager: {url: http://am:9093, headers: {Content-Type: text/plain}}",
            "notify.alertmanager.headers",
            "Content-Type is set by the POST itself",
        ),
        (
            "alertmanager: {url: http://am:9093, headers: {'X Team': a}}",
            "notify.alertmanager.headers",
            "'X Team' is not an HTTP header name",
        ),
        (
            "alertmanager: {url: http://am:9093, timeout_s: 0}",
            "notify.alertmanager.timeout_s",
            "greater than 0",
        ),
        (
            "alertmanager: {url: http://am:9093, evaluation_interval: 2d}",
            "notify.alertmanager.evaluation_interval",
            "between 1s and 1d",
        ),
        (
            "alertmanager: {url: http://am:9093}\nrules:\n  - {name: r, metric: requests, "
            "threshold: 1, labels: {on-call: ops}}",
            "rules.0.labels",
            "label 'on-call' of rule r is not a Prometheus label name",
        ),
        (
            "alertmanager: {url: http://am:9093}\nrules:\n  - {name: r, metric: requests, "
            "threshold: 1, labels: {alertname: x}}",
            "rules.0.labels",
            "is the rule's name in Alertmanager",
        ),
        (
            "alertmanager: {url: http://am:9093}\nrules:\n  - {name: r, metric: requests, "
            "threshold: 1, annotations: {summary: x}}",
            "rules.0.annotations",
            "'summary' is set for every alert",
        ),
        (
            "webhook: {url: http://hook:8080}\nrules:\n  - {name: r, metric: requests, "
            "threshold: 1, annotations: {run-book: x}}",
            "rules.0.annotations",
            "annotation 'run-book' is not a name Alertmanager takes",
        ),
    ],
)
def test_a_bad_alertmanager_section_is_refused_naming_the_field(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    section: str,
    field: str,
    why: str,
) -> None:
    world(home)
    rules = tmp_path / "alerts.yml"
    rules.write_text("notify:\n  " + section + "\n")
    code, _, err = run(capsys, f"monitor tick --rules {rules}")
    assert code == 2, err
    assert f"{field}: " in err, err
    assert why in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("interval", "minutes"), [("1s", 4), ("15s", 4), ("1m", 4), ("90s", 6), ("5m", 20)]
)
def test_a_firing_alert_stays_valid_for_four_resend_delays_at_least(
    interval: str, minutes: int
) -> None:
    """Prometheus sends with endsAt = 4 x max(resend delay, interval), the resend delay a
    minute: a 15 s evaluation that a slow drift run or webhook holds up a minute must not
    let Alertmanager resolve (and page the resolve of) an alert that still fires."""
    from modelyard.monitoring._alertmanager import AlertmanagerConfig

    config = AlertmanagerConfig(url="http://am:9093", evaluation_interval=interval)
    assert config.valid_for.total_seconds() == minutes * 60


def test_the_documented_alertmanager_rules_and_route_are_valid(tmp_path: Path) -> None:
    """docs/monitoring.md's example rules file loads, and its route passes Alertmanager's
    own check (``amtool check-config``)."""
    import re
    import shutil
    import subprocess

    import yaml

    from modelyard.monitoring import AlertRules
    from redisserver import IN_CI

    doc = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    section = doc.split("### Sending alerts to Alertmanager\n")[1].split("\n## ")[0]
    rules_yaml, route_yaml = re.findall(r"```yaml\n(.*?)```", section, re.S)
    rules = AlertRules.parse(yaml.safe_load(rules_yaml))
    am = rules.notify.alertmanager
    assert am is not None
    assert am.urls == [
        "http://alertmanager-0:9093/api/v2/alerts",
        "http://alertmanager-1:9093/api/v2/alerts",
    ]
    assert am.valid_for.total_seconds() == 240
    amtool = shutil.which("amtool")
    if amtool is None:
        reason = "amtool is not installed (apt-get install prometheus-alertmanager)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    (tmp_path / "alertmanager.yml").write_text(route_yaml)
    checked = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
