"""tenants' files (the OpenAI Files API)

``files``: one row per file a tenant uploaded or a batch wrote: whose it is (the
tenant, the key), its name, purpose, size and the digest of its bytes in the
artifact store.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 00:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.String(length=64), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_files_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index("ix_files_digest", "files", ["digest"], unique=False)
    op.create_index("ix_files_tenant_created", "files", ["tenant_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_files_tenant_created", table_name="files")
    op.drop_index("ix_files_digest", table_name="files")
    op.drop_table("files")
