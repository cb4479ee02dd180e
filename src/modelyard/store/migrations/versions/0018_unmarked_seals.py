"""seal index rows are no longer marked with their anchor (issue 19)

``record_seals.anchor_seq`` is dropped. Marking each anchored seal's index row was an
UPDATE that rewrote the whole row (its ids, times and leaf hashes), which cost the
record writer about as much as writing the row; an inclusion proof now finds its
seal's ``records.anchored`` event among the anchors written after the seal, the way
verification always found it (by the seals an anchor lists).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("record_seals", schema=None) as batch_op:
        batch_op.drop_column("anchor_seq")


def downgrade() -> None:
    """The column back, each seal marked with the anchor listing it (0017's proofs read it)."""
    with op.batch_alter_table("record_seals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("anchor_seq", sa.Integer(), nullable=True))
    events = sa.table(
        "audit_events", sa.column("seq", sa.Integer), sa.column("action", sa.String),
        sa.column("payload", sa.JSON),
    )  # fmt: skip
    seals = sa.table("record_seals", sa.column("id", sa.String), sa.column("anchor_seq"))
    bind = op.get_bind()
    query = sa.select(events.c.seq, events.c.payload).where(events.c.action == "records.anchored")
    for seq, payload in bind.execute(query.order_by(events.c.seq)).all():
        ids = list((payload or {}).get("seals") or ())
        for start in range(0, len(ids), 500):
            marked = seals.c.id.in_(ids[start : start + 500])
            unmarked = seals.c.anchor_seq.is_(None)
            bind.execute(sa.update(seals).where(marked, unmarked).values(anchor_seq=seq))
