"""files expire: ``files.expires_at``, a batch's ``output_expires_s``; a batch's usage

OpenAI's Files API lets an upload say when it expires (``expires_after``: an hour to
30 days after it was made; files for batches expire after 30 days unless told), and a
batch say when its output and error files do (``output_expires_after``). Files kept
before this revision have no time (NULL): they stay until deleted, as before. A batch
that ends keeps its records' input and output tokens (OpenAI's ``usage``); those ended
before have none.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_files_expires_at", ["expires_at"], unique=False)
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output_expires_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("input_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("output_tokens", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("output_tokens")
        batch_op.drop_column("input_tokens")
        batch_op.drop_column("output_expires_s")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_expires_at")
        batch_op.drop_column("expires_at")
