"""Rich tables of gate verdicts, for the CLI and the quickstart."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text

from modelyard.evaluation._gates import GateVerdict


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def verdicts_table(verdicts: Iterable[GateVerdict], *, title: str | None = "Gates") -> Table:
    """One row per verdict: gate, metric, observed, threshold, margin, PASS (green) or FAIL (red).

    The reason is shown under the gate text, dimmed. Missing numbers show as "—".
    """
    table = Table(title=title, show_lines=False)
    table.add_column("gate")
    table.add_column("metric")
    table.add_column("observed", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("margin", justify="right")
    table.add_column("result", justify="center")
    for verdict in verdicts:
        gate = Text(verdict.gate)
        gate.append(f"\n{verdict.reason}", style="dim")
        table.add_row(
            gate,  # Text, not markup: a gate text with [brackets] prints as written
            Text(verdict.metric or "—"),
            _number(verdict.observed),
            _number(verdict.threshold),
            _number(verdict.margin, signed=True),
            Text("PASS", style="bold green") if verdict.passed else Text("FAIL", style="bold red"),
        )
    return table
