"""``modelyard tokens``: personal access tokens of actors, for the admin API."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.access import create_actor_token, parse_duration, parse_token_scopes
from modelyard.cli._common import console, open_store, print_json
from modelyard.errors import ConfigError
from modelyard.store import ActorToken, check_token_name

app = typer.Typer(help="Personal access tokens for the admin API (shown once, stored as hashes).")


def _shown(text: str) -> str:
    """``text`` for the terminal: a control character (a terminal escape sequence, say) as
    its escape code, and Rich markup as typed."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return escape(safe)


def _public(token: ActorToken) -> dict[str, Any]:
    return {k: v for k, v in vars(token).items() if k != "token_hash"}


@app.command("create")
def tokens_create(
    for_actor: str | None = typer.Option(
        None, "--for", help="The actor the token acts as (default: you; another needs admin)."
    ),
    scopes: str = typer.Option("read,write", help="Comma-separated: read, write."),
    expires: str | None = typer.Option(None, help="Lifetime such as 90d, 12h (default 90d)."),
    no_expiry: bool = typer.Option(False, "--no-expiry", help="A token that never expires."),
    name: str = typer.Option("", help="What the token is for (shown by `tokens list`)."),
    json_out: bool = typer.Option(
        False, "--json", help='Print {"id", "token", "actor", "scopes", "expires_at"} as JSON.'
    ),
) -> None:
    """Create a token. It is printed once; only its hash is stored."""
    wanted = parse_token_scopes(scopes)
    check_token_name(name, field="--name")  # the store's rule, checked before it opens
    if no_expiry and expires is not None:
        raise ConfigError(
            "--expires and --no-expiry contradict each other: give one of them",
            field="--expires",
        )
    # a lifetime past the year 9999 is refused there, naming --expires
    lifetime = None if no_expiry else parse_duration(expires or "90d", field="--expires")
    with open_store() as store:
        token, secret = create_actor_token(
            store, for_actor or store.actor, scopes=wanted, expires_in=lifetime, name=name
        )
    if json_out:
        print_json(
            {"id": token.id, "token": secret, "actor": token.actor, "scopes": token.scopes,
             "expires_at": token.expires_at}
        )  # fmt: skip
        return
    until = f"{token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never"
    console.print(
        f"[green]created token[/] {escape(token.id)} for actor {escape(token.actor)} "
        f"(scopes {','.join(token.scopes)}, expires {until}); store it now:"
    )
    print(secret)


@app.command("list")
def tokens_list(
    for_actor: str | None = typer.Option(
        None, "--for", help="This actor's tokens (default: yours)."
    ),
    all_: bool = typer.Option(False, "--all", help="Every actor's tokens."),
    json_out: bool = typer.Option(False, "--json", help="Print the tokens as JSON."),
) -> None:
    """List tokens (never their secrets)."""
    if all_ and for_actor is not None:
        raise ConfigError("--for and --all contradict each other: give one of them", field="--all")
    with open_store() as store:
        tokens = store.list_actor_tokens(None if all_ else for_actor or store.actor)
    if json_out:
        print_json([_public(t) for t in tokens])
        return
    table = Table("id", "actor", "name", "scopes", "created", "by", "expires", "revoked")
    for t in tokens:  # names are anyone's text: shown as typed, never read as markup
        table.add_row(
            escape(t.id),
            escape(t.actor),
            _shown(t.name) or "-",
            ",".join(t.scopes),
            f"{t.created_at:%Y-%m-%d %H:%M}",
            escape(t.created_by),
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
        )
    console.print(table)


@app.command("revoke")
def tokens_revoke(
    token_id: str = typer.Argument(..., help="The token id (see `tokens list`)."),
) -> None:
    """Revoke a token: the next request with it is refused (401)."""
    with open_store() as store:
        token, revoked = store.revoke_actor_token_once(token_id)
    who = f"{escape(token.id)} of actor {escape(token.actor)}"
    if not revoked and token.revoked_at is not None:  # a no-op (or another one won): say so
        console.print(
            f"token {who} was already revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC; "
            "nothing changed",
            highlight=False,
        )
        return
    console.print(f"[green]revoked token[/] {who}")
