"""a batch's model: ``batches.model``

OpenAI's Batch object names the model that processes the batch (``model``). A batch
keeps the one model its input's lines name once its input is checked; it stays NULL for
a batch not checked yet, one whose lines name several models, and the batches checked
before this revision.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("model")
