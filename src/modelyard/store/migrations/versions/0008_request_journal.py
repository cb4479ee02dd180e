"""inference records carry the server that answers them; a request is recorded when it starts

A request is written as ``running`` when admitted (``RecordWriter.started``)
and updated when it ends; ``server_id`` names the server running it, so that
the rows of a server that died (kill -9, a crash) can be closed as failed. The
partial index holds only the running rows, so it costs nothing for the rest.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("server_id", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_inference_records_running",
        "inference_records",
        ["server_id"],
        unique=False,
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )


def downgrade() -> None:
    op.drop_index("ix_inference_records_running", table_name="inference_records")
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.drop_column("server_id")
