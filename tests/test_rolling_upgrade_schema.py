"""Rolling upgrades: the previous release keeps working on the schema the new one migrates to.

During `helm upgrade` (and whenever replicas are replaced one at a time) the first new
process migrates the store while the old replicas still serve on it, for minutes. So a
migration may only add: tables, nullable columns or columns with a server default, and
indexes that are not unique. It may not drop or rename a table or a column, change a
column's type, make a column NOT NULL, add a NOT NULL column without a default, or add a
uniqueness or a foreign key to columns the old code already writes (docs/store.md,
"Writing a migration"). Each migration from ``CUTOFF`` on is applied to the schema before
it, and the two schemas are compared; ``EXCEPTIONS`` are the migrations that broke the
rule, with what that means for an upgrade across them (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from modelyard.store._engine import MIGRATIONS_DIR, _alembic_config

CUTOFF = "0010"
EXCEPTIONS = {
    "0018": "drops inference_records.seal and seal_pos and record_seals.anchor_seq: the "
    "record writer of a release at 0016 or 0017 names them, so its replicas fail to write "
    "records once 0018 is applied (0016 to 0018 were made on one day, 2026-12-05); stop "
    "them before upgrading from such a release",
}


@dataclass(frozen=True)
class Table:
    columns: dict[str, tuple[str, bool, bool]]  # name: (type, nullable, has a server default)
    unique: frozenset[tuple[str, ...]]
    foreign: frozenset[tuple[tuple[str, ...], str]]


def _schema(engine: sa.Engine) -> dict[str, Table]:
    inspector = sa.inspect(engine)
    tables = {}
    for name in inspector.get_table_names():
        if name == "alembic_version":
            continue
        columns = {
            c["name"]: (str(c["type"]), bool(c["nullable"]), c.get("default") is not None)
            for c in inspector.get_columns(name)
        }
        unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
        unique |= {
            tuple(str(c) for c in i["column_names"])
            for i in inspector.get_indexes(name)
            if i["unique"]
        }
        foreign = {
            (tuple(fk["constrained_columns"]), fk["referred_table"])
            for fk in inspector.get_foreign_keys(name)
        }
        tables[name] = Table(columns, frozenset(unique), frozenset(foreign))
    return tables


def breaking_changes(before: dict[str, Table], after: dict[str, Table]) -> list[str]:
    """What code written for ``before`` may trip over in ``after``."""
    found = [f"table {t} dropped (or renamed)" for t in sorted(before.keys() - after.keys())]
    for name in sorted(before.keys() & after.keys()):
        old, new = before[name], after[name]
        for column, (type_, nullable, _) in old.columns.items():
            if column not in new.columns:
                found.append(f"column {name}.{column} dropped (or renamed)")
                continue
            new_type, new_nullable, _ = new.columns[column]
            if new_type != type_:
                found.append(f"column {name}.{column} changed type: {type_} -> {new_type}")
            if nullable and not new_nullable:
                found.append(f"column {name}.{column} made NOT NULL")
        for column in sorted(new.columns.keys() - old.columns.keys()):
            _, nullable, has_default = new.columns[column]
            if not nullable and not has_default:
                found.append(f"column {name}.{column} added NOT NULL without a server default")
        for columns in sorted(new.unique - old.unique):
            if set(columns) <= old.columns.keys():
                found.append(f"uniqueness added on {name}{columns}")
        for columns, referred in sorted(new.foreign - old.foreign):
            if set(columns) <= old.columns.keys():
                found.append(f"foreign key added on {name}{columns} -> {referred}")
    return found


def _since_cutoff() -> list[tuple[str, str]]:
    """(down revision, revision) of each migration from ``CUTOFF`` to head, in order."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    chain = list(script.walk_revisions("base", "heads"))[::-1]  # oldest first
    revisions = [r.revision for r in chain]
    return [(str(r.down_revision), r.revision) for r in chain[revisions.index(CUTOFF) :]]


def test_migrations_since_the_cutoff_only_add(store_url: str) -> None:
    steps = _since_cutoff()
    engine = create_engine(store_url)
    cfg = _alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, steps[0][0])
        before = _schema(engine)
        breaking = {}
        for _, revision in steps:
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            after = _schema(engine)
            found = breaking_changes(before, after)
            if found:
                breaking[revision] = found
            before = after
    finally:
        engine.dispose()
    unexplained = {r: found for r, found in breaking.items() if r not in EXCEPTIONS}
    assert not unexplained, (
        "a migration the previous release cannot run beside (see docs/store.md, 'Writing a "
        f"migration'): {unexplained}"
    )
    assert set(breaking) == set(EXCEPTIONS), "an exception that no longer applies"
    assert breaking["0018"] == [
        "column inference_records.seal dropped (or renamed)",
        "column inference_records.seal_pos dropped (or renamed)",
        "column record_seals.anchor_seq dropped (or renamed)",
    ]


def test_the_check_finds_what_breaks_the_previous_release() -> None:
    """Each kind of change the rule forbids is found; what it allows is not."""
    text = ("TEXT", True, False)
    before = {
        "t": Table({"a": text, "b": text, "c": text}, frozenset(), frozenset()),
        "gone": Table({"a": text}, frozenset(), frozenset()),
    }
    after = {
        "t": Table(
            {
                "a": ("INTEGER", True, False),
                "b": ("TEXT", False, False),
                "new_required": ("TEXT", False, False),
                "new_defaulted": ("TEXT", False, True),
                "new_nullable": text,
            },
            frozenset({("a",), ("new_nullable",)}),
            frozenset({(("b",), "other"), (("new_nullable",), "other")}),
        ),
        "other": Table({"a": text}, frozenset(), frozenset()),
    }
    assert breaking_changes(before, after) == [
        "table gone dropped (or renamed)",
        "column t.a changed type: TEXT -> INTEGER",
        "column t.b made NOT NULL",
        "column t.c dropped (or renamed)",
        "column t.new_required added NOT NULL without a server default",
        "uniqueness added on t('a',)",
        "foreign key added on t('b',) -> other",
    ]
