"""``modelyard budgets``: money budgets per tenant and per API key, and what was spent
(``list`` also through a server: ``open_plane``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from modelyard.cli._admin import JSON
from modelyard.cli._common import console, open_store, print_json
from modelyard.cli._plane import open_plane
from modelyard.durations import parse_since
from modelyard.errors import ConfigError
from modelyard.store import Budget

app = typer.Typer(
    help="Money budgets per tenant or API key, per UTC day or month, in the currency of the "
    "token prices (`monitor price set`): a tenant or key that has spent its budget gets "
    "429 insufficient_quota until the period ends."
)

PERIOD = typer.Option("day", "--period", help="day or month (UTC).")
KEY = typer.Option(None, "--key", help="A key id of the tenant (`keys list`): its own budget.")


@app.command("set")
def budgets_set(
    tenant: str = typer.Argument(..., help="The tenant."),
    amount: float = typer.Option(..., "--amount", help="What may be spent in the period."),
    period: str = PERIOD,
    key: str | None = KEY,
    json_out: bool = JSON,
) -> None:
    """Set (or replace) a budget; audited. Servers apply it within 10 s."""
    with open_store() as store:
        budget = store.set_budget(tenant, period, amount, key_id=key)
        row = store.budget_status(budget, datetime.now(UTC))
    if json_out:
        print_json(row)
        return
    console.print(
        f"[green]{_who(budget)}[/]: {budget.amount:g} per {budget.period} "
        f"({row['spent']:.4g} spent so far, {row['used_percent']:.0f} %)"
    )


@app.command("remove")
def budgets_remove(
    tenant: str = typer.Argument(..., help="The tenant."),
    period: str = PERIOD,
    key: str | None = KEY,
) -> None:
    """Remove a budget; audited."""
    with open_store() as store:
        removed = store.remove_budget(tenant, period, key_id=key)
    subject = f"{tenant} key {key}" if key else tenant
    if removed:
        console.print(f"removed the {period} budget of {subject}")
    else:
        console.print(f"{subject} has no {period} budget: nothing removed")


@app.command("list")
def budgets_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's."),
    json_out: bool = JSON,
) -> None:
    """Budgets with what was spent in their current period (the tokens of the period's
    requests, at today's prices)."""
    with open_plane() as plane:
        rows = plane.list_budget_rows(tenant)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no budgets" + (f" for {tenant}" if tenant else ""))
        return
    table = Table("tenant", "key", "period", "budget", "spent", "used", "renews (UTC)")
    for row in rows:
        table.add_row(
            str(row["tenant"]), str(row["key_id"] or "(all keys)"), str(row["period"]),
            f"{row['amount']:g}", f"{row['spent']:.4g}", f"{row['used_percent']:.0f} %",
            str(row["renews_at"])[:16],
        )  # fmt: skip
    console.print(table)


@app.command("recount")
def budgets_recount(
    tenant: str = typer.Argument(..., help="The tenant."),
    since: str = typer.Option(
        ...,
        "--since",
        help="The first UTC day to count again: a date (2026-12-01) or a "
        "duration back from now (3d).",
    ),
    json_out: bool = JSON,
) -> None:
    """Count a tenant's token usage, which budgets' spend is summed from, again from its
    inference records, from --since's day to today; audited, needs the approver role.
    For records written without their usage: by the replicas of a release before the
    usage was kept, during a rolling upgrade (docs/operations.md). Refused for days whose
    records a retention purge deleted (their usage is kept; counting again would lose
    it)."""
    start = parse_since(since, field="--since")
    with open_store() as store:
        done = store.recount_usage(tenant, start)
        statuses = store.budget_statuses(store.list_budgets(tenant), datetime.now(UTC))
    if json_out:
        print_json(done | {"budgets": statuses})
        return
    console.print(
        f"recounted the usage of {tenant} from {done['since'][:10]}: {done['days']} days, "
        f"{done['records']:,} records"
    )
    for row in statuses:
        console.print(
            f"  {row['key_id'] or '(all keys)'} per {row['period']}: {row['spent']:.4g} "
            f"spent of {row['amount']:g} ({row['used_percent']:.0f} %)"
        )


@app.command("usage")
def budgets_usage(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="From this UTC day: a date (2026-12-01) or a duration back "
        "(30d). Default: the month's first.",
    ),
    until: str | None = typer.Option(None, "--until", help="Before this UTC day (a date)."),
    by: str = typer.Option(
        "day",
        "--by",
        help="Sum by some of day, tenant, key, version (comma-separated); '' for one total.",
    ),
    json_out: bool = JSON,
) -> None:
    """Token usage and what it cost, for chargeback: the users' requests and tokens (shadow
    copies and requests still running not counted) at today's token prices, what budgets
    count as spent. Read from the usage kept per day: a purge does not lower it."""
    now = datetime.now(UTC)
    start = parse_since(since, field="--since", now=now) if since else now.replace(day=1)
    end = parse_since(until, field="--until", now=now, allow_future=True) if until else None
    if end is not None and end <= start:  # no day is in it: not "no usage"
        after = "--since" if since else "the month's first day (the default --since)"
        raise ConfigError(
            f"the window is empty: --until {end:%Y-%m-%d %H:%M} is not after {after} "
            f"{start:%Y-%m-%d %H:%M} (UTC)",
            hint="Give an --until after --since, e.g. --since 2026-11-01 --until 2026-12-01.",
            field="--until",
        )
    groups = [b.strip() for b in by.split(",") if b.strip()]
    with open_plane() as plane:
        rows: list[dict[str, Any]] = plane.usage_rows(
            since=start, until=end, tenant=tenant, by=groups
        )
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print(f"no usage since {start:%Y-%m-%d}" + (f" for {tenant}" if tenant else ""))
        return
    names = [g for g in ("day", "tenant", "key", "version") if g in groups]
    table = Table(*names, "requests", "prompt tokens", "completion tokens", "cost",
                  title=f"usage from {start:%Y-%m-%d}"
                  + (f" until {end:%Y-%m-%d}" if end else "") + " (UTC days)")  # fmt: skip
    for row in rows:
        table.add_row(
            *(str(row[n] or "(no key)") for n in names), f"{row['requests']:,}",
            f"{row['prompt_tokens']:,}", f"{row['completion_tokens']:,}", _money(row),
        )  # fmt: skip
    if len(rows) > 1:
        total: dict[str, Any] = {
            k: sum(r[k] for r in rows)
            for k in ("requests", "prompt_tokens", "completion_tokens", "unpriced_tokens")
        }
        total["cost"] = math.fsum(r["cost"] for r in rows)
        table.add_row(
            *(["total"] + [""] * (len(names) - 1) if names else []), f"{total['requests']:,}",
            f"{total['prompt_tokens']:,}", f"{total['completion_tokens']:,}", _money(total),
            style="bold",
        )  # fmt: skip
    console.print(table)


def _money(row: Mapping[str, Any]) -> str:
    """The cost, and the tokens of versions without a price, which it does not count."""
    cost = f"{row['cost']:.4g}"
    unpriced = int(row["unpriced_tokens"])
    return f"{cost} (+{unpriced:,} unpriced tokens)" if unpriced else cost


def _who(budget: Budget) -> str:
    return f"{budget.tenant} key {budget.key_id}" if budget.key_id else budget.tenant
