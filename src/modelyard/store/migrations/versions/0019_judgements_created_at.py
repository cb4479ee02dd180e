"""judgements are found by when they were made

What the judges made of a window's records (``Store.list_profiles``, read at each
scrape for today's ``modelyard_judge_score``) is bounded by the judgements' own
``created_at``: a judgement is made after its record. Without an index on it, every
judgement ever stored was read each time (about 1 s per scrape at a million).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 12:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_judgements_created_at", "judgements", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_judgements_created_at", table_name="judgements")
