"""breaks of the audit chain the store found, kept until an admin acknowledges them

A row is written when ``audit verify``, or the check before an audited write,
finds the chain broken; while one has no ``acknowledged_seq`` every audited change
is refused. ``modelyard audit acknowledge`` appends the acknowledgment event and
sets its seq on the rows it closes, which stay as the history of breaks.

Numbered 0011 as it was planned, it applies after 0012 (committed first): the
chain of revisions, not the numbers, sets the order.

Revision ID: 0011
Revises: 0012
Create Date: 2026-12-12 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_breaks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("found_by", sa.String(length=200), nullable=False),
        sa.Column("found_in", sa.String(length=16), nullable=False),
        sa.Column("acknowledged_seq", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_breaks")),
    )
    with op.batch_alter_table("audit_breaks", schema=None) as batch_op:
        batch_op.create_index("ix_audit_breaks_acknowledged_seq", ["acknowledged_seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_breaks", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_breaks_acknowledged_seq")
    op.drop_table("audit_breaks")
