"""Journey 4 (the SRE and the compliance officer), walked as the docs tell it.

Each test here is a defect a user met following docs/monitoring.md, docs/audit.md or
docs/operations.md, pinned at what the user relies on: exit codes and the line printed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from clihelp import modelyard


def _sql(home: Path, statement: str) -> None:
    with sqlite3.connect(home / "store.db") as db:
        db.execute(statement)


def test_verify_after_the_audit_tables_were_restored_says_to_acknowledge_not_restore(
    tmp_path: Path,
) -> None:
    """docs/audit.md: restore the events from a backup, then acknowledge the recorded break.

    A compliance officer who did restore them ran `audit verify` again and was told, as
    before, to "restore the audit tables from a backup": the same advice in a loop. The
    chain verifies now; only the record of the break is left, and the line says so and
    names the one step that ends it.
    """
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0  # event 2
    _sql(home, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    found = modelyard("audit", "verify", home=home)
    assert found.code == 1 and "broken at seq 2" in found.err
    assert "restore the audit tables from a backup" in found.err  # the chain shows it: right
    _sql(
        home,
        "UPDATE audit_events SET actor = (SELECT actor FROM audit_events WHERE seq = 1) "
        "WHERE seq = 2",
    )  # restored as it was

    again = modelyard("audit", "verify", home=home)
    assert again.code == 1  # the break stays on record until acknowledged (documented)
    assert "broken at seq 2" in again.err
    assert "restore the audit tables from a backup" not in again.err
    assert "events themselves verify now" in again.err
    assert "modelyard audit acknowledge --reason" in again.err

    ack = modelyard("audit", "acknowledge", "--reason", "restored event 2", home=home)
    assert ack.code == 0, ack.err
    assert modelyard("audit", "verify", home=home).code == 0
    assert modelyard("tenants", "create", "initech", home=home).code == 0


def test_a_budget_alert_says_it_reads_the_budgets_day_not_the_rules_window(
    tmp_path: Path,
) -> None:
    """docs/monitoring.md: `budget_used` is what was spent in the budget's current day or
    month; such a rule's window plays no part. Its alert said "budget_used over 5m is
    1.213 (>= 0.8)", which the on-call reads as 121 % of a day's budget spent in five
    minutes. The summary (webhook, `monitor alerts`) says the budget's period instead."""
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    assert modelyard("budgets", "set", "acme", "--amount", "5", home=home).code == 0
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        "rules:\n  - name: budget-any\n    metric: budget_used\n"
        '    comparison: ">="\n    threshold: 0\n    severity: warning\n'
    )
    r = modelyard("monitor", "alerts", "--evaluate", "--rules", str(rules), home=home)
    assert r.code == 0, r.err
    listed = modelyard("monitor", "alerts", "--state", "firing", "--json", home=home)
    assert listed.code == 0, listed.err
    [alert] = json.loads(listed.out)
    assert alert["summary"].startswith("budget_used in the budget's current day (UTC) is 0 ")
    assert "over 5m" not in alert["summary"]


def test_doctor_fix_seals_the_requests_it_closes(tmp_path: Path) -> None:
    """docs/operations.md: `doctor --fix` closes a gone server's running requests "as a
    server's own sweep does", and docs/audit.md: the rows closed so are sealed. After a
    kill -9 of `serve`, `doctor --stale 0 --fix` closed them unsealed, and the next
    `audit verify --records` failed (exit 1) calling each "inserted: it is in a final
    state and no seal holds it": the auditor saw forged rows where the SRE had repaired."""
    from modelyard.monitoring import started_record
    from modelyard.store import NewInferenceRecord, Store

    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    assert modelyard("tenants", "create", "acme", home=home).code == 0
    key = (home / "audit.key").read_text().strip()
    with Store.open(f"sqlite:///{home / 'store.db'}", audit_key=key) as s:
        done = NewInferenceRecord(
            id="cmpl-done", endpoint_name="support", route="completions", latency_ms=5.0,
            status="ok", http_status=200, prompt="hi", response="hello",
        )  # fmt: skip
        s.add_monitored_records([(done, None)], seal=True)  # sealing has begun
        running = started_record(
            "cmpl-cut", endpoint="support", route="completions", tenant_id=None,
            api_key_id=None, version_id=None, prompt="hi",
        )  # fmt: skip
        # a server on another machine that never sent a heartbeat: only the doctor closes it
        s.add_monitored_records([], started=[running], server_id="elsewhere-9-555555")
    assert modelyard("audit", "verify", "--records", home=home).code == 0

    fixed = modelyard("doctor", "--stale", "0", "--fix", home=home)
    assert fixed.code == 0, fixed.out + fixed.err
    assert "requests" in fixed.out
    verified = modelyard("audit", "verify", "--records", home=home)
    assert verified.code == 0, verified.err
    assert "inserted" not in verified.out + verified.err


def test_a_webhook_that_is_down_is_logged_in_a_whole_sentence(tmp_path: Path) -> None:
    """docs/monitoring.md: the deliveries not tried after the webhook failed are "sent at
    the next evaluation, and the log says once how many waited". The line on stderr of
    `monitor tick` ended mid-sentence: "...were not tried; they are sent at the next"."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    for tenant in ("acme", "beta"):
        assert modelyard("tenants", "create", tenant, home=home).code == 0
        assert modelyard("budgets", "set", tenant, "--amount", "5", home=home).code == 0
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        f"notify:\n  webhook:\n    url: http://127.0.0.1:{port}/hook\n"
        "    timeout_s: 1\n    retries: 0\n"
        "rules:\n  - name: budget-any\n    metric: budget_used\n"
        '    comparison: ">="\n    threshold: 0\n'
    )
    r = modelyard("monitor", "tick", "--rules", str(rules), home=home)
    assert r.code == 0, r.err
    [line] = [x for x in r.err.splitlines() if "were not tried" in x]
    assert line.endswith("they are sent at the next evaluation"), line
