"""personal access tokens of actors (the admin API)

``actor_tokens``: one row per token, with the SHA-256 of its secret (never the
secret), its scopes, who created it, its expiry and its revocation.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "actor_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actor_tokens")),
    )
    with op.batch_alter_table("actor_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_actor_tokens_actor"), ["actor"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("actor_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_actor_tokens_actor"))
    op.drop_table("actor_tokens")
