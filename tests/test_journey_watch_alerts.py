"""Journey 4 (the SRE): `monitor tick` and `monitor alerts` say which endpoint an alert is
about. Both printed labels through Rich markup, which took `[support]` and
`[endpoint=support, severity=warning]` for style tags and dropped them (and a label such
as `[/x]` ended the command with a MarkupError)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

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
    labels: {team: "[/ops]"}
"""


def run(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(shlex.split(line))
    out, err = capsys.readouterr()
    return code, out, err


def test_tick_and_alerts_name_the_endpoint_and_labels(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home.mkdir()
    with home_store(home) as store:
        fake_world(store)
        now = datetime.now(UTC)
        store.add_inference_records(answered(store, f"r{i}", 1, now) for i in range(3))
    rules = tmp_path / "alerts.yml"
    rules.write_text(RULES)
    code, out, err = run(capsys, f"monitor tick --rules {rules}")
    assert code == 0, err
    assert "alert requests-seen [support]: inactive → firing" in out
    code, out, err = run(capsys, "monitor alerts --state firing")
    assert code == 0, err
    [row] = [line for line in out.splitlines() if "requests-seen" in line]
    assert "endpoint=support, severity=warning, team=[/ops]" in row
    assert "requests over 1h is 3 (> 1) [endpoint=support, severity=warning, team=[/ops]]" in row
    assert "│ 3 " in row  # the value


def test_the_resolve_the_webhook_gets_says_the_condition_no_longer_holds(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home.mkdir()
    with home_store(home) as store:
        fake_world(store)
        now = datetime.now(UTC)
        store.add_inference_records(answered(store, f"r{i}", 1, now) for i in range(3))
    rules = tmp_path / "alerts.yml"
    hook = f"notify:\n  webhook:\n    url: http://127.0.0.1:{server.server_port}/hook\n"
    try:
        rules.write_text(hook + RULES)
        assert run(capsys, f"monitor tick --rules {rules}")[0] == 0
        rules.write_text(hook + RULES.replace("threshold: 1", "threshold: 5"))
        code, out, err = run(capsys, f"monitor tick --rules {rules}")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert "alert requests-seen [support]: firing → resolved" in out
    firing, resolved = (r["alert"] for r in received)
    assert isinstance(firing, dict) and isinstance(resolved, dict)
    assert str(firing["summary"]).startswith("requests over 1h is 3 (> 1) [endpoint=support")
    assert str(resolved["summary"]).startswith("requests over 1h is 3 (not > 5) [endpoint=support")
