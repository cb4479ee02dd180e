"""``modelyard audit log|verify|acknowledge|anchor|head|export|prove|check-proof`` and ``modelyard
actors add|list``."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.audit import (
    ROLES,
    AuditHead,
    RecordedBreak,
    RecordsReport,
    check_format,
    check_proof,
    write_events,
)
from modelyard.cli._audit_table import render_events
from modelyard.cli._common import (
    console,
    err_console,
    open_store,
    out_file,
    print_json,
    settings,
)
from modelyard.cli._plane import open_plane
from modelyard.cli._remote import URL_ENV, remote_url
from modelyard.durations import parse_since
from modelyard.errors import ConfigError
from modelyard.settings import os_user

if TYPE_CHECKING:
    pass

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
SINCE = typer.Option(
    None,
    "--since",
    help="Only events at or after DATE: 2026-01-31, 2026-01-31T12:00Z (UTC unless an "
    "offset is given) or a duration back from now such as 12h or 7d.",
)

MAX_SEQ = 2**63 - 1  # what a database integer holds

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
    exclude: list[str] = typer.Option(
        [],
        "--exclude-action",
        metavar="ACTION",
        help="Leave out this action (repeatable), e.g. records.anchored, a server's seal of "
        "its inference records every few seconds; 'records.*' for a prefix.",
    ),
    limit: int = typer.Option(
        50, "--limit", min=1, max=MAX_SEQ, help="At most N events, newest first."
    ),
    json_out: bool = JSON,
) -> None:
    """Show audit events, newest first.

    seq, time, actor, action and subject stay whole at any width; the details
    wrap (under each event on a narrow terminal). `--json` has every field.
    """
    start = None if since is None else parse_since(since)  # '' is an error, not all
    given = [("--action", action), ("--subject", subject), ("--by", by)]
    for option, value in given + [("--exclude-action", x) for x in exclude]:
        if value is not None and not value.strip():
            raise ConfigError(
                f"empty {option}: it would match no event",
                hint=f"Give a value, e.g. --action 'alias.*', or leave {option} out.",
                field=option,
            )
    with open_plane() as plane:
        events = plane.list_audit_events(
            since=start, action=action, subject=subject, actor=by, limit=limit,
            exclude_actions=exclude,
        )  # fmt: skip
        breaks = plane.open_audit_breaks()  # None through a server: it does not say
    _warn_open_breaks(breaks)
    if json_out:
        print_json([e.to_json() for e in events])
        return
    console.print(render_events(events, console.width), highlight=False)  # cells are Text


def _warn_open_breaks(breaks: list[RecordedBreak] | None) -> None:
    """Name the first break on record and not acknowledged, on stderr (what is on stdout, a
    JSON list or an export, stays as it is); the command still exits 0."""
    if breaks:
        first = breaks[0]
        err_console.print(
            f"[red]warning:[/] the audit chain is broken at seq {first.seq}: "
            f"{_shown(first.reason)} ({_shown(first.describe())}). Audited changes are refused "
            "until an admin acknowledges it (`modelyard audit acknowledge --reason ...`).",
            highlight=False,
            soft_wrap=True,
        )


@app.command("verify")
def audit_verify(
    head: str | None = typer.Option(
        None,
        "--head",
        help="SEQ:HASH printed earlier by `audit head` and kept outside the store; "
        "also detects events removed from the end.",
    ),
    records: bool = typer.Option(
        False,
        "--records",
        help="Also check the inference records against their seals (Merkle roots anchored "
        "in the chain) and name the first record edited, deleted or inserted, or whose seal "
        "no anchor vouches for after a grace period. Reads the records "
        f"table: on the database only, not through a server ({URL_ENV}).",
    ),
    json_out: bool = JSON,
) -> None:
    """Recompute the whole chain; exit 1 naming the first bad event if it was tampered with.

    A break found is kept on record: audited changes are refused until an admin
    acknowledges it (`modelyard audit acknowledge`). Acknowledged breaks are listed,
    and do not fail the chain. With --records, the inference records are checked too
    (exit 1 naming the first record that does not match its seal, or whose seal no
    records.anchored event lists after a grace period; seals written in the last
    minutes and not anchored yet are counted as pending, not failed).
    """
    if records:
        _on_the_database("audit verify --records", " (the admin API checks the chain only)")
    expected = None if head is None else _parse_head(head)  # "" too: never skipped quietly
    if expected is not None and remote_url() is None:
        with open_store() as store:
            report = store.verify_audit_chain(expected)
    else:  # through a server, the admin API records a --head break for an admin only
        with open_plane() as plane:
            report = plane.verify_audit_chain(expected)
    sealed = None
    if records and report.ok:  # the seals are read from the chain: only from a sound one
        with open_store() as store:
            sealed = store.verify_record_seals()
    if json_out:
        print_json(report.to_json() | ({} if sealed is None else {"records": sealed.to_json()}))
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
                f"  acknowledged break at {_shown(done.sentence())}",
                highlight=False,
                soft_wrap=True,
            )
        if sealed is not None:
            _print_records(sealed)
    if sealed is not None:
        sealed.raise_if_broken()


def _on_the_database(command: str, why: str = "") -> None:
    """Refuse a command that reads the records table when it would go through a server."""
    if remote_url() is not None:
        raise ConfigError(
            f"`{command}` reads the records table: it runs on the database, and {URL_ENV} "
            f"is set{why}",
            hint=f"Unset {URL_ENV} and run it where the database is (MODELYARD_HOME or "
            "MODELYARD_STORE_URL), with the audit key.",
        )


def _parse_head(text: str) -> AuditHead:
    try:
        return AuditHead.parse(text)
    except ConfigError as exc:
        empty = " (empty: was the file it came from empty?)" if not text.strip() else ""
        raise ConfigError(
            f"invalid --head {text!r}{empty}: the chain was not verified against it",
            hint=exc.hint,
            field="--head",
        ) from None


def _shown(text: str) -> str:
    """Text from the chain (an admin's reason) for the terminal: control characters as their
    escape codes, so that no escape sequence in an event can move the cursor or erase the
    lines around it, and Rich markup as typed."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return escape(safe)


def _print_records(report: RecordsReport) -> None:
    removed = [f"{report.purged} removed by retention"] if report.purged else []
    removed += [f"{report.discarded} replaced by batch jobs"] if report.discarded else []
    notes = [*removed, f"{report.running} running (sealed when they end)"]
    if report.before_sealing:
        notes.append(f"{report.before_sealing} written before sealing began (not covered)")
    if report.late:
        notes.append(f"{report.late:,} anchored late by an admin (below)")
    if report.pending:
        notes.append(
            f"{report.pending:,} sealed in the last minutes and not anchored yet "
            f"({report.pending_seals:,} seals: vouched for at their writer's next anchor)"
        )
    status = "[green]records OK[/]" if report.ok else "[red]records FAILED[/]"
    console.print(
        f"{status}: {report.records:,} records match {report.seals:,} seals; {', '.join(notes)}",
        highlight=False,
        soft_wrap=True,
    )
    for late in report.late_anchors:
        line = (
            f"  anchored late at audit event {late['seq']} by {late['actor']}, "
            f"{_clock(late['time'])} UTC: {late['reason']}"
        )
        console.print(_shown(line), highlight=False, soft_wrap=True)
    for problem in report.problems[:20]:
        console.print(f"  {escape(problem.sentence())}", highlight=False, soft_wrap=True)
    if len(report.problems) > 20:
        console.print(f"  ... {len(report.problems) - 20} more (--json lists them all)")


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
        console.print(_shown(line), highlight=False, soft_wrap=True)


@app.command("anchor")
def audit_anchor(
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="What was checked and how (kept in the chain, shown by `audit verify "
        "--records` and `audit log`); needed unless --dry-run.",
    ),
    seals: list[str] | None = typer.Option(
        None,
        "--seal",
        metavar="ID",
        help="Anchor only this seal (repeatable); default: every seal left unanchored past "
        "the grace period. --dry-run lists them.",
    ),
    abandoned: bool = typer.Option(
        False,
        "--abandoned",
        help="Also seal the requests closed as abandoned (their server stopped) that no seal "
        "holds: closed by a sweep while the audit chain refused anchors, or by an older "
        "`doctor --fix`. `audit verify --records` reports them as inserted.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the seals and what their check found; write nothing."
    ),
    json_out: bool = JSON,
) -> None:
    """Vouch late for the seals of inference records that their server never anchored
    (needs role admin; audited).

    A server killed between sealing records and anchoring them (every few seconds)
    leaves seals that no records.anchored event lists: `audit verify --records` then
    fails, calling their records unanchored. Check them elsewhere first (a backup, the
    server's log, the callers), then anchor them with a reason. Each seal is checked
    again first: older than the grace period, its server not running, every record
    there and as sealed; when one fails, nothing is anchored (exit 1). The event is a
    records.anchored event marked late: verification counts these records apart and
    names the anchor.
    """
    _on_the_database("audit anchor")
    from modelyard.monitoring import ABANDONED  # the text a stopped server's requests close with

    with open_store() as store:
        done = store.anchor_late(
            reason,
            seals=seals or (),
            closed_error=ABANDONED if abandoned else None,
            dry_run=dry_run,
        )
    if json_out:
        print_json(done.to_json())
        return
    for seal in done.seals:
        what = "records closed as abandoned, sealed now" if seal.closed else f"seal {seal.seal}"
        first, last = _clock(seal.first), _clock(seal.last)
        span = f"{first} to {last[11:] if last[:10] == first[:10] else last}"
        plural = "s" if len(seal.servers) > 1 else ""
        servers = f"server{plural} {', '.join(seal.servers)}" if seal.servers else "no server"
        check = f"[red]cannot be vouched for[/]: {_shown(seal.problem)}" if seal.problem else "OK"
        console.print(
            f"  {what}: {seal.records:,} record{'s' if seal.records != 1 else ''}, {span}, "
            f"{_shown(servers)}: {check}",
            highlight=False,
            soft_wrap=True,
        )
    count = f"{done.records:,} records in {len(done.seals):,} seals"
    if not done.events and not done.seals:
        console.print("dry run: no seal is left unanchored past the grace period; nothing to "
                      "anchor.", highlight=False, soft_wrap=True)  # fmt: skip
        return
    if not done.events:
        refused = len(done.refused)
        verdict = (
            f"{refused} cannot be vouched for: a late anchor of all of them is refused"
            if refused
            else "all can be anchored late"
        )
        console.print(
            f"dry run: {count}; {verdict}. Nothing was written.", highlight=False, soft_wrap=True
        )
        return
    seqs = [e.seq for e in done.events]
    which = f"event {seqs[0]}" if len(seqs) == 1 else f"events {seqs[0]} to {seqs[-1]}"
    console.print(
        f"[green]anchored late[/] {count} as audit {which}; "
        "`modelyard audit verify --records` counts them apart",
        highlight=False,
        soft_wrap=True,
    )


def _clock(text: str | None) -> str:
    """A record time of a seal's index as ``YYYY-MM-DD HH:MM:SS``."""
    return "?" if not text else text[:19].replace("T", " ")


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
    """Export events with their hashes for auditors (verifiable offline with the key).

    While a break of the chain is on record and not acknowledged, a warning on stderr
    names it, as `audit log` does; the export is written all the same (exit 0).
    `audit verify` recomputes the chain: export does not.
    """
    chosen = check_format(fmt)
    start = None if since is None else parse_since(since)  # '' is an error, not all
    target = None if out is None else out_file(out)
    with open_store() as store:
        breaks = store.open_audit_breaks()
        events = store.iter_audit_events(since=start)
        if target is None:
            write_events(events, chosen, sys.stdout)
            _warn_open_breaks(breaks)
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                count = write_events(events, chosen, fh)
            Path(tmp).replace(target)
        except OSError as exc:  # a full disk, a file system that refuses the rename
            Path(tmp).unlink(missing_ok=True)
            raise _cannot_write(target, exc) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    console.print(f"[green]exported[/] {count} events to {target}")
    _warn_open_breaks(breaks)


def _cannot_write(out: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write --out {out}: {exc.strerror or exc}; nothing was written",
        hint="Choose another --out, in a directory you can write to.",
        field="--out",
    )


@app.command("prove")
def audit_prove(
    record_id: str = typer.Argument(..., help="The inference record's id (the completion's id)."),
    out: Path | None = typer.Option(None, "--out", help="Write to FILE instead of stdout."),
) -> None:
    """Export the inclusion proof of one inference record for an auditor (JSON).

    It holds the record's canonical bytes, their leaf hash, the Merkle path to its
    seal's root, the path from the seal to its anchor's root and the records.anchored
    audit event holding that root (seq and hash, as `audit export` lists it).
    `modelyard audit check-proof FILE` checks it with no database. Reads the records
    table: on the database only.
    """
    with open_store() as store:
        proof = store.record_proof(record_id)
    text = json.dumps(proof, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {out}: {exc.strerror}", hint="Choose another --out."
        ) from None
    console.print(
        f"[green]wrote[/] the inclusion proof of record {escape(record_id)} (leaf "
        f"{proof['position']} of {proof['size']}, audit event {proof['event']['seq']}) to {out}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("check-proof")
def audit_check_proof(
    path: Path = typer.Argument(..., help="A proof written by `modelyard audit prove`."),
    json_out: bool = JSON,
) -> None:
    """Check an inclusion proof with no database; exit 1 if it does not verify.

    The record's bytes must hash to the leaf, the path must lead from the leaf to its
    seal's root, the audit event must list that seal with that root and size, and the
    anchor path must lead from the seal to the root the event holds. That the event
    is in the chain: compare its seq and hash with `audit export` (verifiable with the
    key) or a head kept with `audit head`.
    """
    try:
        proof = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a JSON record inclusion proof: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{path} is not a record inclusion proof: its JSON is nested too deeply"
        ) from None
    check = check_proof(proof)
    if json_out:
        print_json({"ok": True, **vars(check)})
        return
    line = f"[green]proof OK[/]: {_shown(check.sentence())}"
    console.print(line, highlight=False, soft_wrap=True)


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
        console.print(f"[green]{escape(actor.name)}[/] has role {actor.role}", highlight=False)


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
        table.add_row(escape(a.name), a.role, f"{a.updated_at:%Y-%m-%d %H:%M}")
    console.print(table)
    console.print(f"Actors not listed have role {s.default_role}.")
    if bootstrap:
        console.print(
            f"No admin is recorded: the OS user {escape(repr(os_user()))} acts as admin until "
            "one is (`modelyard actors add NAME --role admin`)."
        )
