"""sealed records carry nothing of their seal; seal index rows are never updated (issue 19)

``inference_records.seal`` and ``seal_pos`` (0016) are dropped: the seals' index rows
(``record_seals.ids``) already say which seal holds which record at which position,
and the two values on every row cost the record writer more than the rest of sealing
(verification maps ids to seals from the index rows; a proof finds its record's seal
by its id there). ``record_seals.anchor_seq`` is dropped: marking each anchored seal's
index row was an UPDATE that rewrote the whole row (its ids, times and leaf hashes),
as costly as writing it; a proof finds its seal's ``records.anchored`` event among the
anchors written after the seal, the way verification always found it.

On SQLite (3.35 or later) the columns are dropped in place (``ALTER TABLE ... DROP
COLUMN``), which rewrites each record once.

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
    op.drop_column("inference_records", "seal_pos")
    op.drop_column("inference_records", "seal")
    op.drop_column("record_seals", "anchor_seq")


def downgrade() -> None:
    """The columns back, filled from the index rows and the anchors (0017 reads them)."""
    op.add_column("record_seals", sa.Column("anchor_seq", sa.Integer(), nullable=True))
    op.add_column("inference_records", sa.Column("seal", sa.String(length=32), nullable=True))
    op.add_column("inference_records", sa.Column("seal_pos", sa.Integer(), nullable=True))
    events = sa.table(
        "audit_events", sa.column("seq", sa.Integer), sa.column("action", sa.String),
        sa.column("payload", sa.JSON),
    )  # fmt: skip
    seals = sa.table(
        "record_seals", sa.column("id", sa.String), sa.column("anchor_seq", sa.Integer),
        sa.column("created_at", sa.DateTime), sa.column("ids", sa.JSON),
    )  # fmt: skip
    records = sa.table(
        "inference_records", sa.column("id", sa.String), sa.column("seal", sa.String),
        sa.column("seal_pos", sa.Integer),
    )  # fmt: skip
    bind = op.get_bind()
    anchors = sa.select(events.c.seq, events.c.payload).where(events.c.action == "records.anchored")
    for seq, payload in bind.execute(anchors.order_by(events.c.seq)).all():
        ids = list((payload or {}).get("seals") or ())
        for start in range(0, len(ids), 500):
            marked = seals.c.id.in_(ids[start : start + 500])
            unmarked = seals.c.anchor_seq.is_(None)
            bind.execute(sa.update(seals).where(marked, unmarked).values(anchor_seq=seq))
    oldest_first = sa.select(seals.c.id, seals.c.ids).order_by(seals.c.created_at, seals.c.id)
    for seal, ids in bind.execute(oldest_first).all():  # a later seal overwrites an earlier
        rows = [{"rid": rid, "s": seal, "p": pos} for pos, rid in enumerate(ids or ())]
        if rows:
            bind.execute(
                sa.update(records)
                .where(records.c.id == sa.bindparam("rid"))
                .values(seal=sa.bindparam("s"), seal_pos=sa.bindparam("p")),
                rows,
            )
