"""``modelyard monitor records`` and ``monitor export``: a window of inference records, on
the terminal or to a file; and what the monitor commands share (their options, a wide
table's printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from modelyard.cli._common import console, open_store, print_json
from modelyard.durations import parse_since
from modelyard.errors import ConfigError

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
SINCE = typer.Option(
    None,
    "--since",
    help="Only from DATE (2026-01-31, 2026-01-31T12:00Z) or a duration back "
    "from now such as 1h or 7d.",
)
TENANT = typer.Option(None, "--tenant", help="Only this tenant's records.")


def print_wide(table: Table) -> None:
    """Print a wide table at its natural width when output is not a terminal (no truncation)."""
    if console.is_terminal:
        console.print(table)
        return
    wide = Console(width=1000)
    width = wide.measure(table).maximum
    Console(width=max(width, console.width)).print(table)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


JOB = typer.Option(
    None,
    "--job",
    metavar="JOB_ID",
    help="Only one batch job's records: a `batch run` job (batch-..., its summary names it) "
    "or an OpenAI batch (batch_...).",
)


def _job(job: str | None) -> str | None:
    if job is not None and not job.strip():
        raise ConfigError(
            "empty --job: it would match no record",
            hint="Give a job id (batch run's summary names it), or leave --job out.",
            field="--job",
        )
    return job


def records(
    endpoint: str | None = typer.Option(None, "--endpoint", help="Only this endpoint."),
    tenant: str | None = TENANT,
    since: str | None = SINCE,
    status: str | None = typer.Option(
        None,
        "--status",
        help="Only records with this status: ok, error, cancelled, timeout, refused "
        "(a client's mistake, 4xx), running.",
    ),
    job: str | None = JOB,
    limit: int = typer.Option(50, "--limit", min=1, help="At most N records, newest first."),
    json_out: bool = JSON,
) -> None:
    """List inference records with their features, newest first."""
    with open_store() as store:
        rows = store.query_records(
            endpoint=endpoint,
            tenant=tenant,
            status=status,
            limit=limit,
            since=parse_since(since) if since else None,
            job_id=_job(job),
        )
        if endpoint and not rows and not store.query_records(endpoint=endpoint, limit=1):
            store.get_endpoint(endpoint)  # a misspelt name is NotFound, not "0 record(s)"
    if json_out:
        print_json([_record_json(r) for r in rows])
        return
    table = Table(
        "time (UTC)",
        "id",
        "endpoint",
        "version",
        "tenant",
        "status",
        "latency ms",
        "tokens in/out",
        "prompt chars",
        "feedback",
    )
    for r in rows:
        table.add_row(
            f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            r["id"],
            r["endpoint_name"],
            r["version"] or "-",
            r["tenant"] or "-",
            r["status"],
            f"{r['latency_ms']:.1f}",
            f"{r['prompt_tokens']}/{r['completion_tokens']}",
            str(r["prompt_chars"]) if r["prompt_chars"] is not None else "-",
            fmt(r["feedback_score"], 2),
        )
    print_wide(table)
    console.print(f"{len(rows)} record(s)")


def _record_json(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("tenant_id", "version_id", "embedding")}
    out["created_at"] = r["created_at"].isoformat()
    return out


def export(
    out: Path = typer.Option(..., "--out", help="The file to write."),
    format: str = typer.Option("jsonl", "--format", help="jsonl or parquet."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Only this endpoint."),
    tenant: str | None = TENANT,
    since: str | None = SINCE,
    job: str | None = JOB,
) -> None:
    """Export inference records (with features and feedback) to JSONL or Parquet."""
    from modelyard.monitoring import export_records

    with open_store() as store:
        n = export_records(
            store,
            out,
            format=format,
            endpoint=endpoint,
            tenant=tenant,
            since=parse_since(since) if since else None,
            job_id=_job(job),
        )
    console.print(f"wrote {n} record(s) to {out} ({format})")


def add_record_commands(app: typer.Typer) -> None:
    """``records`` and ``export`` as commands of ``app`` (``modelyard monitor``)."""
    app.command("records")(records)
    app.command("export")(export)


__all__ = ["JSON", "SINCE", "TENANT", "add_record_commands", "fmt", "print_wide"]
