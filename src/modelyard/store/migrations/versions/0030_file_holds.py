"""an upload's bytes are held, and a discard of them claimed, outside the write transaction

``file_uploads``: one row per upload whose bytes are being stored (the file's id to
be, its tenant, the digest and size of its bytes, until when it holds them): it counts
in its tenant's files, and no discard deletes bytes an upload holds. ``file_discards``:
one row per digest whose bytes are being deleted, so an upload of the same bytes waits
for the delete to end before storing them. Both are written in short transactions
around the artifact store's calls, which used to run inside one (an S3 ``HEAD`` under
SQLite's write lock). Only tables are added: a release before this one keeps working
on it.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-07 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_file_uploads_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_uploads")),
    )
    op.create_index("ix_file_uploads_digest", "file_uploads", ["digest"], unique=False)
    op.create_index("ix_file_uploads_tenant_id", "file_uploads", ["tenant_id"], unique=False)
    op.create_index("ix_file_uploads_until", "file_uploads", ["until"], unique=False)
    op.create_table(
        "file_discards",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_file_discards")),
    )


def downgrade() -> None:
    op.drop_table("file_discards")
    op.drop_index("ix_file_uploads_until", table_name="file_uploads")
    op.drop_index("ix_file_uploads_tenant_id", table_name="file_uploads")
    op.drop_index("ix_file_uploads_digest", table_name="file_uploads")
    op.drop_table("file_uploads")
