"""feedback carries a label: a person's correct answer or class for the request

``label``: optional, up to 500 characters; ``modelyard data from-records`` trains on
it instead of the model's answer (a human correction) and filters on it (``--label``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-14 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_column("label")
