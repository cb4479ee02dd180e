"""judges and their judgements

``judges``: named definitions of models that score answers (a rubric or a custom
prompt, an OpenAI-compatible target, the environment variable holding its key,
prices), with a revision raised on each change. ``judgements``: one row per
scored input (the cache by input hash, the record judged, the score, the judge's
answer, tokens, cost and latency).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "judges",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("rubric", sa.String(length=32), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("api_key_env", sa.String(length=200), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("input_per_1k", sa.Float(), nullable=False),
        sa.Column("output_per_1k", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_judges")),
    )
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("judge", sa.String(length=100), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["judge"],
            ["judges.name"],
            name=op.f("fk_judgements_judge_judges"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgements")),
    )
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.create_index("ix_judgements_judge_hash", ["judge", "input_hash"], unique=False)
        batch_op.create_index("ix_judgements_record", ["record_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_index("ix_judgements_record")
        batch_op.drop_index("ix_judgements_judge_hash")
    op.drop_table("judgements")
    op.drop_table("judges")
