"""``modelyard monitor recompute``: compute a range of hour and day profiles again from
their records (``recompute_profiles``), with progress; the database's, not a server's."""

from __future__ import annotations

import typer

from modelyard.cli._common import console, open_store, print_json, progress_bar
from modelyard.cli._control import needs_database
from modelyard.cli._monitor_records import JSON
from modelyard.durations import parse_since


def recompute(
    since: str = typer.Option(
        ...,
        "--since",
        help="The first hour to compute again: a date (2026-12-01), a date-time "
        "(2026-12-01T09:00Z) or a duration back from now (7d).",
    ),
    until: str | None = typer.Option(
        None, "--until", help="Up to this date or date-time (default: now)."
    ),
    json_out: bool = JSON,
) -> None:
    """Compute the hour and day profiles from --since to --until again from their
    inference records, at today's token prices.

    For profiles computed by an older release, which counted differently (before
    2026-12-07: shadow copies in the users' profiles, a correction's score on a request
    that was never answered), or after a price set late. The monitoring loop computes only
    the recent hours and those whose feedback changed. A tenant's hours that a retention
    purge reached keep their profiles (their records are gone): the output names them."""
    needs_database("monitor recompute (computing profiles again)")
    start = parse_since(since, field="--since")
    end = parse_since(until, field="--until", allow_future=True) if until else None
    from modelyard.monitoring import recompute_profiles

    with open_store() as store, progress_bar("recomputing profiles", 0, unit="hours") as update:
        done = recompute_profiles(store, start, end, progress=lambda n, of: update(n, of, ""))
        names = {t.id: t.name for t in store.list_tenants()}
    kept = {names.get(tid, str(tid)): before for tid, before in sorted(done.kept.items())}
    if json_out:
        print_json({
            "since": done.since.isoformat(),
            "until": done.until.isoformat(),
            "hours": done.hours,
            "days": done.days,
            "rows": done.rows,
            "kept": {name: before.isoformat() for name, before in kept.items()},
        })  # fmt: skip
        return
    console.print(
        f"recomputed {done.hours} hour(s) and {done.days} day(s) of profiles from "
        f"{done.since:%Y-%m-%d %H:%M} to {done.until:%Y-%m-%d %H:%M} UTC: {done.rows} row(s)",
        markup=False,
        highlight=False,
    )
    for name, before in kept.items():
        console.print(
            f"  kept {name}'s profiles before {before:%Y-%m-%d %H:%M} UTC as they were: a "
            "retention purge deleted records of those hours",
            markup=False,
            highlight=False,
        )


__all__ = ["recompute"]
