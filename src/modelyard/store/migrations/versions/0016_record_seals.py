"""inference records are sealed: Merkle roots of batches, anchored in the audit chain (issue 19)

``inference_records.seal`` and ``seal_pos``: the seal holding a record in its final
state and its leaf's position there (empty for records written before this migration
and for ``running`` ones). ``record_seals``: one row per seal, its index (the ids,
tenants and times of its records, in leaf order), its leaf hashes and ``anchor_seq``,
the ``records.anchored`` audit event that lists the seal's root and index hash (empty
until the writer anchors it, a few seconds later). Never deleted, as the chain's
events are not: retention removes records, not seals.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seal", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("seal_pos", sa.Integer(), nullable=True))
    op.create_table(
        "record_seals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("anchor_seq", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ids", sa.JSON(), nullable=False),
        sa.Column("tenants", sa.JSON(), nullable=False),
        sa.Column("times", sa.JSON(), nullable=False),
        sa.Column("leaves", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_seals")),
    )


def downgrade() -> None:
    op.drop_table("record_seals")
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.drop_column("seal_pos")
        batch_op.drop_column("seal")
