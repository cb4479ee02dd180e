"""Journey 1: after a pipeline ran against a serving endpoint, `audit log` tells its story.

A server under traffic appends a ``records.anchored`` event every five seconds; each was
shown with every seal's index hash (400 characters of hex), so the rollout's events were
lost among them, and a rollback's reason was cut off after the guards' raw numbers."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from modelyard.audit import AuditEvent
from modelyard.cli._audit_table import render_events

HEX = "ab" * 32


def _event(seq: int, action: str, payload: dict[str, object]) -> AuditEvent:
    return AuditEvent(
        seq=seq, time=datetime(2026, 12, 7, 10, 9, 17, tzinfo=UTC), actor="ci", action=action,
        subject="support", payload=payload, prev_hash="0" * 64, hash="1" * 64,
    )  # fmt: skip


def _shown(*events: AuditEvent, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render_events(list(events), width))
    return out.getvalue()


def test_an_anchor_of_inference_records_is_one_short_line() -> None:
    anchor = _event(79, "records.anchored", {
        "first": "2026-12-07T10:09:12.931969+00:00", "last": "2026-12-07T10:09:16.392029+00:00",
        "indexes": [HEX] * 12, "records": [1] * 11 + [3], "roots": [HEX] * 12,
        "seals": ["8f08258b5fa7d6a8188fca66e7fcffe2"] * 12, "root": "2283dc31abd54395" + "0" * 48,
        "v": 1,
    })  # fmt: skip
    shown = " ".join(_shown(anchor).split())
    assert "14 inference records sealed in 12 seal(s), 10:09:12 to 10:09:16" in shown
    assert "root 2283dc31abd54395…" in shown
    assert HEX not in shown.replace(" ", "")
    assert len(_shown(anchor).splitlines()) <= 5  # header, its details line, the event, 2 lines


def test_a_rollback_says_why_before_the_guards_numbers() -> None:
    guard = {
        "baseline": 171.37823679750005,
        "failed": 0,
        "guard": "error_rate <= 0.02",
        "n": 12,
        "p_value": 1.0,
        "status": "pass",
        "threshold": 0.02,
        "value": 0.0,
    }
    message = "p95_latency_ms <= 1.2 * baseline: p95_latency_ms=363.3 (threshold 205.7) → breach"
    rolled_back = _event(47, "rollout.rolled_back", {
        "breach": {"guards": [guard] * 4, "kind": "guard", "message": message},
        "plan": {"1": 100}, "rollout": "b7805c2a",
    })  # fmt: skip
    shown = " ".join(_shown(rolled_back, width=200).split())
    assert f'why: "{message}"' in shown
    assert 'plan: {"1": 100}' in shown
