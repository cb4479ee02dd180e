"""``modelyard doctor``: parse and print; the checks are ``modelyard.doctor.diagnose``."""

from __future__ import annotations

import typer
from rich.table import Table

from modelyard.cli._common import (
    console,
    open_artifacts,
    open_store,
    print_json,
    progress_bar,
    settings,
)
from modelyard.doctor import diagnose
from modelyard.durations import parse_duration


def doctor(
    fix: bool = typer.Option(False, "--fix", help="Repair what is found (else only report)."),
    stale: str = typer.Option(
        "1h",
        "--stale",
        help="Age past which a leftover with no live owner is stale (e.g. 30m, 1h, 2d).",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also read every referenced artifact and check its bytes against its manifest "
        "(slow: every stored byte is read, downloaded from S3 if need be).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
) -> None:
    """Find what crashed processes left, and repair it with --fix.

    Runs stuck in 'running' whose process is gone (marked interrupted), registered
    models with no version, artifacts no row references, temp files in the
    artifact store's work area, and requests still 'running' on servers that are gone
    (closed as failed). Also versions and datasets whose artifact is missing (after a
    restore, a lost disk), or with --verify altered: no fix can repair those. Exit 0
    when nothing is left to repair, 1 otherwise.
    """
    age = parse_duration(stale, field="--stale", allow_zero=True)
    s = settings()
    with open_store(s) as store:
        if not verify or json_out:
            report = diagnose(store, open_artifacts(s), stale=age, fix=fix, verify=verify)
        else:
            with progress_bar("verifying artifacts", 0, unit="artifacts") as update:
                report = diagnose(
                    store, open_artifacts(s), stale=age, fix=fix, verify=True,
                    progress=lambda done, total: update(done, total, ""),
                )  # fmt: skip
    if json_out:
        print_json(report.to_dict())
    elif not report.findings:
        console.print(
            "[green]nothing to repair[/]: no stuck runs or requests, empty models, orphans, "
            "temp files or missing artifacts" + ("; every artifact verified" if verify else ""),
            soft_wrap=True,
        )
    else:
        table = Table("kind", "subject", "problem", "action", "result")
        for f in report.findings:
            result = (
                "[green]fixed[/]" if f.fixed else (f"[red]{f.error}[/]" if f.error else "found")
            )
            table.add_row(f.kind, f.subject, f.problem, f.action, result)
        console.print(table)
        if report.unresolved and not fix:
            console.print(f"{report.unresolved} problem(s) found; run with --fix to repair them")
        elif report.unresolved:
            console.print(f"[red]{report.unresolved} problem(s) could not be repaired[/]")
        else:
            console.print(f"[green]repaired {len(report.findings)} problem(s)[/]")
    if report.unresolved:
        raise typer.Exit(1)
