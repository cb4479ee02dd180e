"""What every command shares: consoles, the store and artifacts from settings, JSON output."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

from rich.console import Console

from modelyard.artifacts import ArtifactStore, artifacts_from_settings
from modelyard.audit import AccessPolicy, AuditKeySource
from modelyard.cli import _progress
from modelyard.cli._home import check_home, refuse_remote
from modelyard.cli._progress import ProgressFn as ProgressFn
from modelyard.errors import ConfigError, DataError, NotFound
from modelyard.settings import Settings, load_settings
from modelyard.store import Store

# Tables stay readable when piped or captured (Rich would assume 80 columns), unless
# COLUMNS says how wide the reader's screen is.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


_actor: dict[str, str | None] = {"name": None}


def settings() -> Settings:
    return load_settings()


def set_actor(name: str | None) -> None:
    """The actor named by the global ``--actor`` option (wins over MODELYARD_ACTOR)."""
    _actor["name"] = name or None


@contextmanager
def bad_input() -> Iterator[None]:
    """A file or model the user named that cannot be used is bad input: exit 2, like a bad flag."""
    try:
        yield
    except (DataError, NotFound) as exc:
        raise ConfigError(exc.message, hint=exc.hint, **exc.context) from exc


def chosen_actor() -> str | None:
    """The name ``--actor`` gave, if any."""
    return _actor["name"]


def acting_as(s: Settings) -> str:
    """The actor of this command: ``--actor``, else MODELYARD_ACTOR, else the OS user."""
    return _actor["name"] or s.resolved_actor


def open_store(s: Settings | None = None, *, migrate: bool = True) -> Store:
    """The configured store, migrated, acting as ``--actor`` / MODELYARD_ACTOR / the OS user.

    The default SQLite file needs a writable home; a command that only reads
    never creates it (``check_home``). While MODELYARD_URL is set it refuses
    (``refuse_remote``): the commands that work through a server use ``open_plane``.
    """
    refuse_remote()
    s = s or settings()
    check_home(s)
    if s.store_url is None:
        s.ensure_home()
    return Store.open(
        s.resolved_store_url,
        migrate=migrate,
        actor=acting_as(s),
        audit_key=AuditKeySource.from_settings(s),
        policy=AccessPolicy.from_settings(s),
    )


def check_alert_rules(s: Settings | None = None) -> None:
    """Load ``<home>/alerts.yml`` if there is one: a file the monitoring tick of ``serve`` or
    ``controller`` could not evaluate is refused at start (a ConfigError naming the field),
    not logged every 15 s while no alert is evaluated."""
    from modelyard.monitoring import default_rules_path, rules_from

    home = (s or settings()).home
    try:
        rules_from(None, home)
    except ConfigError as exc:
        raise ConfigError(
            f"the alert rules {default_rules_path(home)} cannot be evaluated: {exc.one_line()}",
            hint="Fix the file (`modelyard monitor tick` checks it), or move it away to "
            "run without alert rules.",
        ) from None


def open_artifacts(s: Settings | None = None) -> ArtifactStore:
    """The configured artifact store: a directory, or S3 read through a local cache."""
    refuse_remote()
    s = s or settings()
    if s.artifacts_in_home:
        check_home(s)
        s.ensure_home()
    return artifacts_from_settings(s)


def to_jsonable(value: Any) -> Any:
    """Entities (frozen dataclasses) and their fields as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """JSON on stdout, plain (no Rich markup), for scripts and pipelines."""
    print(json.dumps(to_jsonable(value), indent=2, sort_keys=True))


@contextmanager
def progress_bar(description: str, total: int, *, unit: str = "steps") -> Iterator[ProgressFn]:
    """Progress of long work on stderr: a live bar on a terminal, lines in a log."""
    with _progress.progress_bar(err_console, description, total, unit=unit) as update:
        yield update


class RichReporter:
    """Lines and progress bars for long library work (the ``Reporter`` protocol)."""

    def info(self, message: str) -> None:
        err_console.print(f"[cyan]•[/] {message}")

    def bar(self, description: str, total: int, unit: str) -> AbstractContextManager[ProgressFn]:
        return progress_bar(description, total, unit=unit)


def out_file(out: Path, option: str = "--out") -> Path:
    """``out`` resolved, once it is somewhere a file can be written: not a directory, in a
    directory that exists. A ``ConfigError`` naming ``option`` otherwise (exit 2), before
    anything is read or written."""
    target = out.resolve()
    if target.is_dir():
        raise ConfigError(
            f"{option} {out} is a directory", hint=f"Give a file name for {option}.", field=option
        )
    if not target.parent.is_dir():
        above = next((p for p in target.parents if p.exists()), None)
        if above is not None and not above.is_dir():  # e.g. --out notes.txt/x.jsonl
            raise ConfigError(
                f"cannot write {out}: {above} is a file, not a directory",
                hint=f"Choose another {option}.",
                field=option,
            )
        raise ConfigError(
            f"cannot write {out}: directory {target.parent} does not exist",
            hint=f"Create it or choose another {option}.",
            field=option,
        )
    return target
