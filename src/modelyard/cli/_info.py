"""``modelyard info``: which home and store this directory uses, and how it was found."""

from __future__ import annotations

from typing import Any

import typer

from modelyard import __version__
from modelyard.audit import AuditKeySource
from modelyard.cli._common import acting_as, console, open_store, print_json, settings
from modelyard.cli._home import check_home, store_exists
from modelyard.settings import locate_home
from modelyard.store import redact_url


def info(json_out: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Say which home and store commands use here, how the home was found, and the schema.

    Exits 2 (saying where it looked) when there is no store, as every command that
    reads does.
    """
    s = settings()
    location = locate_home()
    found = store_exists(s)
    result: dict[str, Any] = {
        "version": __version__,
        "home": str(s.home.absolute()),
        "home_origin": location.origin,
        "home_found_by": location.describe(),
        "store": redact_url(s.resolved_store_url),
        "store_exists": found,
        "artifacts": s.artifacts_location,
        "artifacts_kind": "s3" if s.artifacts_on_s3 else "local",
        "artifacts_cache": str(s.artifacts_cache_dir) if s.artifacts_on_s3 else None,
        "audit_key": AuditKeySource.from_settings(s).description,
        "actor": acting_as(s),
        "schema": None,
    }
    if found:
        with open_store(s, migrate=False) as store:
            result["schema"] = store.schema_revision()
    if json_out:
        print_json(result)
    else:
        console.print(f"modelyard {__version__}")
        console.print(f"  home       {result['home']} ({result['home_found_by']})")
        console.print(f"  store      {result['store']}", highlight=False)
        console.print(f"  artifacts  {result['artifacts']}", highlight=False)
        if s.artifacts_on_s3:
            console.print(f"  cache      {result['artifacts_cache']}")
        console.print(f"  audit key  {result['audit_key']}")
        console.print(f"  actor      {result['actor']}")
        if found:
            console.print(f"  schema     {result['schema']}")
    if not found:
        check_home(s, "info")  # HomeNotFound, saying where it looked
