"""Operator commands: init, tenants, keys, registry, endpoints (on the store here, or, for
those the admin API has routes for, through a server: ``open_plane``)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.access import parse_duration, parse_scopes
from modelyard.cli import _delivery
from modelyard.cli._common import (
    console,
    open_artifacts,
    open_store,
    print_json,
    settings,
    to_jsonable,
)
from modelyard.cli._control import ControlPlane, needs_database
from modelyard.cli._plane import open_plane
from modelyard.cli._registry import GATE_KEYS, gate_json, gate_lines
from modelyard.errors import ArtifactError, ConfigError, TenantNotFound
from modelyard.store import (
    DEFAULT_STORAGE_POLICY,
    STORAGE_POLICIES,
    RolloutPolicy,
    StoragePolicy,
    head_revision,
    redact_url,
)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def init(json_out: bool = JSON) -> None:
    """Create the home directory, the artifact store, the store schema and the audit key.

    Safe to run again: it only applies migrations that are missing. The audit key
    file (0600) is created when no key is configured; the acting OS user is
    recorded as the first admin when no admin exists yet.
    """
    s = settings()
    home = s.ensure_home()
    artifacts = open_artifacts(s)
    try:
        artifacts.ensure()  # the directory; on S3 also the cache, and the bucket answers
    except ArtifactError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from exc
    with open_store(s, migrate=False) as store:
        before, after = store.migrate()
        key_created = store.ensure_audit_key()
        first_admin = store.bootstrap_admin()
        result = {
            "home": str(home),
            "store": redact_url(s.resolved_store_url),
            "artifacts": artifacts.location,
            "schema_before": before,
            "schema": after,
            "audit_key": store.audit_key_source.description,
            "audit_key_created": key_created,
            "admin_recorded": first_admin,
        }
    if json_out:
        print_json(result)
        return
    state = "up to date" if before == after else f"migrated {before or 'empty'} → {after}"
    if after != head_revision():  # a newer release migrated it: nothing was changed
        state = f"at {after}, newer than this release's {head_revision()}: upgrade modelyard"
    console.print(f"[green]modelyard is ready[/] (schema {state})")
    for key in ("home", "store", "artifacts", "audit_key"):
        console.print(f"  {key.replace('_', ' '):<10} {result[key]}")
    if key_created:
        console.print("  created the audit key (mode 0600): back it up, it verifies the chain")
    if first_admin:
        console.print(f"  recorded {first_admin!r} as the first admin")


# -- tenants -------------------------------------------------------------------------------

tenants_app = typer.Typer(help="Tenants: isolated customers or business units.")


@tenants_app.command("create")
def tenants_create(
    name: str = typer.Argument(..., help="Tenant name (lowercase, digits, '.', '_', '-')."),
    storage_policy: str = typer.Option(
        DEFAULT_STORAGE_POLICY,
        help=f"What inference records keep of prompts and responses: "
        f"{', '.join(STORAGE_POLICIES)} (redacted: personal data masked).",
    ),
    json_out: bool = JSON,
) -> None:
    """Create a tenant."""
    if storage_policy not in STORAGE_POLICIES:
        raise ConfigError(
            f"invalid --storage-policy {storage_policy!r}: use one of {', '.join(STORAGE_POLICIES)}"
        )
    policy: StoragePolicy = storage_policy  # checked just above
    with open_plane() as plane:
        tenant = plane.create_tenant(name, policy)
    if json_out:
        print_json(tenant)
    else:
        console.print(f"[green]created tenant[/] {tenant.name} (storage policy {policy})")


@tenants_app.command("list")
def tenants_list(json_out: bool = JSON) -> None:
    """List tenants."""
    with open_plane() as plane:
        tenants = plane.list_tenants()
    if json_out:
        print_json(tenants)
        return
    table = Table("tenant", "storage policy", "created")
    for t in tenants:
        table.add_row(t.name, t.storage_policy, f"{t.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


# -- keys ----------------------------------------------------------------------------------

keys_app = typer.Typer(help="API keys of tenants (shown once, stored as hashes).")
MAX_RATE_LIMIT = 10**9  # requests or tokens per minute: the admin API's bound too


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key acts for."),
    scopes: str = typer.Option("infer,feedback", help="Comma-separated: infer, feedback."),
    expires: str | None = typer.Option(None, help="Lifetime such as 90d, 12h (default: none)."),
    rpm: int | None = typer.Option(
        None,
        "--rpm",
        min=1,
        max=MAX_RATE_LIMIT,
        help="Requests per minute (default: the server's --default-rpm).",
    ),
    tpm: int | None = typer.Option(
        None,
        "--tpm",
        min=1,
        max=MAX_RATE_LIMIT,
        help="Tokens per minute, prompt + max_tokens (default: the server's --default-tpm).",
    ),
    json_out: bool = typer.Option(
        False, "--json", help='Print {"id", "key", "tenant", "scopes"} as JSON.'
    ),
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    wanted = parse_scopes(scopes)
    if expires:
        parse_duration(expires, field="--expires")  # bad input fails before anything is opened
    with open_plane() as plane:
        made = plane.create_api_key(
            tenant, scopes=wanted, expires=expires, rpm_limit=rpm, tpm_limit=tpm
        )
    key = made.key
    if json_out:
        print_json({"id": key.id, "key": made.secret, "tenant": key.tenant, "scopes": key.scopes})
        return
    console.print(f"[green]created key[/] {key.id} for tenant {key.tenant}; store it now:")
    print(made.secret)


@keys_app.command("list")
def keys_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    json_out: bool = JSON,
) -> None:
    """List keys (never their secrets)."""
    with open_plane() as plane:
        keys = plane.list_api_keys(tenant)  # KeyInfo: no hash
        if tenant is not None and not keys and tenant not in {t.name for t in plane.list_tenants()}:
            raise TenantNotFound(f"no tenant named {tenant!r}")  # not an empty list: a typo
    if json_out:
        print_json(keys)
        return
    table = Table(
        "id", "tenant", "scopes", "rpm/tpm", "created", "expires", "revoked", "rotated to"
    )
    for k in keys:
        table.add_row(
            k.id,
            k.tenant,
            ",".join(k.scopes),
            f"{k.rpm_limit or 'default'}/{k.tpm_limit or 'default'}",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "-",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-",
            k.rotated_to or "-",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (see `keys list`).")) -> None:
    """Revoke a key; servers refuse it within their key-cache time (seconds). A key revoked
    before is left as it is (and nothing is audited): the command says when it was."""
    with open_plane() as plane:
        key, already = plane.revoke_api_key(key_id)
    who = f"{escape(key.id)} of tenant {escape(key.tenant)}"
    if already and key.revoked_at is not None:
        console.print(
            f"key {who} was already revoked on {key.revoked_at:%Y-%m-%d %H:%M} UTC; "
            "nothing changed",
            highlight=False,
        )
        return
    console.print(f"[green]revoked key[/] {who}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str = typer.Argument(..., help="The key id to replace (see `keys list`)."),
    grace: str = typer.Option(
        "24h", help="How long the old key keeps working, such as 24h, 7d, or 0 (at once)."
    ),
    expires: str | None = typer.Option(
        None, help="Lifetime of the new key, such as 90d (default: the old key's lifetime)."
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help='Print {"id", "key", "tenant", "scopes", "rotated_from", "old_expires_at"} as JSON.',
    ),
) -> None:
    """Replace a key by a new one (same tenant, scopes and limits), printed once.

    The old key keeps working for the grace period, then expires.
    """
    parse_duration(grace, field="--grace", allow_zero=True)  # before anything is opened or sent
    if expires:
        parse_duration(expires, field="--expires")
    with open_plane() as plane:
        made = plane.rotate_api_key(key_id, grace=grace, expires=expires)
    key, secret, old_expiry = made.key, made.secret, made.old_expires_at
    if json_out:
        print_json(
            {
                "id": key.id,
                "key": secret,
                "tenant": key.tenant,
                "scopes": key.scopes,
                "rotated_from": key_id,
                "old_expires_at": old_expiry,
            }
        )
        return
    until = f"{old_expiry:%Y-%m-%d %H:%M:%S} UTC" if old_expiry else "-"
    console.print(
        f"[green]rotated key[/] {key_id} → {key.id} for tenant {key.tenant}; "
        f"the old key works until {until}. Store the new key now:"
    )
    print(secret)


@keys_app.command("limits")
def keys_limits(
    key_id: str = typer.Argument(..., help="The key id (see `keys list`)."),
    rpm: str | None = typer.Option(
        None, "--rpm", help="Requests per minute, or 'default' for the server's --default-rpm."
    ),
    tpm: str | None = typer.Option(
        None, "--tpm", help="Tokens per minute, or 'default' for the server's --default-tpm."
    ),
    json_out: bool = JSON,
) -> None:
    """Change a key's rate limits; servers apply them within their key-cache time."""
    if rpm is None and tpm is None:
        raise ConfigError("nothing to change: give --rpm and/or --tpm (a number or 'default')")
    limits = {
        name: _limit(option, text)
        for name, option, text in (("rpm_limit", "--rpm", rpm), ("tpm_limit", "--tpm", tpm))
        if text is not None
    }  # only what was given changes
    with open_plane() as plane:
        key = plane.set_api_key_limits(key_id, limits)
    if json_out:
        print_json(key)
        return
    console.print(
        f"[green]key {key.id}[/]: {key.rpm_limit or 'default'} requests/min, "
        f"{key.tpm_limit or 'default'} tokens/min"
    )


def _limit(option: str, text: str) -> int | None:
    if text == "default":
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_RATE_LIMIT:
        raise ConfigError(f"invalid {option} {text!r}: use 1 to 1,000,000,000 or 'default'")
    return int(text)


# -- registry ------------------------------------------------------------------------------

registry_app = typer.Typer(help="Registered models and their versions.")


@registry_app.command("list")
def registry_list(
    name: str | None = typer.Argument(
        None, help="A registered model: list its versions (kind, status, gates, aliases)."
    ),
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's models."),
    json_out: bool = JSON,
) -> None:
    """List registered models with their latest version, its gates and the aliases; or,
    given NAME, that model's versions with whether their gates passed."""
    if name is not None:
        _registry_versions(name, json_out)
        return
    with open_plane() as plane:
        listed = plane.list_models(tenant)  # with the latest versions' gates, in one go
    if json_out:
        print_json(
            [{**to_jsonable(e.model), "latest_gates": e.latest_gates and e.latest_gates.state}
             for e in listed]
        )  # fmt: skip
        return
    table = Table("model", "tenant", "latest", "gates of latest", "aliases")
    for e in listed:
        m, gates = e.model, e.latest_gates.cell if e.latest_gates else "-"
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(m.aliases.items()))
        table.add_row(m.name, m.tenant or "-", str(m.latest_version or "-"), gates, aliases or "-")
    console.print(table)


def _registry_versions(name: str, json_out: bool) -> None:
    with open_plane() as plane:
        versions = plane.list_model_versions(name)
    if json_out:
        print_json([{**to_jsonable(v), "gate_status": gate_json(v)} for v in versions])
        return
    table = Table("version", "kind", "status", "gates", "aliases", "created")
    for v in versions:
        table.add_row(
            str(v.version), v.kind, v.status, v.gates.cell, ", ".join(v.aliases) or "-",
            f"{v.created_at:%Y-%m-%d}",
        )  # fmt: skip
    console.print(table)


@registry_app.command("show")
def registry_show(
    ref: str = typer.Argument(..., help="NAME@alias, NAME:VERSION or NAME (latest)."),
    json_out: bool = JSON,
) -> None:
    """Show one model version: lineage, metrics, and whether its gates passed (and any
    recorded override)."""
    with open_plane() as plane:
        version = plane.resolve_model_ref(ref)
    if json_out:
        print_json({**to_jsonable(version), "gate_status": gate_json(version)})
        return
    console.print(f"[bold]{version.ref}[/] ({version.kind}, {version.status})")
    console.print(f"  aliases    {', '.join(version.aliases) or '-'}")
    console.print(f"  base model {version.base_model} ({version.base_model_source})")
    console.print(f"  artifact   sha256:{version.artifact_digest}")
    console.print(f"  run        {version.run_id or '-'}")
    if version.tags:
        console.print(
            f"  tags       {', '.join(f'{k}={v}' for k, v in sorted(version.tags.items()))}"
        )
    for line in gate_lines(version):
        console.print(line)
    for name, value in sorted(version.metrics.items()):
        if name not in GATE_KEYS:
            console.print(f"  metric     {name} = {value}")


@registry_app.command("alias")
def registry_alias(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Argument(..., help="Alias such as champion or challenger."),
    version: int = typer.Argument(..., help="Version number the alias should point to."),
    override_gates: bool = _delivery.OVERRIDE_GATES,
    reason: str | None = _delivery.OVERRIDE_REASON,
) -> None:
    """Set or move an alias. A protected alias (champion; MODELYARD_PROTECTED_ALIASES)
    takes only a version whose gates passed, unless --override-gates --reason "why".
    Endpoints that follow the alias move through a rollout (`endpoints policy`)."""
    override = _delivery.gate_override(override_gates, reason)
    with open_plane() as plane:
        v = plane.set_alias(name, alias, version, override_gates=override)
        following = [e for e in plane.list_endpoints() if e.model_ref == f"{name}@{alias}"]
        moving = {
            e.name: plane.latest_rollout(e.name) for e in following if _rolling(plane, e.name)
        }
    console.print(f"[green]{name}@{alias}[/] → {v.ref}")
    if override and v.gates.overrides and v.gates.overrides[-1].get("reason") == override:
        console.print(f"  [yellow]gates overridden[/] ({v.gates.state}): {override}")
    for endpoint, r in moving.items():
        if r.target == v.version:
            steps = ",".join(map(str, r.steps))
            console.print(f"  endpoint {endpoint} follows through a rollout (steps {steps}%)")
            console.print(f"    watch it: modelyard rollout status {endpoint}")


def _rolling(plane: ControlPlane, endpoint: str) -> bool:
    return bool(plane.list_rollouts(endpoint=endpoint, active=True, limit=1))


# -- endpoints -----------------------------------------------------------------------------

endpoints_app = typer.Typer(help="Endpoints: the names clients send as `model`.")


@endpoints_app.command("create")
def endpoints_create(
    name: str = typer.Argument(..., help="Endpoint name, as clients will send it."),
    model: str = typer.Option(..., "--model", help="NAME@alias or NAME:VERSION."),
    tenant: str | None = typer.Option(
        None, "--tenant", help="Owning tenant: only its keys call it (or --shared)."
    ),
    shared: bool = typer.Option(
        False,
        "--shared",
        help="Callable by every tenant (not with --tenant, nor a tenant's own model).",
    ),
    json_out: bool = JSON,
) -> None:
    """Create an endpoint sending all its traffic to the version MODEL resolves to."""
    if tenant is None and not shared:
        raise ConfigError("an endpoint needs --tenant, or --shared to serve every tenant")
    if tenant is not None and shared:  # else listed as the tenant's, yet open to every tenant
        raise ConfigError(
            "--tenant and --shared exclude each other",
            hint="Give --tenant T for one tenant's endpoint, or --shared for every tenant's.",
            field="shared",
        )
    with open_store() as store:
        endpoint = store.create_endpoint(name, model_ref=model, tenant=tenant, shared=shared)
    if json_out:
        print_json(endpoint)
    else:
        console.print(f"[green]created endpoint[/] {name} → {model}")


@endpoints_app.command("list")
def endpoints_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's endpoints."),
    json_out: bool = JSON,
) -> None:
    """List endpoints and their traffic plans."""
    with open_plane() as plane:
        endpoints = plane.list_endpoints(tenant)
    if json_out:
        print_json(endpoints)
        return
    table = Table("endpoint", "tenant", "model", "traffic")
    for e in endpoints:
        plan = ", ".join(f"{e.model}:{r.version}={r.weight}" for r in e.routes)
        table.add_row(e.name, e.tenant or "(shared)", e.model_ref, plan)
    console.print(table)


@endpoints_app.command("show")
def endpoints_show(
    name: str = typer.Argument(..., help="The endpoint's name."),
    window: str = typer.Option("1h", help="Count the requests of this last stretch of time."),
    json_out: bool = JSON,
) -> None:
    """Show one endpoint: its plan, shadow, rollout policy and live per-version requests."""
    from datetime import UTC, datetime

    from modelyard.access import parse_duration

    since = datetime.now(UTC) - parse_duration(window, field="--window")
    with open_store() as store:
        endpoint = store.get_endpoint(name)
        count = store.count_inference_records(endpoint=name)
        live = store.requests_by_version(name, since)
        active = store.list_rollouts(endpoint=name, active=True, limit=1)
    if json_out:
        print_json(
            {**vars(endpoint), "requests": count, "window": window, "requests_by_version": live,
             "rollout": active[0].id if active else None}
        )  # fmt: skip
        return
    plan = {f"{endpoint.model}:{r.version}": r.weight for r in endpoint.routes}
    moved = ""  # a pinned ref a rollout or set-traffic has moved away from
    if "@" not in endpoint.model_ref and plan != {endpoint.model_ref: 100}:
        now = ", ".join(f"{ref} {weight}%" for ref, weight in plan.items())
        moved = f"; created with it, its traffic now: {now}"
    console.print(
        f"[bold]{escape(endpoint.name)}[/] → {escape(endpoint.model_ref)} "
        f"({count} requests recorded{escape(moved)})"
    )
    table = Table("version", "weight %", f"live ({window})", "shadow", "fallback")
    shown = set()
    for r in endpoint.routes:
        ref = f"{endpoint.model}:{r.version}"
        shown.add(ref)
        c = live.get(ref, {})
        table.add_row(ref, str(r.weight), str(c.get("live", 0)), str(c.get("shadow", 0)),
                      str(c.get("fallback", 0)))  # fmt: skip
    for ref, c in sorted(live.items()):
        if ref not in shown:
            table.add_row(ref, "0", str(c["live"]), str(c["shadow"]), str(c["fallback"]))
    console.print(table)
    if endpoint.shadow_version is not None:
        console.print(
            f"  shadow: {endpoint.model}:{endpoint.shadow_version} gets a copy of "
            f"{endpoint.shadow_fraction:.0%} of requests (recorded, never returned)"
        )
    if endpoint.rollout_policy:
        console.print(
            f"  when {endpoint.model_ref} moves: rollout "
            f"{_delivery.policy_text(endpoint.rollout_policy)}"
        )
    elif endpoint.follows_alias:
        console.print(
            f"  when {endpoint.model_ref} moves: rollout "
            f"{_delivery.policy_text(RolloutPolicy())} (the defaults)"
        )
    if active:
        console.print(f"  rollout in progress: {active[0].id} (`modelyard rollout status {name}`)")


@endpoints_app.command("set-traffic")
def endpoints_set_traffic(
    name: str = typer.Argument(..., help="Endpoint name."),
    weights: list[str] = typer.Argument(
        None, help="VERSION=WEIGHT pairs summing to 100; leave out to change only the shadow."
    ),
    shadow: int | None = typer.Option(
        None, "--shadow", help="Mirror requests to this version: answers recorded, never returned."
    ),
    shadow_fraction: float = typer.Option(
        0.1, "--shadow-fraction", help="Share of requests mirrored to --shadow (above 0, up to 1)."
    ),
    no_shadow: bool = typer.Option(False, "--no-shadow", help="Stop mirroring."),
) -> None:
    """Replace the traffic plan, e.g. `set-traffic support 3=90 4=10`, and/or its shadow,
    e.g. `set-traffic support --shadow 5 --shadow-fraction 0.2`."""
    plan: dict[int, int] = {}
    for item in weights or []:
        version, _, weight = item.partition("=")
        if not (version.isdigit() and weight.isdigit()):
            raise ConfigError(f"invalid traffic entry {item!r}: use VERSION=WEIGHT, e.g. 3=90")
        plan[int(version)] = int(weight)
    if not plan and shadow is None and not no_shadow:
        raise ConfigError(
            "nothing to change: give VERSION=WEIGHT pairs, --shadow VERSION or --no-shadow"
        )
    if shadow is not None and no_shadow:
        raise ConfigError("--shadow and --no-shadow contradict each other; give one")
    if shadow is not None or no_shadow:
        needs_database("a shadow (--shadow, --no-shadow)")
    with open_plane() as plane:
        endpoint = plane.get_endpoint(name)
        if plan:
            endpoint = plane.set_traffic(name, plan)
        if shadow is not None or no_shadow:
            endpoint = plane.set_shadow(name, shadow, shadow_fraction)
    plan_text = ", ".join(f"{endpoint.model}:{r.version}={r.weight}" for r in endpoint.routes)
    console.print(f"[green]{name}[/] traffic: {plan_text}")
    if endpoint.shadow_version is not None:
        console.print(
            f"  shadow: {endpoint.model}:{endpoint.shadow_version} "
            f"({endpoint.shadow_fraction:.0%} of requests)"
        )


@endpoints_app.command("policy")
def endpoints_policy(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Endpoint name (one that follows an alias)."),
    steps: str = _delivery.STEPS,
    bake: str = _delivery.BAKE,
    min_requests: int = _delivery.MIN_REQUESTS,
    guard: list[str] = _delivery.GUARDS,
    clear: bool = typer.Option(
        False, "--clear", help="Drop this endpoint's policy: alias moves use the defaults."
    ),
) -> None:
    """How a move of the alias this endpoint follows reaches it: through a rollout with
    these settings (--steps 100: one step, blue-green), or (--clear) the defaults."""
    from modelyard.delivery import check_policy

    given = [f"--{n.replace('_', '-')}" for n in ("steps", "bake", "min_requests", "guard")
             if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]  # fmt: skip
    if clear and given:  # the settings would be dropped without a word
        raise ConfigError(f"--clear drops the policy: not with {', '.join(given)}", field="--clear")
    bake_s = _delivery.seconds(bake, "--bake")
    policy = None if clear else check_policy(steps, bake_s, min_requests, guard)
    with open_store() as store:
        endpoint = store.set_rollout_policy(name, policy)
    console.print(
        f"[green]{name}[/]: a move of {endpoint.model_ref} starts a rollout "
        + ("with the defaults, " if policy is None else "")
        + _delivery.policy_text(policy or RolloutPolicy())
    )
