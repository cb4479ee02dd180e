"""the audit chain's head is kept in a one-row table, updated with every append

An emptied or shortened ``audit_events`` table then no longer matches the
recorded head: ``audit verify`` reports the removed events and appending is
refused, instead of a new chain starting from seq 1. The row starts at the
newest existing event (seq 0 and 64 zeros for an empty chain).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 03:00:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_GENESIS = "0" * 64


def upgrade() -> None:
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    conn = op.get_bind()
    last = conn.execute(
        sa.text("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
    ).first()
    seq, digest = (0, _GENESIS) if last is None else (int(last[0]), str(last[1]))
    now = datetime.now(UTC)
    op.bulk_insert(head, [{"id": 1, "seq": seq, "hash": digest, "updated_at": now}])


def downgrade() -> None:
    op.drop_table("audit_head")
