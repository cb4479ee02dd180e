"""``modelyard rollout``, ``servers``, ``controller`` and the endpoint delivery options."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from modelyard.cli._common import (
    check_alert_rules,
    console,
    err_console,
    open_store,
    print_json,
    to_jsonable,
)
from modelyard.cli._control import CurrentStep
from modelyard.cli._plane import open_plane
from modelyard.cli._rollout_text import final, guard_rows, num, progress, summary, timeline
from modelyard.durations import parse_duration, parse_since
from modelyard.errors import ConfigError, ModelyardError
from modelyard.store import Rollout, RolloutPolicy

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # compare with no --since: every record

MAX_STALE_S = 365 * 86400.0  # a heartbeat older than a year is gone whatever is asked

rollout_app = typer.Typer(
    help="Progressive delivery: canary, A/B and blue-green rollouts with automatic rollback."
)
servers_app = typer.Typer(help="Serving replicas, as their heartbeats describe them.")

GUARD_HELP = (
    "A guard such as 'error_rate <= 0.02', 'p95_latency_ms <= 1.2 * baseline', "
    "'feedback_score >= baseline - 0.05' or 'judge.NAME >= baseline - 0.2' (a judge's mean "
    "score of the live answers; see `modelyard judges`) (repeat for more)."
)


_POLICY = RolloutPolicy()


def _duration_text(seconds: float) -> str:
    """300 → ``5m``: a default shown in the same grammar the option reads."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def policy_text(policy: RolloutPolicy) -> str:
    """``steps 10,50,100, bake 5m, min 100 requests, guards error_rate <= 0.02``."""
    guards = "; ".join(policy.guards) or "none"
    steps = ",".join(str(p) for p in policy.steps)
    bake = _duration_text(policy.bake_s)
    return f"steps {steps}, bake {bake}, min {policy.min_requests} requests, guards {guards}"


# The gate override of `rollout start` and `registry alias` (docs/registry.md).
OVERRIDE_GATES = typer.Option(
    False,
    "--override-gates",
    help="Go ahead although the version's gates failed or never ran: needs --reason and role "
    "approver; audited and shown by `registry show`.",
)
OVERRIDE_REASON = typer.Option(
    None, "--reason", help="Why the gates are overridden (with --override-gates)."
)


def gate_override(override: bool, reason: str | None) -> str | None:
    """The override's reason, or None; an override without a reason is refused."""
    if reason is not None and not override:
        raise ConfigError(
            "--reason is the reason of --override-gates: give both, or neither",
            field="reason",
        )
    if override and not (reason and reason.strip()):
        raise ConfigError(
            "--override-gates needs a reason",
            hint='Add --reason "why", e.g. --reason "approved by the risk board, ticket 123".',
            field="reason",
        )
    return reason.strip() if override and reason else None


# The rollout-policy options of `rollout start` and `endpoints policy`, defaults from the entity.
STEPS = typer.Option(
    ",".join(str(p) for p in _POLICY.steps),
    help="Percent of traffic to the new version per step; 100 alone is "
    "blue-green (loaded and smoke-tested everywhere, then switched at once).",
)
BAKE = typer.Option(
    _duration_text(_POLICY.bake_s), help="How long each step runs before it may advance."
)
MIN_REQUESTS = typer.Option(
    _POLICY.min_requests,
    min=0,
    help="Requests the new version must answer in a step before it advances.",
)
GUARDS = typer.Option(list(_POLICY.guards), "--guard", metavar='"METRIC OP VALUE"', help=GUARD_HELP)


NO_CONTROLLER = (
    "no rollout controller is running on this store, so the rollout will not move: start "
    "`modelyard controller` (or `modelyard serve`, which runs one)"
)


def _no_controller(plane: object) -> bool:
    """Whether the store here has no live controller (through a server: its own business)."""
    from modelyard.cli._plane import LocalPlane
    from modelyard.delivery import LEASE

    return isinstance(plane, LocalPlane) and plane.store.lease_holder(LEASE) is None


def seconds(text: str, what: str) -> float:
    """A duration option (``--bake 1.5h``, ``--timeout 30m``; 0 allowed) in seconds."""
    return parse_duration(text, field=what, allow_zero=True).total_seconds()


@rollout_app.command("start")
def start(
    endpoint: str = typer.Argument(..., help="Endpoint to roll out on."),
    to: str = typer.Option(
        ..., "--to", help="The new version: NAME:VERSION, NAME@alias or NAME (its latest version)."
    ),
    steps: str = STEPS,
    bake: str = BAKE,
    min_requests: int = MIN_REQUESTS,
    guard: list[str] = GUARDS,
    promote_alias: str | None = typer.Option(
        None,
        help="Move this alias (e.g. champion) to the new version when the rollout ends "
        "well; your role must allow it.",
    ),
    override_gates: bool = OVERRIDE_GATES,
    reason: str | None = OVERRIDE_REASON,
    json_out: bool = JSON,
) -> None:
    """Start a rollout; the controller (in `modelyard serve`, or `modelyard controller`)
    moves it step by step and rolls it back on a breached guard.

    The version's gates must have passed (`registry show` says); one whose gates failed
    or never ran needs --override-gates --reason "why"."""
    from modelyard.delivery import resolved_target
    from modelyard.errors import Conflict

    override = gate_override(override_gates, reason)
    bake_s = seconds(bake, "--bake")
    with open_plane() as plane:
        try:
            r = plane.start_rollout(
                endpoint, to, steps=steps, bake_s=bake_s, min_requests=min_requests,
                guards=guard, promote_alias=promote_alias, override_gates=override,
            )  # fmt: skip
        except Conflict:
            same = _started_already(plane, endpoint, to, steps, bake_s, min_requests, guard,
                                    promote_alias)  # fmt: skip
            if same is None:
                raise
            r, note = same
            if json_out:
                err_console.print(note, soft_wrap=True, highlight=False)
                print_json(r)
            else:
                console.print(note, soft_wrap=True, highlight=False)
            return
        idle = _no_controller(plane)
    if idle:
        err_console.print(f"[yellow]warning:[/] {NO_CONTROLLER}.")
    if json_out:
        print_json(r)
        return
    console.print(f"[green]started[/] rollout {r.id}: {summary(r)}", soft_wrap=True)
    chosen = resolved_target(to, r)
    if chosen["by"] != "version":  # --to named no version: say which one it chose
        console.print(f"  {chosen['note']}", soft_wrap=True, highlight=False)
    console.print(f"  guards: {', '.join(r.guards)}")
    started = next((e.detail for e in r.events if e.kind == "started"), {})
    if started.get("gates_overridden"):
        console.print(
            f"  [yellow]gates overridden[/] for {r.target_ref}: {started['gates_overridden']}"
        )


def _started_already(
    plane: Any, endpoint: str, to: str, steps: str, bake_s: float, min_requests: int,
    guards: list[str], promote_alias: str | None,
) -> tuple[Rollout, str] | None:  # fmt: skip
    """A refused ``rollout start`` that a pipeline's step run again (a retried CI job) made:
    the same rollout is in progress, or it ended where this one would. Then (that rollout,
    what to say) and the command succeeds without starting another; else None."""
    from modelyard.delivery import already_done, same_rollout

    try:
        r = plane.latest_rollout(endpoint)
        target = plane.resolve_model_ref(to).version
        if r.active and same_rollout(r, target, steps=steps, bake_s=bake_s,
                                     min_requests=min_requests, guards=guards,
                                     promote_alias=promote_alias):  # fmt: skip
            return r, (
                f"rollout {r.id} of {endpoint} to {r.target_ref} with this plan is in progress "
                f"already (started {r.created_at:%Y-%m-%d %H:%M:%S} UTC): nothing new started; "
                f"follow it with `modelyard rollout wait {endpoint}`"
            )
        routes = {x.version: x.weight for x in plane.get_endpoint(endpoint).routes}
        aliased = promote_alias is None or (
            plane.resolve_model_ref(f"{r.model}@{promote_alias}").version == target
        )
        if aliased and already_done(r, target, routes):
            moved = f" and {r.model}@{promote_alias} points at it" if promote_alias else ""
            return r, (
                f"{endpoint} already sends all its traffic to {r.target_ref}{moved} (rollout "
                f"{r.id} succeeded): nothing to do"
            )
    except ModelyardError:  # e.g. no rollout yet, an alias not set: the refusal stands
        return None
    return None


def _status_json(r: Rollout, view: CurrentStep | None) -> dict[str, Any]:
    out: dict[str, Any] = to_jsonable(r)
    if view is not None:
        out["current"] = {
            "requests": view.requests,
            "baseline_requests": view.baseline_requests,
            "elapsed_s": view.elapsed_s,
            "guards": [to_jsonable(g) for g in view.guards],
        }
    return out


@rollout_app.command("status")
def status(
    endpoint: str = typer.Argument(..., help="The endpoint's name."), json_out: bool = JSON
) -> None:
    """The endpoint's latest rollout: its timeline, and the live guard values of its step."""
    with open_plane() as plane:
        r, view = plane.rollout_status(endpoint)
    if json_out:
        print_json(_status_json(r, view))
        return
    console.print(summary(r), soft_wrap=True)  # sentences: whole lines for logs and grep
    if r.reason:
        console.print(f"  reason: {r.reason}", soft_wrap=True)
    console.print(timeline(r), soft_wrap=True)
    if view is not None:
        header, rows, notes = guard_rows(view.guards)
        table = Table(*header, title=f"step {r.step_index + 1}: {view.requests} requests, "
                      f"{view.elapsed_s:.0f}s of {r.bake_s:g}s")  # fmt: skip
        for row in rows:
            table.add_row(*row)
        console.print(table)
        for note in notes:
            console.print(f"  {note}")


def _done(r: Rollout, verb: str) -> None:
    console.print(f"[green]{verb}[/] {summary(r)}", soft_wrap=True)


def _status(plane: Any, endpoint: str) -> str | None:
    """The status of the endpoint's latest rollout before a lever moves it (None: none, or
    the lever will say what is wrong), so that a lever that changed nothing says so."""
    try:
        return str(plane.latest_rollout(endpoint).status)
    except ModelyardError:
        return None


@rollout_app.command("promote")
def promote(endpoint: str = typer.Argument(..., help="The endpoint's name.")) -> None:
    """Skip the remaining steps: all traffic to the new version now (and the alias, if asked)."""
    with open_plane() as plane:
        _done(plane.promote_rollout(endpoint), "promoted")


@rollout_app.command("abort")
def abort(
    endpoint: str = typer.Argument(..., help="The endpoint's name."),
    reason: str | None = typer.Option(None, help="Why, for the timeline and the audit log."),
) -> None:
    """Restore the traffic plan from before the rollout and end it."""
    with open_plane() as plane:
        _done(plane.abort_rollout(endpoint, reason), "aborted")


@rollout_app.command("pause")
def pause(endpoint: str = typer.Argument(..., help="The endpoint's name.")) -> None:
    """Hold the rollout at its current step."""
    with open_plane() as plane:
        was = _status(plane, endpoint)
        _done(plane.pause_rollout(endpoint), "already paused" if was == "paused" else "paused")


@rollout_app.command("resume")
def resume(endpoint: str = typer.Argument(..., help="The endpoint's name.")) -> None:
    """Go on from the current step (its bake time starts again)."""
    with open_plane() as plane:
        was = _status(plane, endpoint)
        r = plane.resume_rollout(endpoint)
        _done(r, "resumed" if was == "paused" else f"not paused ({r.status})")


@rollout_app.command("wait")
def wait(
    endpoint: str = typer.Argument(..., help="The endpoint's name."),
    timeout: str = typer.Option("30m", help="Give up after this long (exit 3)."),
    poll: float = typer.Option(2.0, min=0.05, help="Seconds between looks at the store."),
    json_out: bool = JSON,
) -> None:
    """Wait for the endpoint's rollout to end: exit 0 when it succeeded, 1 when it was
    rolled back or aborted, or succeeded but its --promote-alias was refused, 3 on timeout
    (``RolloutTimedOut``); a CI pipeline can gate on it."""
    from modelyard.delivery import ended_badly
    from modelyard.errors import RolloutTimedOut

    def moved(r: Rollout) -> None:  # a line on stderr each time the rollout moves
        if r.active:
            err_console.print(f"{datetime.now():%H:%M:%S} {progress(r)}")

    with open_plane() as plane:
        r, timed_out = plane.wait_rollout(
            endpoint, timeout_s=seconds(timeout, "--timeout"), poll_s=poll,
            on_change=None if json_out else moved,
        )  # fmt: skip
        idle = timed_out and _no_controller(plane)
    failure = None if timed_out else ended_badly(r)
    if json_out:
        print_json({**to_jsonable(r), "timed_out": timed_out})
    elif not timed_out and failure is None:  # a failure's sentence is its error line
        console.print(final(r), soft_wrap=True)
    if timed_out:
        goes_on = (
            f"{NO_CONTROLLER[0].upper()}{NO_CONTROLLER[1:]}, then wait again."
            if idle
            else "The rollout goes on: wait again with a longer --timeout, or follow it "
            f"with `modelyard rollout status {endpoint}`."
        )
        raise RolloutTimedOut(
            f"timed out after {timeout}: {summary(r)}",
            hint=goes_on,
            endpoint=endpoint,
        )
    if failure is not None:
        raise failure


@rollout_app.command("compare")
def compare(
    endpoint: str = typer.Argument(..., help="The endpoint's name."),
    since: str | None = typer.Option(
        None,
        help="Only records newer than this (1h, or a date). Default: every record kept, "
        "earlier traffic plans' included.",
    ),
    shadow: bool = typer.Option(
        False,
        "--shadow",
        help="Compare the shadow version with production on the same requests: a per-prompt "
        "diff table, a judge's win rate and a verdict.",
    ),
    judge: str | None = typer.Option(
        None, "--judge", help="With --shadow: the judge that scores both answers of each pair."
    ),
    min_pairs: int | None = typer.Option(
        None, "--min-pairs", help="With --shadow: judged pairs needed for a verdict (20)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=0, help="With --shadow: pairs in the table (20)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="With --shadow: write every pair (.jsonl, .csv or .parquet)."
    ),
    json_out: bool = JSON,
) -> None:
    """A/B analysis: per-version requests, error rate, latency and feedback with 95%
    intervals, and whether each differs significantly from the control. With --shadow:
    each shadow answer beside the production answer to the same request."""
    from modelyard.delivery import compare_versions

    start = EPOCH if since is None else parse_since(since)
    if shadow:
        from modelyard.cli._shadow import compare_shadow_command

        compare_shadow_command(
            endpoint, start, judge=judge, min_pairs=20 if min_pairs is None else min_pairs,
            limit=20 if limit is None else limit, out=out, json_out=json_out,
        )  # fmt: skip
        return
    options = (("--judge", judge), ("--out", out), ("--min-pairs", min_pairs), ("--limit", limit))
    given = [o for o, v in options if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --shadow", field=given[0])
    with open_store() as store:
        report = compare_versions(store, endpoint, start)
    if json_out:
        print_json(report.as_json())
        return

    def ci(x: tuple[float, float] | None, scale: float = 1.0, digits: int = 1) -> str:
        return "" if x is None else f" [{x[0] * scale:.{digits}f}, {x[1] * scale:.{digits}f}]"

    table = Table("version", "requests", "error rate %", "p50 ms", "p95 ms", "feedback",
                  title=f"{endpoint}: control {report.control or '-'}")  # fmt: skip
    for v in report.versions:
        table.add_row(
            v.version, str(v.requests),
            ("-" if v.error_rate is None else f"{v.error_rate * 100:.2f}")
            + ci(v.error_rate_ci, 100, 2),
            num(v.p50_latency_ms) + ci(v.p50_latency_ci),
            num(v.p95_latency_ms) + ci(v.p95_latency_ci),
            ("-" if v.feedback_score is None else f"{v.feedback_score:.3f} (n={v.feedback_count})")
            + ci(v.feedback_ci, 1, 3),
        )  # fmt: skip
    console.print(table)
    if not any(v.requests for v in report.versions):
        err_console.print(
            f"note: no inference records of {endpoint}"
            + ("" if since is None else f" since {since}")
            + ": nothing to compare yet (the servers write them as the endpoint answers)",
            highlight=False,
            soft_wrap=True,
        )
    for c in report.comparisons:
        console.print(f"{c.version} vs {c.control}: {c.verdict}")


@servers_app.command("list")
def servers_list(
    all_: bool = typer.Option(False, "--all", help="Include servers whose heartbeat stopped."),
    stale_after: float = typer.Option(
        15.0, min=0.1, max=MAX_STALE_S, help="Seconds without a heartbeat: gone."
    ),
    json_out: bool = JSON,
) -> None:
    """Servers, what they hold and what failed to load there."""
    with open_store() as store:
        servers = store.list_servers(stale_after_s=stale_after, alive=None if all_ else True)
    if json_out:
        print_json(servers)
        return
    table = Table("server", "address", "engine", "last heartbeat", "state", "loaded", "failures")
    for s in servers:
        state = "gone" if not s.alive else "draining" if s.draining else (
            "ready" if s.ready else "starting")  # fmt: skip
        table.add_row(
            s.id, s.address or "-", s.engine, s.heartbeat_at.strftime("%H:%M:%S"), state,
            ", ".join(s.loaded) or "-",
            "; ".join(f"{k}: {v}" for k, v in s.failures.items()) or "-",
        )  # fmt: skip
    console.print(table)


def controller(
    interval: float = typer.Option(1.0, min=0.05, max=3600.0, help="Seconds between ticks."),
    lease_ttl: float = typer.Option(
        10.0, min=0.5, max=3600.0, help="Seconds the leadership lease lasts without renewal."
    ),
    once: bool = typer.Option(False, "--once", help="Run one tick and exit."),
) -> None:
    """Run the rollout controller alone (one leader per store, by a lease; `serve` runs one
    too unless started with --no-controller). Every 15 s the leader also runs the
    monitoring tick (profiles, retention, drift and alert rules). Stops on SIGTERM or Ctrl-C."""
    from modelyard.delivery import LEASE, Controller

    check_alert_rules()  # its monitoring tick evaluates them: a broken file stops it here
    with open_store() as store:
        from modelyard.monitoring import tick as monitoring_tick

        ctl = Controller(store, lease_ttl_s=lease_ttl, extra_ticks=[monitoring_tick])
        if once:
            changed = ctl.tick()
            held = store.lease_holder(LEASE)
            # the monitoring run and the rollback alerts' webhooks, off the tick's thread,
            # end before the lease is given back
            ctl.close(60.0)
            for r in changed:
                console.print(summary(r))
            if held is not None and held[0] != ctl.holder:  # it did nothing: say why
                err_console.print(
                    f"another controller ({held[0]}) holds the lease until "
                    f"{held[1]:%H:%M:%S} UTC and moves the rollouts; this tick did nothing"
                )
            else:  # its one tick is done: the next controller (or --once) need not wait
                store.release_lease(LEASE, ctl.holder)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        err_console.print(f"controller {ctl.holder} on {store.url}, every {interval:g}s")
        try:
            ctl.run(stop, interval)
        except KeyboardInterrupt:
            stop.set()
    err_console.print("controller stopped")
