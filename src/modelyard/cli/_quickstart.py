"""``modelyard quickstart``: the whole flow on tiny local models, with a summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Column, Table

from modelyard.cli._common import RichReporter, acting_as, console, print_json, settings
from modelyard.errors import TrainingError

if TYPE_CHECKING:  # the quickstart pulls in torch: loaded when the command runs, not at startup
    from modelyard.quickstart import QuickstartResult


def _summary(result: QuickstartResult) -> Table:
    """One row a tenant; its endpoint is named above, by its answers. The names are kept
    whole and the headers wrap, so it reads at 80 columns."""
    table = Table(
        Column("tenant", no_wrap=True),
        Column("version", no_wrap=True),
        title=f"modelyard quickstart — {result.seconds:.0f} s",
        caption="base, tuned: exact match of the base and of the adapter on the held-out "
        "rows; API: answers right through the API; records: stored under its endpoint",
    )
    for column in ("base", "tuned", "rows", "API", "records"):
        table.add_column(column, no_wrap=True)
    for t in result.tenants:
        table.add_row(
            t.tenant,
            t.version,
            f"{t.base_exact_match:.2f}",
            f"[bold green]{t.adapter_exact_match:.2f}[/]",
            str(t.eval_examples),
            f"{t.api_correct}/{t.api_requests}",
            str(t.records),
        )
    return table


def isolation_line(enforced: bool) -> str:
    """What the cross-tenant probe showed. Its refusal is the caller's record, filed under no
    endpoint (never under the other tenant's, where its operator's records would count it)."""
    from modelyard.quickstart import PLANS

    caller, foreign = PLANS[0].tenant, PLANS[1].endpoint
    probe = f"{caller}'s key on {foreign}"
    if not enforced:
        return f"tenant isolation: [red]BROKEN[/] ({probe} was answered)"
    return (
        f"tenant isolation: enforced ({probe}: 404; the refusal is recorded as "
        f"{caller}'s, under no endpoint, not in {foreign}'s records)"
    )


def quickstart(
    requests: int = typer.Option(6, min=1, max=40, help="Chat requests sent per tenant."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build a tiny base, fine-tune one LoRA adapter per tenant, register, serve, query.

    Everything runs locally on the embedded default (SQLite and a local artifact
    directory under MODELYARD_HOME). Fails (exit 1) unless every adapter beats its
    base on held-out rows and every request is recorded. It acts as --actor /
    MODELYARD_ACTOR / the OS user, who must be allowed to move champion (role approver;
    the OS user is admin on a fresh install): anyone else is refused before it starts.
    """
    from modelyard.quickstart import run_quickstart

    s = settings()
    result = run_quickstart(s, RichReporter(), requests_per_tenant=requests, actor=acting_as(s))
    if json_out:
        print_json(result)
    else:
        for t in result.tenants:
            console.print(f"[bold]{t.tenant}[/] via {t.endpoint}:")
            for text, expected, got in t.answers:
                mark = "[green]✓[/]" if got.strip().lower() == expected.lower() else "[red]✗[/]"
                console.print(f"  {mark} {text[:52]!r} → {got!r}")  # one line at 80 columns
        console.print(_summary(result))
        console.print(isolation_line(result.isolation_enforced))
    failures = [
        f"{t.tenant}: adapter {t.adapter_exact_match:.2f} "
        f"does not beat base {t.base_exact_match:.2f}"
        for t in result.tenants
        if t.adapter_exact_match <= t.base_exact_match
    ] + [
        f"{t.tenant}: {t.records} records stored for {t.api_requests} requests"
        for t in result.tenants
        if t.records < t.api_requests
    ]
    if not result.isolation_enforced:
        failures.append("a tenant's key reached another tenant's endpoint")
    if failures:
        raise TrainingError("quickstart checks failed: " + "; ".join(failures))
