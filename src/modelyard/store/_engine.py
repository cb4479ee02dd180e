"""Engine creation, error translation and migrations.

This module is the border where SQLAlchemy and Alembic errors become
``StoreError``s; nothing above it sees a driver exception.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.exc import OperationalError as SAOperationalError

from modelyard.errors import (
    ConfigError,
    Conflict,
    StoreError,
    StoreMigrationError,
    StoreUnavailable,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy's default is psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (servers, CLI) run beside one writer; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), or ConfigError naming the problem."""
    try:
        normalized = _normalize_url(url)
        parsed = make_url(normalized)
    except ArgumentError as exc:
        raise ConfigError(
            f"MODELYARD_STORE_URL is not a database URL: {url!r}",
            hint="Use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB.",
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported store database {backend!r} in {redact_url(url)}",
            hint="modelyard supports SQLite and PostgreSQL.",
        )
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            parent = Path(db).parent
            if not parent.is_dir():
                raise StoreUnavailable(
                    f"cannot open the SQLite store {db}: directory {parent} does not exist",
                    hint="Create the directory or run `modelyard init`.",
                )
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 5})
    try:
        engine = create_engine(normalized, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"no database driver for {redact_url(url)}: {exc}") from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


# What a row of each table is, for "... exists already" (a uniqueness conflict).
_THINGS = {
    "base_models": "a base model with this name",
    "datasets": "a dataset version with this name and number (or content)",
    "runs": "a run with this id",
    "tenants": "a tenant with this name",
    "api_keys": "an API key with this id",
    "registered_models": "a registered model with this name",
    "model_versions": "a version with this number of this model",
    "model_aliases": "this alias",
    "endpoints": "an endpoint with this name",
    "traffic_routes": "a route to this version",
    "inference_records": "an inference record with this id",
    "rollouts": "a rollout with this id",
    "leases": "this lease",
    "actors": "this actor",
    "audit_events": "an audit event with this sequence number",
    "feedback": "feedback on this request",
    "record_features": "features of this record",
}
_TABLE_RE = re.compile(r'(?:UNIQUE constraint failed: |relation |table )"?(\w+)')


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _conflict(exc: IntegrityError, what: str) -> Conflict:
    """A clear Conflict for an integrity error: which thing exists (or is missing)."""
    state = _sqlstate(exc)
    orig = getattr(exc, "orig", None)
    diag = getattr(orig, "diag", None)
    table = getattr(diag, "table_name", None)
    if table is None:
        found = _TABLE_RE.search(_first_line(exc))
        table = found.group(1) if found else None
    text = _first_line(exc).lower()
    if state == "23505" or "unique" in text or "duplicate key" in text:
        thing = _THINGS.get(table or "", "a row with the same key")
        return Conflict(
            f"cannot {what}: {thing} exists already (another change made it first)",
            hint="Look at what exists now and run the command again if it is still needed.",
        )
    if state == "23503" or "foreign key" in text:
        return Conflict(
            f"cannot {what}: it refers to something that was removed, or something still "
            "refers to what it removes",
            hint="Look at what exists now and run the command again if it is still needed.",
        )
    return Conflict(f"cannot {what}: the store refused the change ({_first_line(exc)})")


@contextlib.contextmanager
def translate_errors(engine: Engine, what: str) -> Iterator[None]:
    """Turn SQLAlchemy errors raised while doing ``what`` into modelyard errors."""
    try:
        yield
    except IntegrityError as exc:
        raise _conflict(exc, what) from exc
    except SAOperationalError as exc:
        if _sqlstate(exc).startswith("40"):  # serialization failure, deadlock: nothing changed
            raise Conflict(
                f"cannot {what}: a concurrent change collided with it and it was rolled back",
                hint="Run the command again.",
            ) from exc
        raise StoreUnavailable(
            f"cannot use the store at {redact_url(str(engine.url))} while trying to {what}: "
            f"{_first_line(exc)}"
        ) from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"store error while trying to {what}: {_first_line(exc)}") from exc


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


@functools.cache
def _revisions() -> tuple[str | None, frozenset[str]]:
    """This release's head revision and all its revisions, read from the migration files
    once per process (they are the package's; parsing them took about 25 ms a store open)."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


def head_revision() -> str:
    head = _revisions()[0]
    if head is None:  # pragma: no cover - the package always ships migrations
        raise StoreMigrationError("the package ships no store migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    with translate_errors(engine, "read the schema version"), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _migration_lock(engine: Engine) -> contextlib.AbstractContextManager[object]:
    """Processes that open one new SQLite store at once (torchrun's ranks, parallel CLI
    commands) migrate it one at a time: the others wait, then find it migrated. Without
    it, the second waits on SQLite's write lock only ``busy_timeout`` long, less than a
    whole migration takes on a busy machine. On PostgreSQL the migration's transaction
    takes an advisory lock instead (``_migrate``)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(database + ".migrate.lock", timeout=600)


# The first migration of the add-only rule that still holds for a release older than the
# store (0018 dropped columns that releases at 0016 and 0017 write): a release at this
# revision or later runs on a store a newer release migrated (docs/operations.md).
OLDEST_ON_NEWER = "0018"


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply pending migrations; return (revision before, revision after). Idempotent.

    A store at a revision this release does not know was migrated by a newer release
    (a `helm rollback`, an older CLI against the shared store): it is used as it is, with
    a warning, since migrations only add (``OLDEST_ON_NEWER``); nothing is migrated."""
    before = current_revision(engine)
    head = head_revision()
    if before == head:
        return before, head
    if before is not None and not _known(before):
        _check_newer(before, head)
        log.warning(
            "the store's schema is at %s, newer than this release's %s: a newer modelyard "
            "migrated it; this release runs on it as it is (migrations since %s only add), "
            "without what the newer schema adds. Upgrade modelyard to use it.",
            before, head, OLDEST_ON_NEWER,
        )  # fmt: skip
        return before, before
    with _migration_lock(engine):
        before = current_revision(engine)  # another process may have migrated it meanwhile
        if before == head:
            return before, head
        before = _migrate(engine, head)
    if before is not None and not _known(before):  # a newer release migrated it meanwhile
        return before, before
    return before, head


def _check_newer(revision: str, head: str) -> None:
    """Refuse a revision this release does not know that no newer modelyard wrote either
    (another application's alembic_version in the same database, a hand-edited one):
    running on it "as it is" would fail later, on tables that are not there."""
    if not (revision.isdigit() and len(revision) == len(head) and revision > head):
        raise StoreMigrationError(
            f"the store's schema is at revision {revision!r}, not one of modelyard's (this "
            f"release knows 0001 to {head}, and a newer release's would follow {head}): "
            "nothing was changed",
            hint="Check the store URL: it may name another application's database. A "
            "modelyard store's alembic_version holds a 4-digit revision.",
        )


def _known(revision: str) -> bool:
    """Whether ``revision`` is one of this release's migrations."""
    return revision in _revisions()[1]


# pg_advisory_xact_lock key held by the transaction that migrates ("mymigrat"): replicas
# started together (a `helm upgrade` starts a new serve and controller pod at once) wait
# for the first, then find the schema at head; without it, each ran the same DDL and all
# but one failed (`relation ... already exists`, `column ... does not exist`).
MIGRATION_LOCK_ID = 0x6D79_6D69_6772_6174


def _migrate(engine: Engine, head: str) -> str | None:
    """Migrate to ``head`` in one transaction; the revision it started from."""
    cfg = _alembic_config(engine)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with translate_errors(engine, "migrate the store"), engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(conn, on=False)
        try:
            with conn.begin():
                if not sqlite:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                    )
                before = MigrationContext.configure(conn).get_current_revision()
                newer = before is not None and not _known(before)  # a newer release, meanwhile
                if before != head and not newer:  # else another process migrated it meanwhile
                    cfg.attributes["connection"] = conn
                    _run_upgrade(cfg, before)
                    if sqlite:
                        _check_foreign_keys(conn)
                return before
        finally:
            if sqlite:
                _sqlite_foreign_keys(conn, on=True)


def _run_upgrade(cfg: Config, before: str | None) -> None:
    """``alembic upgrade head``; a failure names the migration that failed."""
    applied: list[str] = []

    def done(*, step: Any, **_: Any) -> None:
        applied.append(step.up_revision_id)

    cfg.attributes["on_version_apply"] = done
    try:
        command.upgrade(cfg, "head")
    except Exception as exc:
        script = ScriptDirectory.from_config(cfg)
        pending = [r.revision for r in script.iterate_revisions("heads", before or "base")]
        failed = next((r for r in reversed(pending) if r not in applied), "?")
        raise StoreMigrationError(
            f"store migration {failed} failed: {_first_line(exc)}; the store is unchanged, "
            f"at revision {before or '(empty)'} (the upgrade is one transaction)",
            hint="Remove the cause and start again: the release you upgraded from still "
            "runs on this store meanwhile.",
        ) from exc


def _sqlite_foreign_keys(conn: Connection, *, on: bool) -> None:
    """Foreign keys off while SQLite migrates, on again afterwards (outside a transaction,
    where SQLite ignores the pragma). A migration that alters a table on SQLite rebuilds it
    (a copy, ``DROP TABLE``, a rename); with foreign keys on, the ``DROP TABLE`` deleted
    the rows of every table referring to it with ``ON DELETE CASCADE`` (0006 emptied
    ``traffic_routes``, ``feedback`` and ``record_features``) or failed on the others
    (0004, on any store with a version that an alias, a route or a record names), as
    SQLite's documentation warns."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def _check_foreign_keys(conn: Connection) -> None:
    """Before the migration commits: every reference still points at a row (the check the
    pragma turned off), else the whole migration is rolled back."""
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        table, rowid, parent = broken[0][0], broken[0][1], broken[0][2]
        raise StoreMigrationError(
            f"store migration failed: it would leave references to rows that are not there: "
            f"{len(broken)} (the first: row {rowid} of {table}, to {parent}); nothing was "
            "changed",
            hint="List them with `sqlite3 STORE 'PRAGMA foreign_key_check'`; back up the store, "
            "remove or repair those rows, and start again.",
        )
