"""``modelyard audit log|verify|acknowledge|head|export`` and ``modelyard actors add|list``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.audit import ROLES, AuditHead, check_format, write_events
from modelyard.cli._audit_table import render_events
from modelyard.cli._common import console, err_console, open_store, print_json, settings
from modelyard.cli._plane import open_plane
from modelyard.durations import parse_since
from modelyard.errors import ConfigError
from modelyard.settings import os_user

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
SINCE = typer.Option(
    None,
    "--since",
    help="Only events at or after DATE: 2026-01-31, 2026-01-31T12:00Z (UTC unless an "
    "offset is given) or a duration back from now such as 12h or 7d.",
)

app = typer.Typer(help="The tamper-evident audit chain: who changed what, and when.")
actors_app = typer.Typer(help="Actors and their roles: viewer < developer < approver < admin.")


@app.command("log")
def audit_log(
    since: str | None = SINCE,
    action: str | None = typer.Option(
        None, "--action", help="Only this action, e.g. alias.set; 'alias.*' for a prefix."
    ),
    subject: str | None = typer.Option(
        None, "--subject", help="Only this subject, e.g. support@champion; 'support*' for a prefix."
    ),
    by: str | None = typer.Option(None, "--by", help="Only events of this actor."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most N events, newest first."),
    json_out: bool = JSON,
) -> None:
    """Show audit events, newest first.

    seq, time, actor, action and subject stay whole at any width; the details
    wrap (under each event on a narrow terminal). `--json` has every field.
    """
    start = parse_since(since) if since else None
    with open_plane() as plane:
        events = plane.list_audit_events(
            since=start, action=action, subject=subject, actor=by, limit=limit
        )
        breaks = plane.open_audit_breaks()  # None through a server: it does not say
    if breaks:  # on stderr: the JSON on stdout stays a plain list
        first = breaks[0]
        err_console.print(
            f"[red]warning:[/] the audit chain is broken at seq {first.seq}: "
            f"{escape(first.reason)} ({escape(first.describe())}). Audited changes are refused "
            "until an admin acknowledges it (`modelyard audit acknowledge --reason ...`).",
        )
    if json_out:
        print_json([e.to_json() for e in events])
        return
    console.print(render_events(events, console.width), highlight=False)


@app.command("verify")
def audit_verify(
    head: str | None = typer.Option(
        None,
        "--head",
        help="SEQ:HASH printed earlier by `audit head` and kept outside the store; "
        "also detects events removed from the end.",
    ),
    json_out: bool = JSON,
) -> None:
    """Recompute the whole chain; exit 1 naming the first bad event if it was tampered with.

    A break found is kept on record: audited changes are refused until an admin
    acknowledges it (`modelyard audit acknowledge`). Acknowledged breaks are listed,
    and do not fail the chain.
    """
    expected = AuditHead.parse(head) if head else None
    with open_plane() as plane:
        report = plane.verify_audit_chain(expected)
    if json_out:
        print_json(report.to_json())
    report.raise_if_broken()
    if not json_out:
        anchored = f", matches head {expected}" if expected else ""
        count = len(report.acknowledged)
        acked = f", {count} acknowledged break{'s' if count > 1 else ''}" if count else ""
        console.print(
            f"[green]audit chain OK[/]: {report.events} events, head {report.head}"
            f"{anchored}{acked}",
            highlight=False,
            soft_wrap=True,
        )
        for done in report.acknowledged:
            console.print(
                f"  acknowledged break at {escape(done.sentence())}",
                highlight=False,
                soft_wrap=True,
            )


@app.command("acknowledge")
def audit_acknowledge(
    reason: str = typer.Option(
        ...,
        "--reason",
        help="What happened and what was checked (kept in the chain, shown by verify).",
    ),
    json_out: bool = JSON,
) -> None:
    """Acknowledge the breaks of the audit chain, so that audited changes are accepted again
    (needs role admin; audited).

    Appends an audit.break_acknowledged event that lists every break with the chain's
    state there. `audit verify` passes from then on and still lists those breaks; any
    other change to the chain, before or after, is a new break.
    """
    with open_store() as store:
        event = store.acknowledge_audit_breaks(reason)
    if json_out:
        print_json(event.to_json())
        return
    listed = event.payload.get("breaks") or []
    console.print(
        f"[green]acknowledged[/] {len(listed)} break{'s' if len(listed) != 1 else ''} of "
        f"the audit chain as event {event.seq}; audited changes are accepted again",
        highlight=False,
        soft_wrap=True,
    )
    for item in listed:
        line = f"  seq {item['seq']}: {item['reason']}"
        console.print(escape(line), highlight=False, soft_wrap=True)


@app.command("head")
def audit_head(json_out: bool = JSON) -> None:
    """Print the newest event as SEQ:HASH; keep it outside the store for `verify --head`."""
    with open_store() as store:
        head = store.audit_head()
    if json_out:
        print_json({"seq": head.seq, "hash": head.hash, "head": str(head)})
    else:
        print(head)


@app.command("export")
def audit_export(
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (one event per line) or csv."),
    since: str | None = SINCE,
    out: Path | None = typer.Option(None, "--out", help="Write to FILE instead of stdout."),
) -> None:
    """Export events with their hashes for auditors (verifiable offline with the key)."""
    chosen = check_format(fmt)
    start = parse_since(since) if since else None
    with open_store() as store:
        events = store.iter_audit_events(since=start)
        if out is None:
            write_events(events, chosen, sys.stdout)
            return
        target = out.resolve()
        if not target.parent.is_dir():
            raise ConfigError(
                f"cannot write {out}: directory {target.parent} does not exist",
                hint="Create it or choose another --out.",
            )
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                count = write_events(events, chosen, fh)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    console.print(f"[green]exported[/] {count} events to {target}")


# -- actors --------------------------------------------------------------------------------


@actors_app.command("add")
def actors_add(
    name: str = typer.Argument(..., help="Actor name, as given to --actor / MODELYARD_ACTOR."),
    role: str = typer.Option(..., "--role", help=f"One of {', '.join(ROLES)}."),
    json_out: bool = JSON,
) -> None:
    """Record an actor with a role, or change its role (needs role admin; audited)."""
    if role not in ROLES:
        raise ConfigError(f"invalid --role {role!r}: use one of {', '.join(ROLES)}")
    with open_store() as store:
        actor = store.add_actor(name, role)
    if json_out:
        print_json(actor)
    else:
        console.print(f"[green]{actor.name}[/] has role {actor.role}")


@actors_app.command("list")
def actors_list(json_out: bool = JSON) -> None:
    """List recorded actors; everyone else has the default role."""
    s = settings()
    with open_store(s) as store:
        actors = store.list_actors()
        bootstrap = not store.has_admin()
    if json_out:
        print_json(
            {
                "actors": actors,
                "default_role": s.default_role,
                "bootstrap_admin": os_user() if bootstrap else None,
            }
        )
        return
    table = Table("actor", "role", "since")
    for a in actors:
        table.add_row(a.name, a.role, f"{a.updated_at:%Y-%m-%d %H:%M}")
    console.print(table)
    console.print(f"Actors not listed have role {s.default_role}.")
    if bootstrap:
        console.print(
            f"No admin is recorded: the OS user {os_user()!r} acts as admin until one is "
            "(`modelyard actors add NAME --role admin`)."
        )
