"""Which commands may create a store, and the clear error when none is found.

Like git, modelyard finds its home from MODELYARD_HOME, else by walking up from
the current directory to the nearest ``.modelyard`` (``modelyard.settings.locate_home``).
Only ``init`` and ``quickstart`` create a store where none was found; a command
that writes may also create one in a home MODELYARD_HOME names explicitly; a
command that only reads never creates one: it exits 2 saying where it looked.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.cli._remote import URL_ENV, remote_url
from modelyard.errors import ConfigError, HomeNotFound
from modelyard.settings import HOME_DIR_NAME, HomeLocation, Settings, locate_home

STORE_FILE = "store.db"

# Commands that create a home and store wherever the home resolves to.
CREATES = frozenset({"init", "quickstart"})

# Commands that only read the store: they never create one.
READ_ONLY = frozenset(
    {
        "info",
        "doctor",
        "base list",
        "evaluate",
        "tenants list",
        "keys list",
        "registry list",
        "registry show",
        "registry lineage",
        "registry card",
        "registry export",
        "endpoints list",
        "endpoints show",
        "rollout status",
        "rollout wait",
        "rollout compare",
        "servers list",
        "audit log",
        "audit verify",
        "audit head",
        "audit export",
        "actors list",
        "monitor records",
        "monitor export",
        "monitor profiles",
        "monitor alerts",
        "monitor metrics",
        "monitor report",
        "monitor retention list",
        "monitor price list",
    }
)


_running: dict[str, str | None] = {"command": None}


def set_current_command(path: str | None) -> None:
    """Record the command being run (the root group does, as it resolves the command)."""
    _running["command"] = path


def current_command() -> str | None:
    """The running command without the program name, e.g. ``registry list``; None outside one."""
    return _running["command"]


def store_file(s: Settings) -> Path:
    return (s.home / STORE_FILE).absolute()


def store_exists(s: Settings) -> bool:
    """Whether the configured store is there: always for MODELYARD_STORE_URL (a server)."""
    return s.store_url is not None or store_file(s).is_file()


# What goes through a server (``open_plane``), for the refusal's hint.
THROUGH_SERVER = (
    "registry list|show|lineage|card|alias|unalias|archive|tag, endpoints list|set-traffic, "
    "rollout start|status|promote|abort|pause|resume|wait, audit log|verify, "
    "tenants list|create, keys list|create|revoke|rotate|limits, budgets list, "
    "monitor profiles|drift|alerts"
)


def refuse_remote() -> None:
    """A command the admin API has no route for works on the database here; with
    MODELYARD_URL set, the user works through a server: say so rather than open (or create)
    a database here, or say none was found here."""
    if remote_url() is None:
        return
    command = current_command()
    what = f"`modelyard {command}`" if command else "this command"
    raise ConfigError(
        f"{what} works on the database only (the admin API has no route for it), "
        f"and {URL_ENV} is set",
        hint=f"Unset {URL_ENV} to run it here with the database's settings (MODELYARD_HOME "
        f"or MODELYARD_STORE_URL). Through the server: {THROUGH_SERVER}.",
    )


def check_home(s: Settings, command: str | None = None) -> None:
    """Raise HomeNotFound unless the store exists or this command may create it (and
    refuse while MODELYARD_URL is set: ``refuse_remote``)."""
    refuse_remote()
    if store_exists(s):
        return
    command = current_command() if command is None else command
    if command in CREATES:
        return
    location = locate_home()
    if location.origin != "default" and command not in READ_ONLY:
        return
    raise not_found(location, s)


def not_found(location: HomeLocation, s: Settings) -> HomeNotFound:
    """The error that says where the store was looked for, and how to create one."""
    home = s.home.absolute()
    if location.origin == "default":
        return HomeNotFound(
            "no modelyard store found: MODELYARD_HOME is not set and there is no "
            f"{HOME_DIR_NAME} directory in {location.searched_range()}"
        )
    how = "set by MODELYARD_HOME" if location.origin == "env" else location.describe()
    return HomeNotFound(
        f"no modelyard store in {home} ({how}): {store_file(s)} does not exist",
        hint="Create it with `modelyard init`, or point MODELYARD_HOME at another home.",
    )


__all__ = [
    "CREATES",
    "READ_ONLY",
    "check_home",
    "current_command",
    "refuse_remote",
    "store_exists",
]
