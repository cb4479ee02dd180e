"""``modelyard rollout compare ENDPOINT --shadow``: the shadow version against production on
the same requests, as a per-prompt diff table, a judge's win rate and a verdict."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from modelyard.cli._common import console, open_store, out_file, print_json, progress_bar
from modelyard.cli._progress import ProgressFn

EXCERPT = 48
OUT_COLUMNS = (
    "production_id", "shadow_id", "created_at", "production_version", "shadow_version",
    "question", "production_answer", "shadow_answer", "identical", "production_score",
    "shadow_score", "winner", "judge_error", "paired_by",
)  # fmt: skip


def _excerpt(text: str, size: int = EXCERPT) -> str:
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= size else flat[: size - 1] + "…")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(report: Any, limit: int) -> Table:
    judged = report.judge is not None
    columns = ["#", "prompt", "production", "shadow", "same"]
    if judged:
        columns += ["scores", "won"]
    table = Table(*columns, title=f"{report.endpoint}: shadow {report.shadow_version}, "
                  f"{report.pairs} pairs", show_lines=False)  # fmt: skip
    for number, row in enumerate(report.rows[:limit], start=1):
        cells = [
            str(number), _excerpt(row.question), _excerpt(row.production_answer),
            _excerpt(row.shadow_answer), "yes" if row.identical else "no",
        ]  # fmt: skip
        if judged:
            cells += [
                f"{_score(row.production_score)} / {_score(row.shadow_score)}",
                row.winner or "[yellow]no score[/]",
            ]
        table.add_row(*cells)
    return table


def _summary_lines(report: Any) -> list[str]:
    from modelyard.delivery import SHADOW_SKIP_REASONS

    versions = ", ".join(f"{v} ({n})" for v, n in report.production_versions.items())
    lines = [f"shadow {report.shadow_version} vs production {versions}"]
    skipped = [f"{n} {SHADOW_SKIP_REASONS[k]}" for k, n in report.skipped.items() if n]
    line = f"pairs: {report.pairs} of {report.shadow_records} shadow records"
    lines.append(line + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
    share = report.identical_share
    lines.append(f"identical answers: {report.identical} of {report.pairs} ({share:.1%})")
    j = report.judge
    if j is not None:
        interval = "" if j.interval is None else f" [{j.interval[0]:.3f}, {j.interval[1]:.3f}]"
        lines.append(
            f"judge {j.judge} ({j.rubric}, revision {j.revision}): shadow won {j.wins}, tied "
            f"{j.ties}, lost {j.losses} of {j.judged} judged pairs; {j.failed} without a score"
        )
        lines.append(f"win rate of the shadow: {_num(j.win_rate)}{interval} (95% Wilson)")
        lines.append(
            f"mean score: production {_num(j.production_mean, 2)}, shadow {_num(j.shadow_mean, 2)}"
        )
        lines.append(f"judge calls: {j.calls} ({j.cached} from the cache), cost {j.cost:.4g}")
        for error in j.errors:
            lines.append(f"[yellow]no score:[/] {escape(error)}")
    lines.append(f"[bold]verdict: {report.verdict}[/] ({escape(report.reason)})")
    return lines


def compare_shadow_command(
    endpoint: str,
    start: datetime,
    *,
    judge: str | None,
    min_pairs: int,
    limit: int,
    out: Path | None,
    json_out: bool,
) -> None:
    """The body of ``rollout compare --shadow`` (registered in ``_delivery``)."""
    from modelyard.batch import table_kind, write_table
    from modelyard.delivery import compare_shadow

    if out is not None:  # before the judge is paid for the pairs, not after
        table_kind(out_file(out), "--out")
    with open_store() as store, ExitStack() as stack:
        bar: ProgressFn | None = None

        def step(done: int, total: int) -> None:  # a bar from the first answer judged
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(f"judge {judge}", total, unit="answers"))
            bar(done, total, "")

        report = compare_shadow(
            store, endpoint, start, judge=judge, min_pairs=min_pairs,
            progress=None if json_out else step,
        )  # fmt: skip
    data = report.as_json()
    if out is not None:
        write_table(out, data["rows"], OUT_COLUMNS)
    if json_out:
        print_json(data)
        return
    console.print(_table(report, limit))
    if report.pairs > limit:
        console.print(
            f"({report.pairs - limit} more pairs: raise --limit, or write all with --out)"
        )
    for line in _summary_lines(report):
        console.print(line, soft_wrap=True)
    if out is not None:
        console.print(f"wrote {report.pairs} pairs to {out}")
